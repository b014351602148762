"""A buffer spread over ``suprsend_buffer_shards`` hash tags, so a Redis Cluster's
masters share its load; it behaves as one buffer.

Each shard is a complete ``RedisBuffer`` of its own hash tag: shard 0 is ``{prefix}``
(so a buffer that was never sharded is shard 0 as it stands), shard ``i`` is
``{prefix:i}``. ``ShardedBuffer`` holds them and routes each call (the ``Buffer``
protocol); every script still touches one slot. Around them:

- producers: each call goes to one shard, in a rotation (``buffer_events`` stays one
  atomic round trip); a full shard passes the call to the next;
- flushers: each claim consults the one breaker (on shard 0, ``GATE``), then
  takes records from the shards in a rotation that starts at a random shard; a
  settle's verdict is fed to that breaker; a run on duty waits on every shard's wake
  list, and the roster of runs on duty is shard 0's;
- the direct path's journal: a record's shard is a hash of its bytes (crc32), so the
  task settles the entry it made;
- ``{prefix}:shards`` (SET, on shard 0) lists every shard ever used, so a flusher with
  fewer shards configured still drains the others: changing the count strands nothing.

Tags hash to slots like any key; with the default prefix, shards 0, 1 and 2 land on
the three masters of a cluster made by ``redis-cli --cluster create`` (see docs/scaling.md).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

from .. import defaults
from ..delivery.dead_letters import DeadLetter, parse_dead_letter
from ..delivery.decisions import Settlement
from ..delivery.tally import Tally
from ..exceptions import BufferFullError
from .concurrency_limit import SharedLimit
from .connection import close_client
from .dead_letter_list import Requeued
from .journal import JournalHold
from .keys import registry_key, shard_prefix
from .queue import Claim, ClaimMode
from .redis_buffer import RedisBuffer
from .scripts import Settled
from .snapshot import Snapshot
from .wake import DutyRoster, WakeList

__all__ = ["ShardedBuffer", "registry_key", "shard_prefix", "shards_in_use"]


def shards_in_use(client: Any, prefix: str, shards: int) -> set[int]:
    """Note shards ``0..shards-1`` as used (when more than one) and return every shard
    ever used: the registry, read when a buffer is built."""
    key = registry_key(prefix)
    if shards > 1:
        client.sadd(key, *range(shards))
    return {int(i) for i in client.smembers(key)} | {0}


class ShardedBuffer:
    """Several ``RedisBuffer`` shards behind the ``Buffer`` protocol (see the module
    docstring); ``shards[0]`` holds the breaker, the registry and the run's end."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = defaults.KEY_PREFIX,
        shards: int,
        used: Iterable[int] = (),
        max_length: int = defaults.BUFFER_MAX_LENGTH,
        **options: Any,
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.shard_count = shards
        self.max_length = max_length
        self._options = dict(options, max_length=-(-max_length // shards))
        self.shards: dict[int, RedisBuffer] = {}
        self._registry = registry_key(prefix)
        self._refreshed = time.monotonic()
        self._add_shards(set(range(shards)) | set(used) | {0})
        # Producers and flushers start at a random shard, so many processes spread out.
        self._producer_turn = itertools.count(random.randrange(shards))
        self._flusher_turn = random.randrange(len(self.shards))

    def _add_shards(self, indices: Iterable[int]) -> None:
        for index in sorted(indices):
            if index not in self.shards:
                self.shards[index] = RedisBuffer(
                    self.redis, prefix=shard_prefix(self.prefix, index), **self._options
                )

    def _refresh(self) -> None:
        """Pick up shards another process added, every ``SHARD_REGISTRY_REFRESH`` seconds."""
        if time.monotonic() - self._refreshed < defaults.SHARD_REGISTRY_REFRESH:
            return
        self._refreshed = time.monotonic()
        self._add_shards(int(i) for i in self.redis.smembers(self._registry))

    @property
    def _first(self) -> RedisBuffer:
        """Shard 0: the breaker, the registry and the end of each run live there."""
        return self.shards[0]

    def _producer_order(self) -> list[RedisBuffer]:
        first = next(self._producer_turn)
        return [self.shards[(first + j) % self.shard_count] for j in range(self.shard_count)]

    def _locate(self, claim_id: str) -> tuple[RedisBuffer, str]:
        index, _, inner = claim_id.partition(":")
        return self.shards[int(index)], inner

    def _of_record(self, record: bytes) -> RedisBuffer:
        return self.shards[zlib.crc32(record) % self.shard_count]

    # -- producers -------------------------------------------------------------------

    def push(self, records: Sequence[bytes]) -> int:
        """All records to one shard in one atomic step; the next shard when it is full."""
        if not records:
            return 0
        for shard in self._producer_order():
            try:
                return shard.push(records)
            except BufferFullError:
                continue
        raise BufferFullError(
            f"the buffer holds suprsend_buffer_max_length={self.max_length} records over "
            f"{self.shard_count} shards; {len(records)} event(s) were not accepted "
            "(is flush_buffer running?)"
        )

    # -- flushers --------------------------------------------------------------------

    def claim(
        self,
        count: int,
        lease: float,
        *,
        probe_lease: float = defaults.PROBE_LEASE,
        fill: int = 0,
    ) -> Claim:
        """Pass the breaker, then claim from the first shard in the rotation that has records
        (at least ``fill`` of them; with none anywhere, ``due_in`` is the soonest shard's)."""
        self._refresh()
        breaker = self._first.circuit_breaker
        mode, wait = breaker.gate("enter", probe_lease)
        if mode == "open":
            return Claim("", "open", wait, [])
        if mode == "probe":
            count = min(count, defaults.PROBE_RECORDS)
        shown: ClaimMode = "probe" if mode == "probe" else "ok"
        indices = sorted(self.shards)
        short, due = False, None
        for step in range(len(indices)):
            position = (self._flusher_turn + step) % len(indices)
            index = indices[position]
            claim = self.shards[index].claim(count, lease, use_breaker=False, fill=fill)
            if claim.items:
                self._flusher_turn = position + 1
                return Claim(f"{index}:{claim.id}", shown, 0.0, claim.items)
            short = short or claim.mode == "short"
            if claim.due_in is not None:
                due = claim.due_in if due is None else min(due, claim.due_in)
        if shown == "probe":
            breaker.gate("empty", probe_lease)
        return Claim("", "short" if short else shown, 0.0, [], due)

    def extend(self, claim_id: str, lease: float) -> bool:
        shard, inner = self._locate(claim_id)
        return shard.extend(inner, lease)

    def settle(self, claim_id: str, settlement: Settlement, counts: Tally | None = None) -> Settled:
        """Settle on the claim's shard; its verdict feeds the breaker on shard 0.

        On shard 0 that is one step, as unsharded. Elsewhere it is a second, feed-only
        SETTLE on shard 0 (a claim id never used: no records, only the breaker).
        """
        shard, inner = self._locate(claim_id)
        if shard is self._first or not settlement.verdict:
            return shard.settle(inner, settlement, counts)
        records_only = dataclasses.replace(settlement, verdict="", open_for=0.0, reason="")
        settled = shard.settle(inner, records_only, counts)
        verdict = Settlement(
            verdict=settlement.verdict, open_for=settlement.open_for, reason=settlement.reason
        )
        fed = self._first.settle(uuid.uuid4().hex, verdict)
        return Settled(settled.settled, fed.change)

    def finish_run(self, counts: Tally) -> int:
        """Note the run on shard 0 (where ``check`` looks); ``remaining()`` of them all."""
        others = sum(shard.remaining() for index, shard in self.shards.items() if index)
        return self._first.finish_run(counts) + others

    def recover_journal(self, limit: int = defaults.JOURNAL_RECOVER_LIMIT) -> int:
        return sum(shard.recover_journal(limit) for shard in self.shards.values())

    # -- the direct path -------------------------------------------------------------

    def journal(
        self,
        record: bytes,
        seconds: float,
        counts: Tally | None = None,
        expires_in: float | None = None,
    ) -> None:
        self._of_record(record).journal(record, seconds, counts, expires_in)

    def reschedule_journal(self, record: bytes, seconds: float) -> None:
        self._of_record(record).reschedule_journal(record, seconds)

    def hold_journal(self, record: bytes, seconds: float) -> JournalHold:
        return self._of_record(record).hold_journal(record, seconds)

    def settle_journal(self, record: bytes, counts: Tally | None = None) -> bool:
        return self._of_record(record).settle_journal(record, counts)

    def dead_letter(self, entry: bytes) -> None:
        self._producer_order()[0].dead_letter(entry)

    def rehome(self, record: bytes, entry: bytes) -> bool:
        return self._producer_order()[0].rehome(record, entry)

    # -- operations ------------------------------------------------------------------

    def dead_letters(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Every shard's dead letters merged newest first (by ``failed_at``)."""
        end = offset + max(limit, 1) - 1
        letters = [
            parse_dead_letter(raw)
            for shard in self.shards.values()
            for raw in shard.dead_letter_list.raw(0, end)
        ]
        letters.sort(key=lambda letter: letter.failed_at, reverse=True)
        return letters[offset : end + 1]

    def requeue_dead_letters(self, idempotency_keys: Iterable[str] | None = None) -> Requeued:
        wanted = None if idempotency_keys is None else list(idempotency_keys)
        return sum(
            (shard.requeue_dead_letters(wanted) for shard in self.shards.values()), Requeued(0, 0)
        )

    def purge_dead_letters(self, idempotency_keys: Iterable[str] | None = None) -> int:
        wanted = None if idempotency_keys is None else list(idempotency_keys)
        return sum(shard.purge_dead_letters(wanted) for shard in self.shards.values())

    def snapshot(self, *, due: bool = False) -> Snapshot:
        """The shards' figures added up; the oldest record's age, shard 0's breaker."""
        self._refresh()
        return Snapshot.combine([self.shards[i].snapshot(due=due) for i in sorted(self.shards)])

    def stats(self) -> dict[str, Any]:
        return self.snapshot().stats()

    def breaker(self) -> dict[str, Any]:
        return self._first.breaker()

    @property
    def concurrency_limit(self) -> SharedLimit:
        """The one shared limit, on shard 0 (beside the breaker)."""
        return self._first.concurrency_limit

    def reset_breaker(self) -> None:
        self._first.reset_breaker()

    def wake_lists(self) -> list[WakeList]:
        """Every shard's wake list (a run on duty waits on them all)."""
        self._refresh()
        return [self.shards[i].wake for i in sorted(self.shards)]

    def duty_roster(self) -> DutyRoster:
        return self._first.roster

    def pending_count(self) -> int:
        return sum(shard.pending_count() for shard in self.shards.values())

    def remaining(self) -> int:
        return sum(shard.remaining() for shard in self.shards.values())

    def memory_info(self) -> dict[str, Any]:
        return self._first.memory_info()

    def close(self) -> None:
        """Close every shard's producer connections, then the client they share."""
        for shard in self.shards.values():
            shard.slot.close()
        close_client(self.redis)

    def clear(self) -> None:
        for shard in self.shards.values():
            shard.clear()
        self.redis.delete(self._registry)
