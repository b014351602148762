"""The direct path's journal: a published ``track_event`` record, kept until its task
settles it, and sent from the buffer if the task goes silent.

Celery's Redis transport pops a message (BRPOP) before it notes it as unacknowledged,
so a worker or Redis killed in between loses the message; and a worker killed holding
one (an OOM kill, a node lost) has it redelivered only after the broker's visibility
timeout, an hour by default. So an entry in ``{p}:journal`` is due at its task's next
attempt time plus a grace (``JOURNAL_GRACE``), not at the visibility timeout: publish
plus countdown, pushed on by the worker as an attempt starts (``hold``). A record still
there when due is moved to pending by the next flush run (``recover``), which leaves a
tombstone, its SHA1 in ``{p}:journal_taken``: the task, if a worker runs it after all,
finds the tombstone as it starts and reports the event as sent from the journal instead
of sending and counting it a second time (SuprSend would skip the repeat by its key in
any case). A task published with ``expires`` is noted in ``{p}:journal_expires`` too,
and dropped instead of sent once that has passed, as Celery would discard the message.
"""

from __future__ import annotations

import logging
from typing import Literal

from .. import defaults
from ..delivery.tally import Tally
from . import scripts as lua
from .keys import Keys
from .slot import Slot

__all__ = ["Journal", "JournalHold"]

logger = logging.getLogger(__name__)

JournalHold = Literal["held", "absent", "taken"]
"""What a worker found as it started an attempt (``Journal.hold``): its entry,
pushed on (``held``); no entry (``absent``: never journaled, or settled by an earlier
run); or a tombstone (``taken``: the flusher sent it from the journal)."""

_HOLD: dict[int, JournalHold] = {1: "held", 0: "absent", -1: "taken"}


class Journal:
    """One shard's journal of direct-path records."""

    def __init__(self, slot: Slot, keys: Keys) -> None:
        self.slot = slot
        self.keys = keys
        register = slot.client.register_script
        self._journal = register(lua.JOURNAL.source)
        self._settle = register(lua.SETTLE_JOURNAL.source)
        self._hold = register(lua.HOLD_JOURNAL.source)
        self._recover = register(lua.RECOVER_JOURNAL.source)

    def add(
        self,
        record: bytes,
        seconds: float,
        counts: Tally | None = None,
        expires_in: float | None = None,
    ) -> None:
        """Note a record being published, due ``seconds`` from now (on the producers'
        bounded connections: this runs in a view). ``counts`` are the metrics of the
        attempt this publish retries; ``expires_in`` the task's ``expires``, if any."""
        call = lua.journal_call(self.keys, record, seconds, counts, expires_in)
        self.slot.refuse_eviction()
        self.slot.producers.call(self._journal, call)

    def reschedule(self, record: bytes, seconds: float) -> None:
        """Make an entry due in ``seconds`` (a worker's connections, not a view's: its
        task could not publish a retry, so the flusher is to send it then)."""
        keys, args = lua.journal_call(self.keys, record, seconds)
        self._journal(keys=keys, args=args)

    def hold(self, record: bytes, seconds: float) -> JournalHold:
        """A worker starts an attempt at ``record``: push its entry's due time to at
        least ``seconds`` from now, or say that there is none or that the flusher took
        it over (see ``JournalHold``)."""
        keys, args = lua.hold_journal_call(self.keys, record, seconds)
        return _HOLD[int(self._hold(keys=keys, args=args))]

    def settle(self, record: bytes, counts: Tally | None = None) -> bool:
        """The task settled this record (sent, dead-lettered or moved to pending).

        False when the flusher had taken it over meanwhile: the buffer counts the event,
        so only the attempt's requests are counted from ``counts``, not its outcome.
        """
        keys, args = lua.settle_journal_call(self.keys, record, counts)
        return int(self._settle(keys=keys, args=args)) >= 0

    def recover(
        self,
        limit: int = defaults.JOURNAL_RECOVER_LIMIT,
        keep_seconds: float = defaults.JOURNAL_TAKEN_KEEP,
    ) -> int:
        """Move records whose task went silent to pending, each leaving a tombstone for
        ``keep_seconds``; returns how many. Those whose task expired meanwhile are
        dropped (and logged), not sent."""
        keys, args = lua.recover_journal_call(self.keys, limit, keep_seconds)
        moved, dropped = self._recover(keys=keys, args=args)
        if dropped:
            logger.warning(
                "%d direct-path record(s) expired (Celery expires) before any worker ran "
                "their task; dropped from the journal, not sent",
                dropped,
                extra={"records": int(dropped), "outcome": "expired"},
            )
        return int(moved)
