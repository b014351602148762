"""The buffer's shared concurrency limit: requests in flight for every flusher together.

One HASH in shard 0's hash tag, beside the breaker (``{p}:concurrency``: ``limit``,
``refused`` (where the API last refused, if it did lately), ``flushers``,
``updated_at``), and a ZSET of the flushers that merged lately (``{p}:flushers``: id →
Redis time). Each flusher adds what it learned since its last merge
(``pipeline.concurrency``) with one script, CONCURRENCY, twenty times a second at most,
and reads back the merged limit, where the API refused, how many flushers share it and
its rank among them, so each takes its share. Both keys expire an hour after the last
merge: the next flusher then starts from ``suprsend_flush_concurrency`` again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .. import defaults
from .keys import Keys, stored_number
from .scripts import CONCURRENCY, concurrency_call
from .slot import Slot

__all__ = ["ConcurrencyReading", "SharedLimit", "SharedReading"]


class SharedReading(NamedTuple):
    """The shared limit as one merge left it, and this flusher's place."""

    limit: float
    #: Flushers that merged lately, this one included (unless it is leaving).
    flushers: int
    #: This flusher's rank among them, by id (0-based): who takes the remainder.
    rank: int
    #: The limit the API last refused (the flushers grow past it slowly), if any.
    refused: float | None = None


@dataclass(frozen=True, slots=True)
class ConcurrencyReading:
    """The shared limit as ``status`` and the exporter show it (from its hash)."""

    limit: float
    flushers: int
    #: Redis time of the latest merge.
    updated_at: float

    @classmethod
    def of(cls, raw: dict[bytes, bytes]) -> ConcurrencyReading | None:
        """From ``HGETALL {p}:concurrency``; None when no flusher adapted lately."""
        limit = stored_number(raw.get(b"limit"), -1)
        if limit < 0:
            return None
        return cls(
            limit=limit,
            flushers=int(stored_number(raw.get(b"flushers"))),
            updated_at=stored_number(raw.get(b"updated_at")),
        )


class SharedLimit:
    """The shared limit of one buffer (shard 0): merge into it, in one round trip."""

    def __init__(self, slot: Slot, keys: Keys) -> None:
        self.slot = slot
        self.keys = keys
        self._merge = slot.script(CONCURRENCY.source)

    def merge(
        self,
        flusher: str,
        delta: float,
        *,
        refused: float | None = None,
        start: float,
        floor: float,
        ceiling: float,
        leaving: bool = False,
    ) -> SharedReading:
        """Add ``delta`` to the limit (``start`` when there is none), clamped to
        ``[floor, ceiling]``; note where the API refused (``refused``: 0 for nowhere any
        more, None for no news); note ``flusher`` as active, or gone when ``leaving``."""
        keys, args = concurrency_call(
            self.keys,
            flusher,
            delta,
            refused=refused,
            start=start,
            floor=floor,
            ceiling=ceiling,
            leaving=leaving,
            active_seconds=defaults.CONCURRENCY_ACTIVE_SECONDS,
            keep_seconds=defaults.CONCURRENCY_KEEP_SECONDS,
        )
        limit, flushers, rank, refused_at = self._merge(keys=keys, args=args)
        return SharedReading(
            float(limit), int(flushers), int(rank), float(refused_at) if refused_at else None
        )

    def read(self) -> ConcurrencyReading | None:
        """The limit now (None: no flusher adapted within the last hour)."""
        raw: dict[bytes, bytes] = self.slot.node().hgetall(self.keys.concurrency)
        return ConcurrencyReading.of(raw)
