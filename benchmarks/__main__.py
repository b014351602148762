"""``python -m benchmarks``: every scenario, one table, ``BENCHMARKS.md``.

    python -m benchmarks                  # the full run (writes BENCHMARKS.md)
    python -m benchmarks --quick          # smaller numbers, prints only
    python -m benchmarks --only throughput --events 5000
    python -m benchmarks --only api-latency --delays 0,100
    python -m benchmarks --only accept-latency --trickle 200 --burst 2000
    python -m benchmarks --output /tmp/b.md

Starts its own Redis (``RedisServer``, no persistence), the sandbox in a separate
process and every worker it measures; stops them all on the way out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import (
    accept_latency,
    api_latency,
    latency,
    memory,
    report,
    saturation,
    throughput,
)
from benchmarks.common import REPO, SandboxProcess, log, stop_all
from suprsend_celery.dev.redis_server import RedisServer

SCENARIOS = (
    "latency",
    "throughput",
    "memory",
    "scaling",
    "api-latency",
    "accept-latency",
    "saturation",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure suprsend-celery against the official SDK and a naive task.",
    )
    parser.add_argument("--quick", action="store_true", help="small numbers (a smoke run)")
    parser.add_argument("--events", type=int, help="events per throughput run (default 20000)")
    parser.add_argument("--calls", type=int, help="calls per producer method (default 2000)")
    parser.add_argument("--naive-events", type=int, help="events for the naive task (default 3000)")
    parser.add_argument("--backlog", type=int, help="records of the memory run (default 1000000)")
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="run only these")
    parser.add_argument(
        "--delays",
        type=lambda text: tuple(float(ms) / 1000 for ms in text.split(",")),
        help="API latencies of the api-latency scenario, in ms (default 0,50,100,250)",
    )
    parser.add_argument("--trickle", type=int, help="events of the 20/s trickle (default 400)")
    parser.add_argument("--burst", type=int, help="events of the burst (default 5000)")
    parser.add_argument("--output", type=Path, help="where to write the report")
    parser.add_argument("--json", type=Path, help="also dump the raw results as JSON here")
    args = parser.parse_args(argv)
    quick = args.quick
    args.events = args.events or (3000 if quick else 20_000)
    args.calls = args.calls or (300 if quick else 2000)
    args.naive_events = args.naive_events or (500 if quick else 3000)
    args.backlog = args.backlog or (50_000 if quick else 1_000_000)
    args.trickle = args.trickle or (100 if quick else 400)
    args.burst = args.burst or (1000 if quick else 5000)
    if args.output is None and not quick and not args.only:
        args.output = REPO / "BENCHMARKS.md"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quick = args.quick
    selected = args.only or list(SCENARIOS)
    logdir = Path(tempfile.mkdtemp(prefix="suprsend-bench-"))
    log(f"logs in {logdir}")
    results: dict[str, Any] = {"started": time.time(), "args": vars(args).copy()}
    results["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    sandbox = None
    try:
        with RedisServer(appendonly=False) as server:
            sandbox = SandboxProcess(log=logdir / "sandbox.log")
            redis_url = server.url
            results["redis_binary"] = server.binary
            if "latency" in selected:
                log("scenario 1: producer latency")
                results["latency"] = latency.run(redis_url, sandbox, args.calls)
            if "throughput" in selected:
                n = args.events
                rows = []
                log(f"scenario 2: buffered flusher, {n} events")
                rows.append(throughput.flushers(redis_url, sandbox, n, 1, logdir))
                log(f"scenario 2: buffered flusher on duty, {n} events")
                rows.append(throughput.flushers(redis_url, sandbox, n, 1, logdir, duty=True))
                log(f"scenario 2: direct track_event, {n} events")
                rows.append(throughput.direct(redis_url, sandbox, n, logdir))
                log(f"scenario 2: SDK bulk_events, {n} events")
                rows.append(throughput.sdk_bulk(sandbox, n, logdir))
                log(f"scenario 2: naive task, {args.naive_events} events")
                rows.append(throughput.naive(redis_url, sandbox, args.naive_events, logdir))
                results["throughput"] = rows
            if "memory" in selected:
                log(f"scenario 3: memory, {args.backlog} records")
                results["memory"] = memory.run(redis_url, sandbox, args.backlog, logdir)
            if "api-latency" in selected:
                log("scenario 5: at API latency")
                results["api_latency"] = api_latency.run(
                    redis_url,
                    sandbox,
                    logdir,
                    delays=args.delays
                    or (api_latency.DELAYS[:3:2] if quick else api_latency.DELAYS),
                    scale=0.25 if quick else 1.0,
                )
            if "accept-latency" in selected:
                log(f"scenario 6: accept to delivered, {args.trickle} + {args.burst} events")
                results["accept_latency"] = accept_latency.run(
                    redis_url, sandbox, logdir, args.trickle, args.burst
                )
            if "saturation" in selected:
                log("scenario 7: an API at its limit")
                results["saturation"] = saturation.run(
                    redis_url, sandbox, logdir, scale=0.25 if quick else 1.0
                )
            if "scaling" in selected:
                n = args.events * 2
                rows = []
                for processes in (1, 2):
                    log(f"scenario 4: {processes} flusher process(es), {n} events")
                    rows.append(throughput.flushers(redis_url, sandbox, n, processes, logdir))
                results["scaling"] = rows
    finally:
        if sandbox is not None:
            sandbox.stop()
        stop_all()
    results["finished"] = time.time()
    text = report.table(results)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if args.output:
        report.write(args.output, results)
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
