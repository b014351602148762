"""One flusher process: ``Flusher.run`` draining the buffer, measuring its own CPU.

Protocol with the parent: builds the app's flusher (``--concurrency`` requests in
flight to start from, adapting as the settings' defaults do; ``--fixed`` keeps exactly
that many) and warms it up (Redis scripts and connection,
every request thread's keep-alive connection: small batches flushed from a side
buffer, which the parent then discounts), prints
``{"ready": ...}``, waits for a line on stdin, drains until the buffer is empty and
prints ``{"wall", "cpu", "sent", ...}``. With ``--duty`` the run is on duty, as the
``flush_buffer`` task's are (it waits for records, lingers while a batch fills), and
ends at a second line on stdin; with ``--drain`` it runs again while records wait for
their retry (a server that refuses some requests), until none is left. CPU is
``getrusage(RUSAGE_SELF)``, so only this process is counted: not Redis, not the sandbox.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from concurrent.futures import Future

from celery import Celery

from benchmarks.common import PREFIX, WORKSPACE_KEY, WORKSPACE_SECRET, process_cpu
from suprsend_celery.buffer.redis_buffer import RedisBuffer
from suprsend_celery.events.model import Event
from suprsend_celery.pipeline.concurrency import FixedConcurrency
from suprsend_celery.pipeline.duty import DutyPlan
from suprsend_celery.pipeline.runtime import get_client, get_flusher


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, help="suprsend_flush_concurrency")
    parser.add_argument("--fixed", action="store_true", help="adaptive concurrency off")
    parser.add_argument("--drain", action="store_true", help="run until retries are sent too")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--duty", action="store_true", help="on duty until told to stop")
    args = parser.parse_args()

    app = Celery("bench-flusher", set_as_current=False)
    app.conf.update(
        broker_url=args.redis_url,
        suprsend_workspace_key=WORKSPACE_KEY,
        suprsend_workspace_secret=WORKSPACE_SECRET,
        suprsend_base_url=args.base_url,
        suprsend_redis_url=args.redis_url,
        suprsend_key_prefix=PREFIX,
        suprsend_flush_batch_size=args.batch_size,
        suprsend_buffer_shards=args.shards,
    )
    if args.concurrency:
        app.conf.suprsend_flush_concurrency = args.concurrency
    if args.fixed:
        app.conf.suprsend_flush_concurrency_adaptive = False
    flusher = get_flusher(app)
    client = get_client(app)
    # Warm up as a worker that has flushed before would be: scripts loaded, every
    # request thread started with its keep-alive connection open, code paths run. The
    # measured flusher itself drains small batches from a side buffer (the parent then
    # resets the sandbox), so the measured run starts warm.
    side = RedisBuffer(flusher.buffer.redis, prefix=f"{PREFIX}-warm-{os.getpid()}")
    side.push(
        [
            client.accept(Event("warm-up", "bench_warm_up", idempotency_key=f"warm-{i}")).payload
            for i in range(max(300, 20 * flusher.limiter.ceiling))
        ]
    )
    measured, batch_size = flusher.buffer, flusher.batch_size
    measured_limiter = flusher.limiter
    flusher.buffer, flusher.batch_size = side, 10
    # Every request thread warmed, but the measured (shared) limit left where it starts.
    flusher.limiter = FixedConcurrency(measured_limiter.ceiling)
    flusher.run(60)
    flusher.buffer, flusher.batch_size = measured, batch_size
    flusher.limiter = measured_limiter
    side.clear()
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)

    sys.stdin.readline()
    plan = None
    if args.duty:
        stop: Future[None] = Future()
        plan = DutyPlan(3600, stopped=stop)
        threading.Thread(
            target=lambda: (sys.stdin.readline(), stop.set_result(None)), daemon=True
        ).start()
    start, cpu0 = time.time(), process_cpu()
    report = flusher.run(time_budget=3600, duty=plan)
    runs = [report]
    while args.drain and report.remaining:
        time.sleep(0.02)  # retries not due yet
        report = flusher.run(time_budget=3600)
        runs.append(report)
    end, cpu1 = time.time(), process_cpu()
    result = {
        "start": start,
        "end": end,
        "wall": end - start,
        "cpu": cpu1 - cpu0,
        "sent": sum(r.sent for r in runs),
        "requests": sum(r.requests for r in runs),
        "retry_scheduled": sum(r.retry_scheduled for r in runs),
        "dead_lettered": sum(r.dead_lettered for r in runs),
        "limit": getattr(flusher.limiter, "limit", flusher.concurrency),
        "remaining": report.remaining,
        "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
