"""The buffer of one hash tag (one shard): its parts, composed.

No HTTP here (the flusher sends). Each part has one job and one round trip per
operation (a Lua script or a pipeline), so a crash between two steps cannot lose or
double a record: the queue and its claims (``queue``), the direct path's journal
(``journal``), dead letters (``dead_letter_list``), the breaker (``breaker``), the
wake list and the roster of runs on duty (``wake``), the shared concurrency limit
(``concurrency_limit``) and the figures (``snapshot``), all over this shard's ``Keys``
(``keys``) and connections (``slot``). The methods below are the ``Buffer`` protocol
(``protocol``), each handed to the part that does it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis

from .. import defaults
from ..delivery.dead_letters import DeadLetter
from ..delivery.decisions import Settlement
from ..delivery.tally import Tally
from .breaker import CircuitBreaker
from .concurrency_limit import SharedLimit
from .connection import close_client
from .dead_letter_list import DeadLetterList, Requeued
from .journal import Journal, JournalHold
from .keys import Keys
from .queue import Claim, Queue
from .scripts import Breaker, Settled
from .slot import Slot
from .snapshot import Snapshot, read_snapshot
from .wake import DutyRoster, WakeList

__all__ = ["RedisBuffer"]


class RedisBuffer:
    """One shard's buffer: ``Keys``, a ``Slot`` and the parts that work on them."""

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        *,
        prefix: str = defaults.KEY_PREFIX,
        max_length: int = defaults.BUFFER_MAX_LENGTH,
        breaker_threshold: int = defaults.BREAKER_THRESHOLD,
        breaker_cooldown: float = defaults.BREAKER_COOLDOWN,
        breaker_cooldown_max: float = defaults.BREAKER_COOLDOWN_MAX,
        accept_timeout: float = defaults.ACCEPT_TIMEOUT,
        min_replicas: int = defaults.BUFFER_MIN_REPLICAS,
        policy_recheck: float = defaults.POLICY_RECHECK_SECONDS,
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.max_length = max_length
        self.accept_timeout = accept_timeout
        self.min_replicas = min_replicas
        self.keys = Keys.of(prefix)
        self.slot = Slot(
            client, self.keys, accept_timeout=accept_timeout, policy_recheck=policy_recheck
        )
        breaker = Breaker(breaker_threshold, breaker_cooldown, breaker_cooldown_max)
        self.queue = Queue(
            self.slot, self.keys, max_length=max_length, min_replicas=min_replicas, breaker=breaker
        )
        self.direct_journal = Journal(self.slot, self.keys)
        self.dead_letter_list = DeadLetterList(self.slot, self.keys, max_length)
        self.circuit_breaker = CircuitBreaker(self.slot, self.keys)
        self.wake = WakeList(self.slot, self.keys)
        self.roster = DutyRoster(self.slot, self.keys)
        #: The requests in flight every flusher of this buffer shares (shard 0's counts).
        self.concurrency_limit = SharedLimit(self.slot, self.keys)

    # -- producers and flushers (``queue``) ----------------------------------------------

    def push(self, records: Sequence[bytes]) -> int:
        return self.queue.push(records)

    def claim(
        self,
        count: int,
        lease: float,
        *,
        probe_lease: float = defaults.PROBE_LEASE,
        use_breaker: bool = True,
        fill: int = 0,
    ) -> Claim:
        return self.queue.claim(
            count, lease, probe_lease=probe_lease, use_breaker=use_breaker, fill=fill
        )

    def extend(self, claim_id: str, lease: float) -> bool:
        return self.queue.extend(claim_id, lease)

    def settle(self, claim_id: str, settlement: Settlement, counts: Tally | None = None) -> Settled:
        return self.queue.settle(claim_id, settlement, counts)

    def finish_run(self, counts: Tally) -> int:
        return self.queue.finish_run(counts)

    def wake_lists(self) -> list[WakeList]:
        return [self.wake]

    def duty_roster(self) -> DutyRoster:
        return self.roster

    def pending_count(self) -> int:
        return self.queue.pending_count()

    def remaining(self) -> int:
        return self.queue.remaining()

    # -- the direct path (``journal``, ``dead_letter_list``) -------------------------------

    def journal(
        self,
        record: bytes,
        seconds: float,
        counts: Tally | None = None,
        expires_in: float | None = None,
    ) -> None:
        self.direct_journal.add(record, seconds, counts, expires_in)

    def reschedule_journal(self, record: bytes, seconds: float) -> None:
        self.direct_journal.reschedule(record, seconds)

    def hold_journal(self, record: bytes, seconds: float) -> JournalHold:
        return self.direct_journal.hold(record, seconds)

    def settle_journal(self, record: bytes, counts: Tally | None = None) -> bool:
        return self.direct_journal.settle(record, counts)

    def recover_journal(self, limit: int = defaults.JOURNAL_RECOVER_LIMIT) -> int:
        return self.direct_journal.recover(limit)

    def dead_letter(self, entry: bytes) -> None:
        self.dead_letter_list.add(entry)

    def rehome(self, record: bytes, entry: bytes) -> bool:
        return self.dead_letter_list.rehome(record, entry)

    # -- dead letters (``dead_letter_list``) ---------------------------------------------

    def dead_letters(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        return self.dead_letter_list.read(limit, offset)

    def requeue_dead_letters(self, idempotency_keys: Iterable[str] | None = None) -> Requeued:
        return self.dead_letter_list.requeue(idempotency_keys)

    def purge_dead_letters(self, idempotency_keys: Iterable[str] | None = None) -> int:
        return self.dead_letter_list.purge(idempotency_keys)

    # -- the breaker and the figures -----------------------------------------------------

    def breaker(self) -> dict[str, Any]:
        return self.circuit_breaker.read().as_dict()

    def reset_breaker(self) -> None:
        self.circuit_breaker.reset()

    def snapshot(self, *, due: bool = False) -> Snapshot:
        return read_snapshot(self.slot, self.keys, due=due)

    def stats(self) -> dict[str, Any]:
        return self.snapshot().stats()

    def memory_info(self) -> dict[str, Any]:
        return self.slot.memory_info()

    def close(self) -> None:
        """Close the producers' own connections, then the client (its pool; behind
        Sentinel the sentinels' too). Still usable after: a later call connects again."""
        self.slot.close()
        close_client(self.redis)

    def clear(self) -> None:
        """Delete every key of this shard (tests and tools)."""
        client, keys = self.redis, self.keys
        found = list(client.scan_iter(match=keys.claim_prefix + "*", count=1000))
        found += client.scan_iter(match=keys.settled_prefix + "*", count=1000)
        client.delete(*found, *keys.fixed())
