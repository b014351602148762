"""``Buffer``: what the flusher, the producers, the direct path and the operations
code ask of the buffer, whether one shard (``RedisBuffer``) or several
(``ShardedBuffer``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from ..delivery.dead_letters import DeadLetter
from ..delivery.decisions import Settlement
from ..delivery.tally import Tally
from .concurrency_limit import SharedLimit
from .dead_letter_list import Requeued
from .journal import JournalHold
from .queue import Claim
from .scripts import Settled
from .snapshot import Snapshot
from .wake import DutyRoster, WakeList

__all__ = ["Buffer"]


class Buffer(Protocol):
    """The buffer's operations, each one round trip per shard it touches."""

    @property
    def redis(self) -> Any:
        """The client (``redis.Redis`` or ``redis.RedisCluster``)."""

    @property
    def prefix(self) -> str:
        """The key prefix (shard 0's hash tag)."""

    # -- producers -------------------------------------------------------------------

    def push(self, records: Sequence[bytes]) -> int:
        """Append records in one atomic step (``queue.Queue.push``): all or none."""

    # -- flushers --------------------------------------------------------------------

    def claim(
        self, count: int, lease: float, *, probe_lease: float = ..., fill: int = ...
    ) -> Claim:
        """Take up to ``count`` records under a lease, if the breaker lets us (none while
        fewer than ``fill`` wait: mode ``short``)."""

    def extend(self, claim_id: str, lease: float) -> bool:
        """Push a claim's deadline out; False if the lease already ran out."""

    def settle(self, claim_id: str, settlement: Settlement, counts: Tally | None = None) -> Settled:
        """Apply ``decide``'s settlement of a claim in one step (``queue.Queue.settle``)."""

    def finish_run(self, counts: Tally) -> int:
        """Note the end of a flush run (for ``check``); returns ``remaining()``."""

    def recover_journal(self, limit: int = ...) -> int:
        """Move direct-path records whose task went silent to pending; how many."""

    def wake_lists(self) -> list[WakeList]:
        """Each shard's wake list, which a run on duty blocks on (``wake``)."""

    def duty_roster(self) -> DutyRoster:
        """The runs on duty, under leases (``wake``)."""

    @property
    def concurrency_limit(self) -> SharedLimit:
        """The requests in flight every flusher of this buffer shares (on shard 0)."""

    # -- the direct path (``tasks.direct``) ------------------------------------------

    def journal(
        self,
        record: bytes,
        seconds: float,
        counts: Tally | None = None,
        expires_in: float | None = None,
    ) -> None:
        """Keep a published record until its task settles it (``journal``)."""

    def reschedule_journal(self, record: bytes, seconds: float) -> None:
        """Make a journal entry due in ``seconds``."""

    def hold_journal(self, record: bytes, seconds: float) -> JournalHold:
        """An attempt starts: push the entry's due time on (``journal.Journal.hold``)."""

    def settle_journal(self, record: bytes, counts: Tally | None = None) -> bool:
        """The task settled this record: drop its entry, count how it went (False: the
        flusher had taken it over, and counts it)."""

    def dead_letter(self, entry: bytes) -> None:
        """Keep a record that will not be delivered without help."""

    def rehome(self, record: bytes, entry: bytes) -> bool:
        """Move a record into pending (True), or dead-letter it when the buffer is full."""

    # -- operations ------------------------------------------------------------------

    def dead_letters(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Dead letters, newest first."""

    def requeue_dead_letters(self, idempotency_keys: Iterable[str] | None = None) -> Requeued:
        """Send dead letters again (all, or those with these keys), attempts reset."""

    def purge_dead_letters(self, idempotency_keys: Iterable[str] | None = None) -> int:
        """Drop dead letters (all, or those with these keys); returns how many."""

    def snapshot(self, *, due: bool = False) -> Snapshot:
        """Every figure, read in one pipeline per shard (``snapshot``)."""

    def stats(self) -> dict[str, Any]:
        """The ``buffer_stats()`` figures."""

    def breaker(self) -> dict[str, Any]:
        """The breaker's ``state``, ``failures``, ``reason`` and ``retry_in``."""

    def reset_breaker(self) -> None:
        """Close the breaker at once."""

    def pending_count(self) -> int:
        """Records waiting to be claimed."""

    def remaining(self) -> int:
        """Records not yet delivered nor dead: pending, in flight, scheduled for retry."""

    def memory_info(self) -> dict[str, Any]:
        """The Redis's ``maxmemory_policy``, ``maxmemory`` and ``used_memory``."""

    def clear(self) -> None:
        """Delete every key of the buffer (tests and tools)."""

    def close(self) -> None:
        """Close every connection the buffer opened: the client's pool (a Sentinel
        client's sentinels too) and the producers' own. Idempotent; the buffer stays
        usable (a later call connects again), like redis-py's client."""
