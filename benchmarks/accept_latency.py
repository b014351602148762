"""Scenario 6: accept to delivered, from the call in a view to the sandbox processing it.

Each event's clock starts just before the call (``time.time()`` in this process) and
stops when the sandbox processed its idempotency key (``GET /_sandbox/processed``, its
own ``time.time()``; same machine). Two loads, each on a worker started for it and
warmed up first:

- trickle: events one at a time at 20 per second (interactive traffic: a password
  reset, an OTP);
- burst: events accepted as fast as one producer thread can call.

Senders:

- buffered, defaults: ``buffer_event`` and the standalone relay
  (``celery -A suprsend_celery.app worker --beat -P threads -c 4``, nothing set but
  credentials and URLs: a flush run on duty waits for records);
- buffered, interval only: the same with ``SUPRSEND_FLUSH_WAIT=false`` (a run drains
  and ends; records wait for the next beat, as before runs waited on duty);
- direct: ``track_event.delay`` and the same relay (prefork, concurrency 2, as in the
  throughput scenario);
- in-process batch, PostHog-style: a thread in the producer's process takes events
  from a queue and posts a batch at 100 events or every 0.5 s (PostHog's
  ``flush_interval``), through our client: the peer design, which keeps events in
  memory (lost on a crash or a deploy).

For each: p50/p99/max latency, records per request in the burst, and the sending
side's CPU per event (the worker and its pool, ``psutil``; the batch thread's own
``thread_time``), idle waiting included.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import (
    PREFIX,
    Child,
    SandboxProcess,
    event_args,
    log,
    median,
    percentile,
    producer_app,
    relay_env,
    run_id,
    start_worker,
)
from benchmarks.throughput import clear_buffer
from suprsend_celery import Event, buffer_event, track_event
from suprsend_celery.pipeline.runtime import get_client
from suprsend_celery.pipeline.settings import reset_settings

TRICKLE_RATE = 20.0
"""Events per second of the trickle."""

BATCH_INTERVAL = 0.5
"""The in-process batch's flush interval (PostHog's ``flush_interval``)."""

BATCH_SIZE = 100
"""The in-process batch's ``flush_at`` (SuprSend's bulk limit)."""


class InProcessBatch:
    """PostHog-style: a consumer thread batches events from a queue and posts a batch
    every ``BATCH_INTERVAL`` seconds or at ``BATCH_SIZE`` events."""

    def __init__(self, app: Any) -> None:
        self.client = get_client(app)
        self.queue: queue.Queue[Event | None] = queue.Queue()
        self.cpu = 0.0
        self.thread = threading.Thread(target=self._consume, daemon=True)
        self.thread.start()

    def put(self, event: Event) -> None:
        self.queue.put(event)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(30)

    def _consume(self) -> None:
        cpu0 = time.thread_time()
        done = False
        while not done:
            items: list[Event] = []
            start = time.monotonic()
            while len(items) < BATCH_SIZE:
                left = BATCH_INTERVAL - (time.monotonic() - start)
                if left <= 0:
                    break
                try:
                    item = self.queue.get(timeout=left)
                except queue.Empty:
                    break
                if item is None:
                    done = True
                    break
                items.append(item)
            if items:
                self.client.send_bulk(items)
            self.cpu = time.thread_time() - cpu0


def _pace(count: int, rate: float, send: Callable[[int], str]) -> dict[str, float]:
    """Call ``send(i)`` ``count`` times at ``rate`` per second; key -> accept time."""
    accepted: dict[str, float] = {}
    start = time.monotonic()
    for i in range(count):
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        at = time.time()
        accepted[send(i)] = at
    return accepted


def _burst(count: int, send: Callable[[int], str]) -> dict[str, float]:
    accepted: dict[str, float] = {}
    for i in range(count):
        at = time.time()
        accepted[send(i)] = at
    return accepted


def _latencies(
    sandbox: SandboxProcess, accepted: dict[str, float], timeout: float
) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        processed = sandbox.processed()
        if all(key in processed for key in accepted):
            break
        if time.monotonic() > deadline:
            missing = sum(1 for key in accepted if key not in processed)
            raise RuntimeError(f"{missing} of {len(accepted)} events not processed in {timeout}s")
        time.sleep(0.05)
    waited = sorted(processed[key] - at for key, at in accepted.items())
    return {
        "events": len(waited),
        "p50_ms": median(waited) * 1000,
        "p99_ms": percentile(waited, 99) * 1000,
        "max_ms": waited[-1] * 1000,
    }


def _per_request(sandbox: SandboxProcess) -> float:
    sizes = [r["records"] or 0 for r in sandbox.requests() if 200 <= (r["status"] or 0) < 300]
    return sum(sizes) / len(sizes) if sizes else float("nan")


def _on_duty(redis_url: str, timeout: float = 60.0) -> None:
    """Wait until a flush run is on duty (beat's first run comes after one interval)."""
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout
        while not client.zcard("{" + PREFIX + "}:duty"):
            if time.monotonic() > deadline:
                raise RuntimeError("no flush run went on duty")
            time.sleep(0.05)
    finally:
        client.close()


def _measure(
    name: str,
    sandbox: SandboxProcess,
    send: Callable[[int, str], str],
    cpu: Callable[[], float],
    trickle: int,
    burst: int,
    timeout: float,
) -> dict[str, Any]:
    """Warm up, then the trickle and the burst, each timed event by event."""
    tag = run_id()
    warm = _pace(10, TRICKLE_RATE, lambda i: send(i, f"warm-{tag}"))
    _latencies(sandbox, warm, timeout)
    row: dict[str, Any] = {"name": name}
    for load, count in (("trickle", trickle), ("burst", burst)):
        sandbox.reset()
        cpu0, wall0 = cpu(), time.monotonic()
        label = f"{load}-{tag}"
        if load == "trickle":
            accepted = _pace(count, TRICKLE_RATE, lambda i, label=label: send(i, label))
        else:
            accepted = _burst(count, lambda i, label=label: send(i, label))
        row[load] = _latencies(sandbox, accepted, timeout)
        used = cpu() - cpu0
        row[load]["cpu_us_per_event"] = used / count * 1e6
        row[load]["cpu_share"] = used / (time.monotonic() - wall0)
        row[load]["records_per_request"] = _per_request(sandbox)
        log(f"accept-latency: {name}, {load}: {row[load]}")
    return row


def _relay(
    name: str,
    redis_url: str,
    sandbox: SandboxProcess,
    logdir: Path,
    *,
    direct: bool,
    trickle: int,
    burst: int,
    **env: str,
) -> dict[str, Any]:
    tag = run_id()
    queue_name = f"bench-latency-{tag}"
    clear_buffer(redis_url)
    app = producer_app(redis_url, sandbox.url, queue_name)
    worker_env = relay_env(redis_url, sandbox.url, queue_name, **env)
    if not direct:
        worker_env.pop("SUPRSEND_FLUSH_INTERVAL")  # the default
    worker: Child | None = None
    try:
        worker = start_worker(
            "suprsend_celery.app",
            queue_name,
            worker_env,
            concurrency=2 if direct else 4,
            pool="prefork" if direct else "threads",
            name=name.split(",", maxsplit=1)[0].replace(" ", "-"),
            log=logdir / f"latency-worker-{tag}.log",
            beat=not direct,
            extra=() if direct else ("--schedule", str(logdir / f"beat-{tag}")),
        )
        if not direct and env.get("SUPRSEND_FLUSH_WAIT") != "false":
            _on_duty(redis_url)

        def send(i: int, run: str) -> str:
            d, n, p, k = event_args(i, run)
            if direct:
                track_event.delay(d, n, p, idempotency_key=k)
                return k
            return buffer_event(d, n, p, idempotency_key=k)

        return _measure(name, sandbox, send, worker.cpu_seconds, trickle, burst, timeout=120)
    finally:
        if worker is not None:
            worker.stop()
        client = redis.Redis.from_url(redis_url)
        client.delete(queue_name)
        client.close()
        reset_settings(app)
        app.close()


def _in_process(
    redis_url: str, sandbox: SandboxProcess, trickle: int, burst: int
) -> dict[str, Any]:
    app = producer_app(redis_url, sandbox.url, "bench-unused")
    batch = InProcessBatch(app)
    try:

        def send(i: int, run: str) -> str:
            d, n, p, k = event_args(i, run)
            batch.put(Event(d, n, p, idempotency_key=k))
            return k

        def cpu() -> float:
            return batch.cpu

        return _measure(
            f"in-process batch ({BATCH_INTERVAL:g} s, PostHog-style)",
            sandbox,
            send,
            cpu,
            trickle,
            burst,
            timeout=60,
        )
    finally:
        batch.close()
        reset_settings(app)
        app.close()


def run(
    redis_url: str, sandbox: SandboxProcess, logdir: Path, trickle: int, burst: int
) -> list[dict[str, Any]]:
    """One row per sender: ``trickle`` and ``burst`` figures."""
    sandbox.delay = 0.0
    return [
        _relay(
            "buffered, defaults",
            redis_url,
            sandbox,
            logdir,
            direct=False,
            trickle=trickle,
            burst=burst,
        ),
        _relay(
            "buffered, interval only (suprsend_flush_wait off)",
            redis_url,
            sandbox,
            logdir,
            direct=False,
            trickle=trickle,
            burst=burst,
            SUPRSEND_FLUSH_WAIT="false",
        ),
        _relay(
            "direct track_event",
            redis_url,
            sandbox,
            logdir,
            direct=True,
            trickle=trickle,
            burst=burst,
        ),
        _in_process(redis_url, sandbox, trickle, burst),
    ]
