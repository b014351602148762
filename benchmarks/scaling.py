"""Capacity plan: producer and flusher rates on one Redis, on a 3-master cluster with 1
and 3 shards, and the cost of ``suprsend_buffer_min_replicas`` behind Sentinel.

    python -m benchmarks.scaling [--events 20000] [--json]

Producers: one thread calling ``buffer_event`` back to back (``--producer-events``
calls after 300 warm-up calls); per-call latency (p50, p99) and calls per second.
Flushers: ``--events`` events buffered, then drained by 1 and by 3 flusher processes
(``benchmarks._flusher``: warm, ``Flusher.run`` until empty) into the sandbox in its
own process; events per second from the first claim to the last settle. Everything
runs on this machine, so the sandbox, Redis and the flushers share its cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery import Celery

from benchmarks.common import (
    PREFIX,
    PYTHON,
    WORKSPACE_KEY,
    WORKSPACE_SECRET,
    Child,
    SandboxProcess,
    children_stopped,
    event_args,
    log,
    percentile,
    run_id,
)
from benchmarks.topology import MASTER_NAME, LocalCluster, SentinelGroup
from suprsend_celery import Event, buffer_event, buffer_events
from suprsend_celery.dev.redis_server import RedisServer
from suprsend_celery.exceptions import ReplicationError
from suprsend_celery.pipeline.runtime import get_buffer
from suprsend_celery.pipeline.settings import reset_settings


@contextlib.contextmanager
def _app(url: str, sandbox_url: str, **conf: Any) -> Iterator[Celery]:
    app = Celery("bench-scaling", set_as_current=False)
    app.conf.update(
        broker_url="memory://",
        suprsend_workspace_key=WORKSPACE_KEY,
        suprsend_workspace_secret=WORKSPACE_SECRET,
        suprsend_base_url=sandbox_url,
        suprsend_redis_url=url,
        suprsend_key_prefix=PREFIX,
        **conf,
    )
    try:
        yield app
    finally:
        with contextlib.suppress(Exception):
            get_buffer(app).clear()
        reset_settings(app)
        app.close()


def redis_cpu(servers: list[RedisServer]) -> float:
    """CPU seconds the servers used so far (``INFO cpu``, main thread and children)."""
    total = 0.0
    for server in servers:
        client = server.client()
        try:
            info = client.info("cpu")
        finally:
            client.close()
        total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return total


def producer(
    name: str, url: str, sandbox_url: str, calls: int, servers: list[RedisServer], **conf: Any
) -> dict[str, Any]:
    """Latency and rate of ``buffer_event`` from one thread, and Redis's CPU per call."""
    tag = run_id()
    with _app(url, sandbox_url, **conf) as app:
        for i in range(300):
            d, n, p, k = event_args(i, tag + "w")
            buffer_event(d, n, p, idempotency_key=k, app=app)
        latencies, unconfirmed = [], 0
        cpu = redis_cpu(servers)
        start = time.perf_counter()
        for i in range(calls):
            d, n, p, k = event_args(i, tag)
            began = time.perf_counter()
            try:
                buffer_event(d, n, p, idempotency_key=k, app=app)
            except ReplicationError:
                unconfirmed += 1
            latencies.append(time.perf_counter() - began)
        wall = time.perf_counter() - start
        cpu = redis_cpu(servers) - cpu
    return {
        "name": name,
        "calls": calls,
        "per_s": calls / wall,
        "p50_us": percentile(latencies, 50) * 1e6,
        "p99_us": percentile(latencies, 99) * 1e6,
        "mean_us": statistics.fmean(latencies) * 1e6,
        "unconfirmed": unconfirmed,
        "redis_cpu_us_per_call": cpu / calls * 1e6,
    }


def flushers(
    name: str,
    url: str,
    sandbox: SandboxProcess,
    events: int,
    processes: int,
    shards: int,
    logdir: Path,
) -> dict[str, Any]:
    """Drain ``events`` buffered events with ``processes`` flusher processes."""
    tag = run_id()
    with _app(url, sandbox.url, suprsend_buffer_shards=shards) as app:
        for start in range(0, events, 100):
            batch = []
            for i in range(start, min(events, start + 100)):
                d, n, p, k = event_args(i, tag)
                batch.append(Event(d, n, p, idempotency_key=k))
            buffer_events(batch, app=app)
        argv = [PYTHON, "-m", "benchmarks._flusher", "--redis-url", url, "--base-url",
                sandbox.url, "--shards", str(shards)]  # fmt: skip
        children = [
            Child(argv, stdin=True, stdout=True, log=logdir / f"flusher-{tag}-{i}.log")
            for i in range(processes)
        ]
        with children_stopped(*children):
            for child in children:
                child.read_json(120)
            sandbox.reset()
            for child in children:
                child.send("go")
            reports = [child.read_json(600) for child in children]
    wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    return {
        "name": name,
        "events": events,
        "processes": processes,
        "shards": shards,
        "per_s": events / wall,
        "sent": sum(r["sent"] for r in reports),
        "processed": sandbox.stats()["events_processed"],
        "cpu_us_per_event": sum(r["cpu"] for r in reports) / events * 1e6,
    }


def run(events: int, producer_events: int) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {"producers": [], "flushers": []}
    logdir = Path(tempfile.mkdtemp(prefix="suprsend-scaling-"))
    sandbox = SandboxProcess(log=logdir / "sandbox.log", max_events=events + 1000)
    try:
        with RedisServer(appendonly=False) as single, LocalCluster(masters=3) as cluster:
            targets = [("one Redis", single.url, 1, [single]),
                       ("cluster, 1 shard", cluster.url, 1, cluster.nodes),
                       ("cluster, 3 shards", cluster.url, 3, cluster.nodes)]  # fmt: skip
            for label, url, shards, servers in targets:
                log(f"producer: {label}")
                results["producers"].append(
                    producer(
                        label,
                        url,
                        sandbox.url,
                        producer_events,
                        servers,
                        suprsend_buffer_shards=shards,
                    )
                )
                for processes in (1, 3):
                    log(f"flushers: {label}, {processes} process(es)")
                    results["flushers"].append(
                        flushers(label, url, sandbox, events, processes, shards, logdir)
                    )
        with SentinelGroup() as group:
            for replicas in (0, 1):
                label = f"Sentinel, min_replicas={replicas}"
                log(f"producer: {label}")
                results["producers"].append(
                    producer(
                        label,
                        group.url,
                        sandbox.url,
                        producer_events,
                        [group.master],
                        suprsend_redis_master_name=MASTER_NAME,
                        suprsend_buffer_min_replicas=replicas,
                    )
                )
    finally:
        sandbox.stop()
    return results


def lines(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    out = ["| producer (1 thread) | calls/s | p50 µs | p99 µs | Redis CPU µs/call |"]
    out += ["| --- | ---: | ---: | ---: | ---: |"]
    for r in results["producers"]:
        out.append(
            f"| {r['name']} | {r['per_s']:,.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} "
            f"| {r['redis_cpu_us_per_call']:.0f} |"
        )
    out += [
        "",
        "| flushers | processes | events/s | CPU µs/event |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in results["flushers"]:
        out.append(
            f"| {r['name']} | {r['processes']} | {r['per_s']:,.0f} | {r['cpu_us_per_event']:.0f} |"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000, help="events per flusher run")
    parser.add_argument("--producer-events", type=int, default=5000)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results = run(args.events, args.producer_events)
    print(json.dumps(results, indent=2) if args.json else "\n".join(lines(results)))
    bad = [r for r in results["flushers"] if r["processed"] != r["events"]]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
