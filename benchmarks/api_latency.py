"""Scenario 5: delivery at a real API's latency.

The sandbox answers every event request after a fixed delay (0, 50, 100 and 250 ms:
loopback, then SuprSend's typical range), and each sender drains events into it:

- our flusher process with the defaults (adaptive: starting at 8 requests in flight,
  up to 64), and at a fixed 1, 8 (the default before adaptation) and 32;
- the official SDK's bulk path (one request at a time);
- ``track_event`` on a prefork worker (concurrency 2) and on a threads pool worker
  (``-P threads``, concurrency 32);
- the naive task (``requests.post`` per event, prefork, concurrency 2).

Event counts follow each sender's expected rate at that delay, so every row takes a
few seconds and the whole scenario a few minutes: a sender that can only do 20 events
a second is measured on 100 events, not on 20,000. The adaptive row drains up to three
times the fixed rows' largest count (60,000), so its first round trips, from 8
requests in flight up, weigh on its rate as they would on a backlog's drain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import throughput
from benchmarks.common import SandboxProcess, log

DELAYS = (0.0, 0.05, 0.1, 0.25)
#: The row of a flusher with the default settings.
DEFAULT = "flusher default (adaptive)"
#: Seconds each row should take at its expected rate.
_TARGET_SECONDS = 3.0


def _events(expected_per_s: float, low: int, high: int) -> int:
    return int(max(low, min(high, expected_per_s * _TARGET_SECONDS)))


def _bulk_events(delay: float, in_flight: int, high: int) -> int:
    """Events for a bulk sender with ``in_flight`` requests of 100 out at once."""
    return _events(100 * in_flight / (delay + 0.01), 2000, high)


def _task_events(delay: float, concurrency: int, high: int) -> int:
    """Events for a worker sending one event per request, ``concurrency`` at once."""
    return _events(concurrency / (delay + 0.002), 100, high)


def run(
    redis_url: str,
    sandbox: SandboxProcess,
    logdir: Path,
    delays: tuple[float, ...] = DELAYS,
    scale: float = 1.0,
) -> list[dict[str, Any]]:
    """One row per sender and delay: ``delay_ms`` added to the throughput rows."""
    rows: list[dict[str, Any]] = []
    bulk_high = int(20_000 * scale)
    task_high = int(3000 * scale)
    try:
        for delay in delays:
            sandbox.delay = delay
            sandbox.reset()
            ms = round(delay * 1000)
            n = _bulk_events(delay, 64, 3 * bulk_high)
            log(f"scenario 5 @{ms} ms: flusher with the defaults (adaptive), {n} events")
            row = throughput.flushers(redis_url, sandbox, n, 1, logdir)
            rows.append({**row, "delay_ms": ms, "sender": DEFAULT})
            for concurrency in (1, 8, 32):
                n = _bulk_events(delay, concurrency, bulk_high)
                log(f"scenario 5 @{ms} ms: flusher fixed c={concurrency}, {n} events")
                row = throughput.flushers(
                    redis_url, sandbox, n, 1, logdir, concurrency=concurrency, fixed=True
                )
                rows.append({**row, "delay_ms": ms, "sender": f"flusher fixed c={concurrency}"})
            n = _bulk_events(delay, 1, bulk_high)
            log(f"scenario 5 @{ms} ms: SDK bulk, {n} events")
            rows.append(
                {**throughput.sdk_bulk(sandbox, n, logdir), "delay_ms": ms, "sender": "SDK bulk"}
            )
            for pool, concurrency in (("prefork", 2), ("threads", 32)):
                n = _task_events(delay, concurrency, task_high)
                label = f"track_event {pool} c={concurrency}"
                log(f"scenario 5 @{ms} ms: {label}, {n} events")
                row = throughput.direct(
                    redis_url,
                    sandbox,
                    n,
                    logdir,
                    concurrency=concurrency,
                    pool=pool,
                    name=f"direct track_event ({pool}, c={concurrency})",
                )
                rows.append({**row, "delay_ms": ms, "sender": label})
            n = _task_events(delay, 2, task_high // 3)
            log(f"scenario 5 @{ms} ms: naive task, {n} events")
            row = throughput.naive(redis_url, sandbox, n, logdir)
            rows.append({**row, "delay_ms": ms, "sender": "naive task c=2"})
    finally:
        sandbox.delay = 0.0
        sandbox.reset()
    return rows
