"""Scenarios 2 and 4: end-to-end delivery rate and the sender's CPU per event.

Each sender drains the same N events into the same sandbox (its own process), and
only the sending processes' CPU is counted (``getrusage`` inside a flusher or SDK
process; ``psutil`` over a Celery worker and its pool processes):

- buffered: N events buffered with ``buffer_events``, then ``Flusher.run`` in one (or,
  for scaling, two) ``benchmarks._flusher`` processes;
- direct: N ``track_event`` tasks published, then a real relay worker
  (``celery -A suprsend_celery.app worker --pool=prefork -c 2``) drains them;
- SDK bulk: ``bulk_events.new_instance()`` + ``append`` + ``trigger()`` in a process;
- naive: N ``benchmarks.naive_track`` tasks (one ``requests.post`` each) drained by a
  real worker with the same pool.

Workers are warmed up on a side queue first (pool processes forked, connections
open), then told to consume the loaded queue (``add_consumer``), so start-up is not
measured.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import (
    PREFIX,
    PYTHON,
    Child,
    SandboxProcess,
    children_stopped,
    event_args,
    log,
    producer_app,
    relay_env,
    run_id,
    start_worker,
)
from suprsend_celery import Event, buffer_events, track_event
from suprsend_celery.pipeline.settings import reset_settings


def _result(name: str, events: int, wall: float, cpu: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "events": events,
        "wall_s": wall,
        "events_per_s": events / wall if wall > 0 else float("nan"),
        "cpu_s": cpu,
        "cpu_us_per_event": cpu / events * 1e6 if events else float("nan"),
        **extra,
    }


def prefill_buffer(redis_url: str, sandbox_url: str, events: int, tag: str) -> None:
    """Buffer ``events`` events with the public ``buffer_events`` (not timed)."""
    app = producer_app(redis_url, sandbox_url, "bench-unused")
    try:
        for start in range(0, events, 1000):
            batch = []
            for i in range(start, min(events, start + 1000)):
                d, n, p, k = event_args(i, tag)
                batch.append(Event(d, n, p, idempotency_key=k))
            buffer_events(batch, app=app)
    finally:
        reset_settings(app)
        app.close()


def clear_buffer(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match="{" + PREFIX + "}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def flushers(
    redis_url: str,
    sandbox: SandboxProcess,
    events: int,
    processes: int,
    logdir: Path,
    *,
    prefilled: bool = False,
    sample_rss: bool = False,
    concurrency: int | None = None,
    duty: bool = False,
    fixed: bool = False,
    drain: bool = False,
) -> dict[str, Any]:
    """Drain ``events`` buffered events with ``processes`` flusher processes
    (``concurrency`` requests in flight to start from, the setting's default when None;
    ``fixed``: always that many; ``drain``: until refused records are sent too).
    ``duty``: runs on duty (as the task's), told to stop once all were processed; the
    clock stops at the sandbox's last processed event."""
    tag = run_id()
    if not prefilled:
        clear_buffer(redis_url)
        prefill_buffer(redis_url, sandbox.url, events, tag)
    children = [
        Child(
            [
                PYTHON,
                "-m",
                "benchmarks._flusher",
                "--redis-url",
                redis_url,
                "--base-url",
                sandbox.url,
                *(["--concurrency", str(concurrency)] if concurrency else []),
                *(["--duty"] if duty else []),
                *(["--fixed"] if fixed else []),
                *(["--drain"] if drain else []),
            ],
            stdin=True,
            stdout=True,
            log=logdir / f"flusher-{tag}-{i}.log",
        )
        for i in range(processes)
    ]
    with children_stopped(*children):
        for child in children:
            child.read_json(60)
        sandbox.reset()
        baseline = [child.rss() for child in children]
        peaks = list(baseline)
        for child in children:
            child.send("go")
        if sample_rss:
            deadline = time.monotonic() + 3600
            while any(child.alive() for child in children) and time.monotonic() < deadline:
                for index, child in enumerate(children):
                    peaks[index] = max(peaks[index], child.rss())
                time.sleep(0.1)
        if duty:
            sandbox.wait_processed(events, timeout=3600)
            for child in children:
                child.send("stop")
        reports = [child.read_json(3600) for child in children]
    end = max(r["end"] for r in reports)
    if duty:
        end = max(sandbox.processed().values())
    wall = end - min(r["start"] for r in reports)
    cpu = sum(r["cpu"] for r in reports)
    processed = sandbox.stats()["events_processed"]
    sent = sum(r["sent"] for r in reports)
    name = "buffered flusher" + (" on duty" if duty else "")
    name += f" x{processes}" if processes > 1 else ""
    if concurrency:
        name += f" c={concurrency}"
    if fixed:
        name += " fixed"
    extra: dict[str, Any] = {
        "processed": processed,
        "sent": sent,
        "requests": sum(r["requests"] for r in reports),
        "limit": reports[0].get("limit"),
    }
    if sample_rss:
        peak = max(max(peaks), *(r["maxrss"] for r in reports))
        extra.update(rss_baseline=max(baseline), rss_peak=peak, rss_growth=peak - max(baseline))
    return _result(name, events, wall, cpu, **extra)


def sdk_bulk(sandbox: SandboxProcess, events: int, logdir: Path) -> dict[str, Any]:
    tag = run_id()
    child = Child(
        [
            PYTHON,
            "-m",
            "benchmarks._sdk_bulk",
            "--base-url",
            sandbox.url,
            "--events",
            str(events),
            "--run",
            tag,
        ],
        stdin=True,
        stdout=True,
        log=logdir / f"sdk-bulk-{tag}.log",
    )
    with children_stopped(child):
        child.read_json(300)
        sandbox.reset()
        child.send("go")
        report = child.read_json(3600)
    processed = sandbox.stats()["events_processed"]
    return _result("SDK bulk_events", events, report["wall"], report["cpu"], processed=processed)


def _worker_drain(
    name: str,
    app_module: str,
    redis_url: str,
    sandbox: SandboxProcess,
    events: int,
    publish: Any,
    logdir: Path,
    concurrency: int,
    timeout: float,
    pool: str = "prefork",
) -> dict[str, Any]:
    """Publish ``events`` tasks, warm a worker on a side queue, then let it drain them."""
    tag = run_id()
    queue, warm_queue = f"bench-{tag}", f"warm-{tag}"
    app = producer_app(redis_url, sandbox.url, queue)
    worker = None
    try:
        log(f"{name}: publishing {events} tasks")
        for i in range(events):
            publish(app, queue, *event_args(i, tag))
        worker = start_worker(
            app_module,
            warm_queue,
            relay_env(redis_url, sandbox.url, warm_queue),
            concurrency=concurrency,
            pool=pool,
            name=name.split(" (", maxsplit=1)[0].replace(" ", "-"),
            log=logdir / f"worker-{tag}.log",
        )
        sandbox.reset()
        for i in range(concurrency * 4):
            publish(app, warm_queue, *event_args(i, f"warm-{tag}"))
        sandbox.wait_processed(concurrency * 4, timeout=120)
        time.sleep(0.5)  # let the warm-up tasks' results and acks settle
        sandbox.reset()
        cpu0 = worker.cpu_seconds()
        start = time.perf_counter()
        replies = app.control.add_consumer(queue, reply=True, timeout=10, limit=1)
        if not replies:
            raise RuntimeError(f"{name}: the worker did not answer add_consumer")
        end = sandbox.wait_processed(events, timeout=timeout)
        cpu1 = worker.cpu_seconds()
        processed = sandbox.stats()["events_processed"]
    finally:
        if worker is not None:
            worker.stop()
        client = redis.Redis.from_url(redis_url)
        client.delete(queue, warm_queue)
        client.close()
        reset_settings(app)
        app.close()
    return _result(
        name, events, end - start, cpu1 - cpu0, processed=processed, concurrency=concurrency
    )


def _publish_track(app: Any, queue: str, d: str, n: str, p: dict[str, Any], k: str) -> None:
    track_event.apply_async((d, n, p), {"idempotency_key": k}, queue=queue)


def _publish_naive(app: Any, queue: str, d: str, n: str, p: dict[str, Any], k: str) -> None:
    app.send_task("benchmarks.naive_track", (d, n, p, k), queue=queue)


def direct(
    redis_url: str,
    sandbox: SandboxProcess,
    events: int,
    logdir: Path,
    concurrency: int = 2,
    pool: str = "prefork",
    name: str = "direct track_event",
) -> dict[str, Any]:
    return _worker_drain(
        name,
        "suprsend_celery.app",
        redis_url,
        sandbox,
        events,
        _publish_track,
        logdir,
        concurrency,
        timeout=max(120.0, events / 5),
        pool=pool,
    )


def naive(
    redis_url: str, sandbox: SandboxProcess, events: int, logdir: Path, concurrency: int = 2
) -> dict[str, Any]:
    return _worker_drain(
        "naive task + requests.post",
        "benchmarks.naive_app",
        redis_url,
        sandbox,
        events,
        _publish_naive,
        logdir,
        concurrency,
        timeout=max(120.0, events / 5),
    )
