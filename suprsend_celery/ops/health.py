"""``suprsend-celery check``: is the buffer being drained? For probes and cron alerts.

Every problem is a line of text; none means healthy. What is caught, and from what:

- no flush run for 3 flush intervals while records wait: every flush run writes
  ``last_flush_at`` (Redis TIME) into the metrics hash as it ends, so a dead beat (or
  no worker consuming its tasks) shows as a stale time next to waiting records;
- direct-path events overdue in the journal: the flusher sends each due entry as a
  run starts, so one overdue by more than 3 flush intervals plus a run's time budget
  (``journal_window``) means no flush runs, or the workers do not know our tasks
  (``app.conf.imports``; a worker logs "Received unregistered task"), and those
  events wait unseen by ``pending``;
- the oldest record older than ``max_age``; more than ``max_dead`` dead letters;
- the breaker open longer than ``breaker_open`` (``open_since`` in its hash, kept
  through failed probes, cleared when it closes);
- a Redis that may evict keys (``maxmemory-policy allkeys-*``): the producers refuse
  every accept there (``buffer.eviction``, the same rule), so a buffer that looks
  empty and fresh is in fact refusing all events;
- a key of ours holding the wrong type of value (``SET {p}:claims x``: another program
  writes under our prefix, and every flush run fails on it), named with the type it
  should hold, before anything else is read;
- Redis unreachable, within a bounded time (short socket timeouts, no retries).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..buffer.eviction import describe_redis, refusal
from ..buffer.opening import open_buffer
from ..buffer.outbox_figures import outbox_figures
from ..buffer.protocol import Buffer
from ..buffer.redis_buffer import RedisBuffer
from ..buffer.sharded import ShardedBuffer
from ..defaults import FLUSH_TIME_BUDGET
from ..pipeline.runtime import buffer_config
from ..pipeline.settings import Settings

__all__ = ["STALE_INTERVALS", "Thresholds", "check", "journal_window", "quick_buffer"]

STALE_INTERVALS = 3
"""Flush intervals without a flush run, while records wait, that make a problem."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The limits ``check`` applies (None: not checked)."""

    flush_interval: float
    max_age: float | None = None
    max_dead: int | None = None
    breaker_open: float | None = None


def quick_buffer(settings: Settings, timeout: float | None = 2.0) -> Buffer:
    """The app's buffer on a client that fails within ``timeout`` seconds rather than
    retrying (Sentinel and clusters included); ``None``: the usual timeouts and retries.

    Built from the settings alone (``get_settings(app, require_credentials=False)``
    will do), never from the app's cached producers: operations need Redis only.
    """
    return open_buffer(buffer_config(settings), fail_fast=timeout)


def _age(seconds: float) -> str:
    return f"{seconds:.0f}s"


def check(buffer: Buffer, limits: Thresholds) -> list[str]:
    """The buffer's problems, one line each (empty: healthy). Raises ``RedisError``."""
    wrong = _wrong_kinds(buffer)
    if wrong:  # every other read would fail on them too
        return wrong
    snap = buffer.snapshot(due=True)  # due retries and journal entries wait too
    outbox = outbox_figures(buffer)  # waits too, in the database, as its relay last saw
    now, oldest_age, breaker = snap.now, snap.oldest_age_seconds, snap.breaker
    waiting = (snap.waiting or 0) + outbox["outbox_pending"]
    problems = _evicting(buffer)
    oldest = max(oldest_age, outbox["outbox_oldest_age_seconds"])
    problems += _stale(limits, now, snap.last_flush_at, waiting, oldest)
    problems += _journal_overdue(limits, snap.journal_due or 0, snap.journal_overdue_seconds)
    if limits.max_age is not None and oldest_age > limits.max_age:
        problems.append(
            f"the oldest record waited {_age(oldest_age)} (--max-age {limits.max_age:g}s)"
        )
    if limits.max_age is not None and outbox["outbox_oldest_age_seconds"] > limits.max_age:
        problems.append(
            f"the oldest Django outbox row waited {_age(outbox['outbox_oldest_age_seconds'])} "
            f"(--max-age {limits.max_age:g}s): is Redis up, and a worker set up with Django?"
        )
    if limits.max_dead is not None and snap.dead > limits.max_dead:
        problems.append(
            f"{snap.dead} dead letters (--max-dead {limits.max_dead}): "
            "see `suprsend-celery dead-letters list`"
        )
    if limits.breaker_open is not None and breaker.state != "closed" and breaker.open_since:
        open_for = now - breaker.open_since
        if open_for > limits.breaker_open:
            why = breaker.reason or "SuprSend failing"
            problems.append(
                f"the circuit breaker has been open for {_age(open_for)} "
                f"(--breaker-open {limits.breaker_open:g}s): {why}"
            )
    return problems


def _parts(buffer: Buffer) -> list[Buffer]:
    return list(buffer.shards.values()) if isinstance(buffer, ShardedBuffer) else [buffer]


def _wrong_kinds(buffer: Buffer) -> list[str]:
    """Keys of ours that hold another type than ours (one pipeline of TYPEs a shard)."""
    found: list[str] = []
    for part in _parts(buffer):
        if not isinstance(part, RedisBuffer):
            continue
        kinds = part.keys.kinds()
        with part.redis.pipeline(transaction=False) as pipe:
            for name, _ in kinds:
                pipe.type(name)
            answers = pipe.execute()
        for (name, kind), answer in zip(kinds, answers, strict=True):
            held = answer.decode() if isinstance(answer, bytes) else str(answer)
            if held not in ("none", kind):
                found.append(
                    f"{name} holds a {held}, where the buffer keeps a {kind}: another program "
                    "writes under this key prefix (give it, or us, another prefix), and every "
                    "flush run fails on it until the key is deleted"
                )
    return found


def _evicting(buffer: Buffer) -> list[str]:
    """The producers' eviction rule (``refusal``), for each Redis holding a part of the
    buffer (one INFO each; a Redis that refuses INFO cannot be judged, as at accept)."""
    found: list[str] = []
    for part in _parts(buffer):
        policy = part.memory_info().get("maxmemory_policy")
        why = refusal(policy, describe_redis(part.redis))
        if why is not None and why not in found:
            found.append(f"{why}; until then buffer_event and track_event refuse every event")
    return found


def journal_window(flush_interval: float) -> float:
    """How long a journal entry may be overdue before ``check`` says so: the flusher
    takes due entries as each run starts, and a run may last its time budget."""
    return STALE_INTERVALS * max(flush_interval, 0.0) + FLUSH_TIME_BUDGET


def _journal_overdue(limits: Thresholds, due: int, overdue: float) -> list[str]:
    window = journal_window(limits.flush_interval)
    if due == 0 or overdue <= window:
        return []
    return [
        f"{due} direct-path event(s) (track_event) overdue in the journal, the first by "
        f"{_age(overdue)} (> {window:g}s): no flush run has sent them. Do the workers know "
        "suprsend_celery's tasks (a worker log saying 'Received unregistered task of type "
        "suprsend_celery...' means no: see README, Registering the tasks), and is beat running?"
    ]


def _stale(
    limits: Thresholds, now: float, last_flush: float | None, waiting: int, oldest_age: float
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
    since = now - last_flush
    if since <= window:
        return []
    return [
        f"no flush run for {_age(since)} (> {STALE_INTERVALS} x {interval:g}s flush interval) "
        f"while {waiting} record(s) wait: {hint}"
    ]
