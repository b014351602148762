"""Dead letters in Redis: ``{p}:dead``, newest first, in ``delivery.dead_letters``'s format.

None is ever trimmed: dead letters count toward ``suprsend_buffer_max_length``
instead (see ``queue.Queue.push``), so producers get ``BufferFullError`` before a
dead letter could be lost, and ``requeue`` or ``purge`` make room again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from ..delivery.dead_letters import DeadLetter, parse_dead_letter
from . import scripts as lua
from .keys import Keys
from .slot import Slot

__all__ = ["DeadLetterList", "Requeued"]


class Requeued(NamedTuple):
    """What a requeue did: entries moved back to pending, and entries kept as dead
    letters because their record part is not a record (nothing is dropped)."""

    moved: int
    kept: int

    def __add__(self, other: object) -> Requeued:  # type: ignore[override,unused-ignore]
        if not isinstance(other, Requeued):
            return NotImplemented
        return Requeued(self.moved + other.moved, self.kept + other.kept)


class DeadLetterList:
    """One shard's dead letters: add, rehome, read, requeue, purge."""

    def __init__(self, slot: Slot, keys: Keys, max_length: int) -> None:
        self.slot = slot
        self.keys = keys
        self.max_length = max_length
        self._rehome = slot.client.register_script(lua.REHOME.source)
        self._requeue = slot.client.register_script(lua.REQUEUE.source)

    def add(self, entry: bytes) -> None:
        """Keep a record that will not be delivered without help."""
        self.slot.node().lpush(self.keys.dead, entry)

    def rehome(self, record: bytes, entry: bytes) -> bool:
        """Move a record into pending (True), or dead-letter it when the buffer is full."""
        keys, args = lua.rehome_call(self.keys, self.max_length, record, entry)
        return int(self._rehome(keys=keys, args=args)) == 1

    def raw(self, start: int = 0, end: int = -1) -> list[bytes]:
        """Stored entries ``start..end`` (inclusive), newest first."""
        raw: list[bytes] = self.slot.client.lrange(self.keys.dead, start, end)  # type: ignore[assignment]
        return raw

    def read(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Dead letters, newest first."""
        return [parse_dead_letter(r) for r in self.raw(offset, offset + max(limit, 1) - 1)]

    def _selected(self, wanted: set[str]) -> list[bytes]:
        return [r for r in self.raw() if (parse_dead_letter(r).idempotency_key or "") in wanted]

    def requeue(self, idempotency_keys: Iterable[str] | None = None) -> Requeued:
        """Send dead letters again (all, or those with these keys), attempts reset.

        An entry whose record part is not a record stays a dead letter (``kept``)."""
        if idempotency_keys is None:
            keys, args = lua.requeue_call(self.keys, None)
        else:
            wanted = set(idempotency_keys)
            entries = self._selected(wanted) if wanted else []
            if not entries:
                return Requeued(0, 0)
            keys, args = lua.requeue_call(self.keys, entries)
        moved, kept = self._requeue(keys=keys, args=args)
        return Requeued(int(moved), int(kept))

    def purge(self, idempotency_keys: Iterable[str] | None = None) -> int:
        """Drop dead letters (all, or those with these keys); returns how many."""
        if idempotency_keys is None:
            pipe = self.slot.node().pipeline()
            pipe.llen(self.keys.dead)
            pipe.delete(self.keys.dead)
            count, _ = pipe.execute()
            return int(count)
        removed = 0
        for raw in self._selected(set(idempotency_keys)):
            removed += int(self.slot.client.lrem(self.keys.dead, 1, raw))  # type: ignore[arg-type]
        return removed
