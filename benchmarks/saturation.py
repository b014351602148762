"""Scenario 6: an API at its limit, as the adaptive concurrency meets it.

The sandbox plays two kinds of limit (its load models, ``dev/sandbox/faults.py``), each
answering after ``LATENCY`` when not at its limit:

- **capacity**: it works through ``CAPACITY`` requests a second, one after the other;
  beyond that requests queue and every answer slows down. The most anyone can deliver
  is ``CAPACITY * 100`` events a second; more requests in flight only add latency.
- **refuses beyond N**: it answers 429 (no ``Retry-After``) to a request that arrives
  while ``MAX_CONCURRENT`` are being handled.

Against each: a flusher with the defaults (adaptive), and fixed concurrencies for
comparison (8, the default before adaptation; 64 or N). Each drains the same events
until none is left (refused records included), and the row reports events per second
against the server's capacity, the answers' median latency, and the share of requests
refused after the first second.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks import throughput
from benchmarks.common import SandboxProcess, log

CAPACITY = 100
"""Requests a second the capacity server works through (10,000 events/s)."""

MAX_CONCURRENT = 16
"""Requests at once beyond which the other server answers 429."""

LATENCY = 0.1
"""Seconds each answer takes below the server's limit."""

DEFAULT = "flusher default (adaptive)"


def _servers() -> list[tuple[str, dict[str, Any], float, list[tuple[str, dict[str, Any]]]]]:
    """``(server, fault plan, its capacity in events/s, [(sender, flusher options)])``."""
    delay = [{"delay": LATENCY}]
    return [
        (
            f"capacity {CAPACITY} requests/s",
            {"capacity": CAPACITY, "rules": delay},
            CAPACITY * 100.0,
            [
                (DEFAULT, {}),
                ("flusher fixed c=8", {"concurrency": 8, "fixed": True}),
                ("flusher fixed c=64", {"concurrency": 64, "fixed": True}),
            ],
        ),
        (
            f"429 beyond {MAX_CONCURRENT} at once",
            {"max_concurrent": MAX_CONCURRENT, "rules": delay},
            MAX_CONCURRENT / LATENCY * 100.0,
            [
                (DEFAULT, {}),
                ("flusher fixed c=8", {"concurrency": 8, "fixed": True}),
                (
                    f"flusher fixed c={MAX_CONCURRENT}",
                    {"concurrency": MAX_CONCURRENT, "fixed": True},
                ),
            ],
        ),
    ]


def run(
    redis_url: str, sandbox: SandboxProcess, logdir: Path, scale: float = 1.0
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    events = int(40_000 * scale)
    try:
        for server, plan, capacity, senders in _servers():
            sandbox.plan = plan
            for sender, options in senders:
                log(f"scenario 6, {server}: {sender}, {events} events")
                row = throughput.flushers(
                    redis_url, sandbox, events, 1, logdir, drain=True, **options
                )
                log_ = sandbox.requests()
                start = log_[0]["received_at"] if log_ else 0.0
                late = [r for r in log_ if r["received_at"] >= start + 1.0]
                refused = sum(1 for r in late if r["status"] == 429)
                answered = [r["duration"] for r in late if r["status"] == 207]
                rows.append(
                    {
                        **row,
                        "server": server,
                        "sender": sender,
                        "capacity_events_per_s": capacity,
                        "of_capacity": row["events_per_s"] / capacity,
                        "refused_share": refused / len(late) if late else 0.0,
                        "p50_latency_s": statistics.median(answered) if answered else float("nan"),
                    }
                )
    finally:
        sandbox.plan = None
        sandbox.reset()
    return rows
