"""Every figure of the buffer, read in one pipeline per shard: ``buffer_stats()``, the
exporter, ``check`` and ``status`` all read them here.

pending, in flight, scheduled retries, dead letters, the direct path's journal (its
entries, how long the first due is overdue and how old its event is), the oldest
record's age, the breaker, the shared concurrency limit, the metrics hash (counters,
histograms, the last flush run's time) and Redis's clock, in one round trip; a second,
small one only when a claim is out (its first record may be the oldest) or when due
records are asked for (``check``: they are counted against Redis's clock of the first).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..delivery.tally import LAST_FLUSH_AT, PAST_WINDOW
from ..events.records import record_time
from .breaker import BreakerReading
from .clock import redis_seconds
from .concurrency_limit import ConcurrencyReading
from .keys import Keys, stored_number
from .slot import Slot

__all__ = ["Snapshot", "read_snapshot"]


@dataclass(slots=True)
class Snapshot:
    """The buffer's figures at one moment (summed over shards; the breaker and the last
    flush run are shard 0's, where they are kept)."""

    pending: int
    in_flight: int
    scheduled_retries: int
    dead: int
    #: Direct-path records whose task has not settled them yet.
    journal: int
    oldest_age_seconds: float
    breaker: BreakerReading
    #: The metrics hash: counters and histogram fields (``delivery.tally``).
    counters: dict[str, float]
    #: Redis time of the end of the latest flush run (None: never).
    last_flush_at: float | None
    #: Redis time of the reading.
    now: float
    #: Pending records plus retries and journal entries already due (``due=True``).
    waiting: int | None = None
    #: How long the journal entry due first is past due (0: none is): the flusher sends
    #: due entries as a run starts, so a large figure means no flush runs (or none that
    #: knows ``flush_buffer``: see README "Registering the tasks").
    journal_overdue_seconds: float = 0.0
    #: Age of that entry's event (from its ``$time``; 0 without entries).
    journal_oldest_age_seconds: float = 0.0
    #: Journal entries already due (``due=True``; else None).
    journal_due: int | None = None
    #: The adaptive limit of requests in flight the flushers share (shard 0's; None:
    #: no flusher adapted in the last hour, or adaptation is off).
    concurrency: ConcurrencyReading | None = None

    def stats(self) -> dict[str, Any]:
        """The ``buffer_stats()`` figures."""
        return {
            "pending": self.pending,
            "in_flight": self.in_flight,
            "scheduled_retries": self.scheduled_retries,
            "sent_past_dedup_window": int(self.counters.get(PAST_WINDOW, 0)),
            "dead": self.dead,
            "oldest_age_seconds": self.oldest_age_seconds,
            "breaker": self.breaker.state,
        }

    @classmethod
    def combine(cls, shards: Sequence[Snapshot]) -> Snapshot:
        """Shards' snapshots as one buffer's; ``shards[0]`` is shard 0."""
        first = shards[0]
        counters: dict[str, float] = {}
        for shard in shards:
            for name, value in shard.counters.items():
                counters[name] = counters.get(name, 0) + value
        waiting = [s.waiting for s in shards]
        dues = [s.journal_due for s in shards]
        return cls(
            pending=sum(s.pending for s in shards),
            in_flight=sum(s.in_flight for s in shards),
            scheduled_retries=sum(s.scheduled_retries for s in shards),
            dead=sum(s.dead for s in shards),
            journal=sum(s.journal for s in shards),
            oldest_age_seconds=max(s.oldest_age_seconds for s in shards),
            breaker=first.breaker,
            counters=counters,
            last_flush_at=first.last_flush_at,
            now=first.now,
            waiting=None if None in waiting else sum(w or 0 for w in waiting),
            journal_overdue_seconds=max(s.journal_overdue_seconds for s in shards),
            journal_oldest_age_seconds=max(s.journal_oldest_age_seconds for s in shards),
            journal_due=None if None in dues else sum(d or 0 for d in dues),
            concurrency=first.concurrency,
        )


def _number(raw: bytes) -> float | None:
    """A counter's value; None for one that holds no number (written by hand)."""
    try:
        number = float(raw) if b"." in raw or b"e" in raw else int(raw)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def read_snapshot(slot: Slot, keys: Keys, *, due: bool = False) -> Snapshot:
    """One shard's figures (see the module docstring); ``due`` counts ``waiting`` too."""
    pipe = slot.pipeline()
    pipe.llen(keys.pending)
    pipe.get(keys.inflight)
    pipe.zcard(keys.retry)
    pipe.llen(keys.dead)
    pipe.zcard(keys.journal)
    pipe.lindex(keys.pending, 0)
    pipe.zrange(keys.claims, 0, 0)
    pipe.zrange(keys.retry, 0, 0)
    pipe.zrange(keys.journal, 0, 0, withscores=True)
    pipe.hgetall(keys.breaker)
    pipe.hgetall(keys.metrics)
    pipe.hgetall(keys.concurrency)
    pipe.time()
    pending, inflight, retries, dead, journal, head, oldest_claim, *rest = pipe.execute()
    first_retry, first_entry, breaker, raw, concurrency, clock = rest
    now = redis_seconds(clock)
    # Approximately the oldest record: the head of pending, the first record of the
    # claim due back first and the retry due first (records keep their $time).
    candidates = [head] if head else []
    candidates.extend(first_retry)
    waiting = journal_due = None
    if oldest_claim or due:
        pipe = slot.pipeline()
        if oldest_claim:
            pipe.lindex(keys.claim(oldest_claim[0].decode()), 0)
        if due:
            pipe.zcount(keys.retry, "-inf", now)
            pipe.zcount(keys.journal, "-inf", now)
        replies = pipe.execute()
        if due:
            journal_due = int(replies[-1])
            waiting = int(pending) + int(replies[-2]) + journal_due
        if oldest_claim and replies[0]:
            candidates.append(replies[0])
    times = (record_time(c) for c in candidates)  # None for an unreadable item
    oldest_ms = [t for t in times if t is not None]
    oldest_age = max(0.0, time.time() - min(oldest_ms) / 1000) if oldest_ms else 0.0
    overdue = entry_age = 0.0
    if first_entry:
        entry, entry_due = first_entry[0]
        overdue = max(0.0, now - float(entry_due))
        entry_ms = record_time(entry)
        entry_age = max(0.0, time.time() - entry_ms / 1000) if entry_ms is not None else 0.0
    numbers = ((field.decode("utf-8", "replace"), _number(value)) for field, value in raw.items())
    counters = {field: value for field, value in numbers if value is not None}
    last_flush = counters.get(LAST_FLUSH_AT)
    return Snapshot(
        pending=int(pending),
        in_flight=max(0, int(stored_number(inflight))),
        scheduled_retries=int(retries),
        dead=int(dead),
        journal=int(journal),
        oldest_age_seconds=round(oldest_age, 3),
        breaker=BreakerReading.of(breaker, now),
        counters=counters,
        last_flush_at=None if last_flush is None else float(last_flush),
        now=now,
        waiting=waiting,
        journal_overdue_seconds=round(overdue, 3),
        journal_oldest_age_seconds=round(entry_age, 3),
        journal_due=journal_due,
        concurrency=ConcurrencyReading.of(concurrency),
    )
