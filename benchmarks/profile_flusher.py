"""Profile the flusher's hot path in this process: CPU per event, optionally cProfile.

    python -m benchmarks.profile_flusher --events 20000 --repeat 3
    python -m benchmarks.profile_flusher --cprofile      # top functions by own time

Buffers the events with ``buffer_events``, then times ``Flusher.run`` here (the
sandbox runs in its own process, Redis in its own), so ``getrusage`` is the flusher's
CPU alone: claim, ``post_bulk`` (signing, HTTP), settle.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import SandboxProcess, process_cpu, producer_app, run_id, stop_all
from benchmarks.throughput import clear_buffer, prefill_buffer
from suprsend_celery.dev.redis_server import RedisServer
from suprsend_celery.pipeline.runtime import get_flusher
from suprsend_celery.pipeline.settings import reset_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_flusher")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--cprofile", action="store_true", help="profile the last repeat")
    parser.add_argument(
        "--pure-python-parser",
        action="store_true",
        help="parse Redis replies without hiredis (for before/after comparisons)",
    )
    args = parser.parse_args(argv)
    logdir = Path(tempfile.mkdtemp(prefix="suprsend-profile-"))
    profile = cProfile.Profile()
    with RedisServer(appendonly=False) as server:
        sandbox = SandboxProcess(log=logdir / "sandbox.log")
        try:
            app = producer_app(server.url, sandbox.url, "unused")
            if args.concurrency:
                app.conf.suprsend_flush_concurrency = args.concurrency
            flusher = get_flusher(app)
            if args.pure_python_parser:
                from redis._parsers import _RESP2Parser

                pool = flusher.buffer.redis.connection_pool
                pool.connection_kwargs["parser_class"] = _RESP2Parser
                pool.disconnect()
            flusher.client.post_bulk([b"{}"])  # warm the connection
            for rep in range(args.repeat):
                clear_buffer(server.url)
                prefill_buffer(server.url, sandbox.url, args.events, run_id())
                last = args.cprofile and rep == args.repeat - 1
                cpu0, wall0 = process_cpu(), time.perf_counter()
                u0 = resource.getrusage(resource.RUSAGE_SELF)
                if last:
                    profile.enable()
                report = flusher.run(time_budget=3600)
                if last:
                    profile.disable()
                cpu, wall = process_cpu() - cpu0, time.perf_counter() - wall0
                u1 = resource.getrusage(resource.RUSAGE_SELF)
                print(
                    f"  user {(u1.ru_utime - u0.ru_utime) / args.events * 1e6:.2f} "
                    f"sys {(u1.ru_stime - u0.ru_stime) / args.events * 1e6:.2f} µs/event, "
                    f"context switches {u1.ru_nvcsw - u0.ru_nvcsw} voluntary, "
                    f"{u1.ru_nivcsw - u0.ru_nivcsw} not"
                )
                per_event = cpu / args.events * 1e6
                print(
                    f"run {rep + 1}: {report.sent} sent in {wall:.3f}s = "
                    f"{report.sent / wall:,.0f} events/s, CPU {per_event:.2f} µs/event, "
                    f"limit {getattr(flusher.limiter, 'limit', flusher.concurrency):.1f}"
                )
            reset_settings(app)
        finally:
            sandbox.stop()
            stop_all()
    if args.cprofile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
