"""The direct path's journal: a published ``track_event`` record, kept until its task
settles it, and sent from the buffer if the task goes silent.

Celery's Redis transport pops a message (BRPOP) before it notes it as unacknowledged,
so a worker or Redis killed in between loses the message. A record still in
``{p}:journal`` after the broker's visibility timeout (plus any countdown) is moved to
pending by the next flush run (``recover``); if the task did run after all, SuprSend
skips the repeat by its idempotency key. A task published with ``expires`` is noted in
``{p}:journal_expires`` too, and dropped instead of sent once that has passed, as
Celery would discard the message.
"""

from __future__ import annotations

import logging

from .. import defaults
from ..delivery.tally import Tally
from . import scripts as lua
from .keys import Keys
from .slot import Slot

__all__ = ["DirectJournal"]

logger = logging.getLogger(__name__)


class DirectJournal:
    """One shard's journal of direct-path records."""

    def __init__(self, slot: Slot, keys: Keys) -> None:
        self.slot = slot
        self.keys = keys
        register = slot.client.register_script
        self._journal = register(lua.JOURNAL.source)
        self._settle = register(lua.SETTLE_JOURNAL.source)
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

    def settle(self, record: bytes, counts: Tally | None = None) -> None:
        """The task settled this record (sent, dead-lettered or moved to pending)."""
        keys, args = lua.settle_journal_call(self.keys, record, counts)
        self._settle(keys=keys, args=args)

    def recover(self, limit: int = defaults.JOURNAL_RECOVER_LIMIT) -> int:
        """Move records whose task went silent to pending; returns how many. Those whose
        task expired meanwhile are dropped (and logged), not sent."""
        keys, args = lua.recover_journal_call(self.keys, limit)
        moved, dropped = self._recover(keys=keys, args=args)
        if dropped:
            logger.warning(
                "%d direct-path record(s) expired (Celery expires) before any worker ran "
                "their task; dropped from the journal, not sent",
                dropped,
                extra={"records": int(dropped), "outcome": "expired"},
            )
        return int(moved)
