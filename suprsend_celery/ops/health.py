"""``suprsend-celery check``: is the buffer being drained? For probes and cron alerts.

Every problem is a line of text; none means healthy. What is caught, and from what:

- no flush run for 3 flush intervals while records wait: every flush run writes
  ``last_flush_at`` (Redis TIME) into the metrics hash as it ends, so a dead beat (or
  no worker consuming its tasks) shows as a stale time next to waiting records;
- the oldest record older than ``max_age``; more than ``max_dead`` dead letters;
- the breaker open longer than ``breaker_open`` (``open_since`` in its hash, kept
  through failed probes, cleared when it closes);
- Redis unreachable, within a bounded time (short socket timeouts, no retries).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..buffer.connection import connect
from ..buffer.outbox_figures import outbox_figures
from ..buffer.redis_buffer import RedisBuffer
from ..buffer.sharded import open_buffer, shards_in_use
from ..delivery.tally import LAST_FLUSH_AT
from ..pipeline.settings import Settings

__all__ = ["STALE_INTERVALS", "Thresholds", "check", "quick_buffer"]

STALE_INTERVALS = 3
"""Flush intervals without a flush run, while records wait, that make a problem."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The limits ``check`` applies (None: not checked)."""

    flush_interval: float
    max_age: float | None = None
    max_dead: int | None = None
    breaker_open: float | None = None


def quick_buffer(settings: Settings, timeout: float = 2.0) -> RedisBuffer:
    """The app's buffer on a client that fails within ``timeout`` seconds rather than
    retrying (Sentinel and clusters included)."""
    client = connect(
        settings.require_redis_url(),
        master_name=settings.redis_master_name,
        sentinel_kwargs=settings.sentinel_kwargs,
        fail_fast=timeout,
    )
    prefix, shards = settings.key_prefix, settings.buffer_shards
    used = shards_in_use(client, prefix, shards)
    return open_buffer(client, prefix=prefix, shards=shards, used=used)


def _age(seconds: float) -> str:
    return f"{seconds:.0f}s"


def check(buffer: RedisBuffer, limits: Thresholds) -> list[str]:
    """The buffer's problems, one line each (empty: healthy). Raises ``RedisError``."""
    stats = buffer.stats()
    outbox = outbox_figures(buffer)  # waits too, in the database, as its relay last saw
    pipe = buffer.pipeline()
    pipe.time()
    pipe.hget(buffer.metrics_key, LAST_FLUSH_AT)
    pipe.hmget(buffer.breaker_key, "open_since", "reason")
    now_pair, last_flush, (open_since, reason) = pipe.execute()
    now = float(now_pair[0]) + float(now_pair[1]) / 1e6
    waiting = stats["pending"] + outbox["outbox_pending"]
    for part in buffer.parts():  # due retries and journal entries wait too
        pipe = part.pipeline()
        pipe.zcount(part.retry_key, "-inf", now)
        pipe.zcount(part.journal_key, "-inf", now)
        waiting += sum(int(n) for n in pipe.execute())
    problems: list[str] = []
    oldest = max(stats["oldest_age_seconds"], outbox["outbox_oldest_age_seconds"])
    problems += _stale(limits, now, last_flush, waiting, oldest)
    if limits.max_age is not None and stats["oldest_age_seconds"] > limits.max_age:
        problems.append(
            f"the oldest record waited {_age(stats['oldest_age_seconds'])} "
            f"(--max-age {limits.max_age:g}s)"
        )
    if limits.max_age is not None and outbox["outbox_oldest_age_seconds"] > limits.max_age:
        problems.append(
            f"the oldest Django outbox row waited {_age(outbox['outbox_oldest_age_seconds'])} "
            f"(--max-age {limits.max_age:g}s): is Redis up, and a worker set up with Django?"
        )
    if limits.max_dead is not None and stats["dead"] > limits.max_dead:
        problems.append(
            f"{stats['dead']} dead letters (--max-dead {limits.max_dead}): "
            "see `suprsend-celery dead-letters list`"
        )
    if limits.breaker_open is not None and stats["breaker"] != "closed" and open_since:
        open_for = now - float(open_since)
        if open_for > limits.breaker_open:
            why = (reason or b"").decode("utf-8", "replace") or "SuprSend failing"
            problems.append(
                f"the circuit breaker has been open for {_age(open_for)} "
                f"(--breaker-open {limits.breaker_open:g}s): {why}"
            )
    return problems


def _stale(
    limits: Thresholds, now: float, last_flush: Any, waiting: int, oldest_age: float
) -> Sequence[str]:
    """No flush run for ``STALE_INTERVALS`` intervals while records wait."""
    interval = limits.flush_interval
    if interval <= 0 or waiting == 0:
        return []
    window = STALE_INTERVALS * interval
    hint = "is beat running, and a worker consuming its flush_buffer tasks?"
    if last_flush is None:
        if oldest_age <= window:
            return []
        return [
            f"no flush run has ever been recorded and {waiting} record(s) have waited "
            f"{_age(oldest_age)} (> {STALE_INTERVALS} x {interval:g}s flush interval): {hint}"
        ]
    since = now - float(last_flush)
    if since <= window:
        return []
    return [
        f"no flush run for {_age(since)} (> {STALE_INTERVALS} x {interval:g}s flush interval) "
        f"while {waiting} record(s) wait: {hint}"
    ]
