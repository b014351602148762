"""The direct path's safety net in the buffer's journal: note, settle, reschedule.

Celery's Redis transport pops a message (BRPOP) before it notes it as unacknowledged,
so a worker or Redis killed in between loses the message; and a worker killed while it
holds one (an OOM kill, a node lost, a deploy past its grace period) has it redelivered
only after the broker's visibility timeout (an hour by default). Each published
``track_event`` record is therefore noted in the buffer's journal (``buffer.journal``)
until a worker settles it, due at the task's next attempt time plus
``suprsend_journal_grace`` (a minute): publish plus countdown, and again as each attempt
starts (``hold``: its longest request plus the grace). An entry still there when due is
sent by the flusher instead; SuprSend skips the repeat by its idempotency key if the
task did run, and a task that runs after the flusher took its event over finds the
tombstone the flusher left (``hold`` answers ``taken``) and reports the event as sent
from the journal, neither sending nor counting it again. Without
``suprsend_redis_url`` there is no journal: the broker's own guarantee remains.

An entry is released only once its event is delivered, dead-lettered, kept in the
buffer, or discarded by Celery (revoked, expired); or when its publish certainly
failed (the broker never got a byte), so nothing was accepted. A publish that may have
reached the broker keeps its entry: the event is then sent either way
(``PublishError.accepted`` is True). No Celery here: the task hands in how it publishes.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from kombu.exceptions import OperationalError

from ..buffer.journal import JournalHold
from ..defaults import CONNECT_TIMEOUT
from ..delivery.tally import Tally
from ..exceptions import BufferUnavailableError, PublishError
from ..pipeline.runtime import find_buffer
from ..pipeline.settings import get_settings
from .redaction import delay_of, expires_in, meta_of

__all__ = ["DirectJournal", "never_sent"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class DirectJournal:
    """One app's direct-path journal entries (its buffer's journal, if it has one)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        #: None without ``suprsend_redis_url``: then every step here is a no-op.
        self.buffer = find_buffer(app)

    def publish(
        self,
        record: str,
        options: dict[str, Any],
        publish: Callable[[], _T],
        *,
        retry: Tally | None = None,
        task_id: str | None = None,
    ) -> _T:
        """Note ``record`` in the journal, then ``publish()`` it; returns what that returned.

        A call that cannot journal or publish raises ``PublishError``, whose ``accepted``
        says what it left behind (``_unpublished``): nothing, when ``False``. ``retry``
        is given when this publish is the retry of running task ``task_id``: the tally
        of its attempt is counted with the entry, and the entry belongs to the running
        message, so a failed publish keeps it (Celery then drops that message: see
        ``retry_not_published``) and a journal Redis that fails only loses this refresh
        of an entry that is already there.
        """
        data = record.encode("utf-8")
        key = meta_of(record)["idempotency_key"]
        if self.buffer is not None:
            seconds = get_settings(self.app).journal_grace + delay_of(options)
            try:
                self.buffer.journal(data, seconds, retry, expires_in(options))
            except BufferUnavailableError as exc:
                if retry is None:  # not published: stored only if the entry may be
                    why = exc.__cause__ or exc  # its own message ends in the same verdict
                    raise PublishError.for_event(
                        key, "could not be journaled", why, accepted=exc.accepted
                    ) from exc
                logger.warning(
                    "event %s (task %s): retry not journaled again (%s)",
                    key,
                    task_id,
                    exc,
                    extra={"idempotency_key": key, "task_id": task_id, "outcome": "retry"},
                )
        try:
            return publish()
        except BaseException as exc:
            if retry is not None:
                raise  # Task.retry turns this into Reject; the journal entry stays
            accepted = self._unpublished(data, exc)
            if isinstance(exc, Exception):
                raise PublishError.for_event(
                    key, "could not be published", exc, accepted=accepted
                ) from exc
            raise

    def _unpublished(self, data: bytes, exc: BaseException) -> bool | None:
        """A first publish failed: release the journal entry only when the message
        certainly never reached the broker (``never_sent``); returns what the caller is
        told (``PublishError.accepted``).

        When the broker may have the message (a timeout or a lost connection after the
        write), the entry stays: the task settles it if the message arrives, else the
        flusher sends the event when it is due. Either way it is sent: ``True``. Without
        a journal that is unknown: ``None``. A certain failure is ``False``, unless the
        entry could not be released (it may then still be sent from it: ``None``).
        """
        certain = isinstance(exc, Exception) and never_sent(exc)
        if self.buffer is None:
            return False if certain else None
        if not certain:
            return True
        try:
            self.buffer.settle_journal(data)
        except redis.RedisError:
            return None
        return False

    def hold(self, record: str, *, task_id: str | None) -> JournalHold:
        """An attempt at ``record`` starts: keep its entry from coming due while the
        attempt may still be sending (its longest request plus the grace).

        ``taken``: the flusher already sent the event from the journal, so the attempt
        must not send it. A Redis that fails answers ``absent`` (send: a repeat is
        skipped by key, while not sending could lose the event).
        """
        if self.buffer is None:
            return "absent"
        settings = get_settings(self.app)
        seconds = settings.request_timeout + CONNECT_TIMEOUT + settings.journal_grace
        try:
            return self.buffer.hold_journal(record.encode("utf-8"), seconds)
        except redis.RedisError as exc:
            key = meta_of(record)["idempotency_key"]
            logger.warning(
                "event %s (task %s): journal entry not held (%s); sending anyway",
                key,
                task_id,
                exc,
                extra={"idempotency_key": key, "task_id": task_id},
            )
            return "absent"

    def settle(self, record: str, tally: Tally | None = None) -> bool:
        """The event was delivered, dead-lettered or kept: drop its entry, count ``tally``.

        False when the flusher had taken the event over meanwhile (the attempt outlived
        its grace): it is then counted there, and only the attempt's requests here.
        """
        if self.buffer is None:
            return True
        try:
            return self.buffer.settle_journal(record.encode("utf-8"), tally)
        except redis.RedisError as exc:  # the flusher will re-send it: a duplicate, skipped
            key = meta_of(record)["idempotency_key"]
            logger.warning(
                "journal entry of event %s not settled (%s)",
                key,
                exc,
                extra={"idempotency_key": key, "outcome": "unsettled"},
            )
            return True

    def retry_not_published(
        self, record: str, countdown: float, *, task_id: str | None, why: object
    ) -> str:
        """A running task's retry could not be published: keep its record for the flusher;
        returns where the event is now, for the task's error.

        Celery acknowledges the running message away (the run fails), so the
        journal entry is all that is left of the event: it is made due when the retry
        was and never settled here (the flusher sends it, or the entry's earlier
        deadline stands when Redis refuses even that).
        """
        where = "it is lost (no suprsend_redis_url to keep it)"
        if self.buffer is not None:
            try:
                self.buffer.reschedule_journal(record.encode("utf-8"), countdown)
                where = f"the flusher sends it from the journal in {countdown:.1f}s"
            except redis.RedisError:
                where = "the flusher sends it from the journal when its entry is due"
        key = meta_of(record)["idempotency_key"]
        logger.error(
            "event %s (task %s): the retry could not be published (%s); %s",
            key,
            task_id,
            why,
            where,
            extra={"idempotency_key": key, "task_id": task_id, "outcome": "not_published"},
        )
        return where

    def discarded(self, record: str, *, task_id: str | None, expired: bool) -> None:
        """Celery discarded the task (revoked, or expired when a worker took it): it is
        not to be sent later from the journal either. (An expired message no worker
        took is dropped by ``recover_journal`` when its entry comes due.)"""
        key = meta_of(record)["idempotency_key"]
        outcome = "expired" if expired else "revoked"
        logger.warning(
            "event %s (task %s) %s: not sent",
            key,
            task_id,
            outcome,
            extra={"idempotency_key": key, "task_id": task_id, "outcome": outcome},
        )
        self.settle(record)


#: Functions an error raised inside was raised while connecting: redis-py's, kombu's
#: and py-amqp's connection set-up. Nothing of the message can have been written yet.
_CONNECTING = frozenset(
    {
        "connect",
        "_connect",
        "connect_check_health",
        "on_connect",
        "on_connect_check_health",
        "_ensure_connection",
        "ensure_connection",
        "establish_connection",
        "create_connection",
    }
)


#: The errors of a connection: each must have been raised while connecting. py-amqp's
#: own (``AMQPError``) are told by their module: amqp is kombu's dependency, not ours.
_CONNECTION_ERRORS = (OSError, redis.RedisError, OperationalError)


def never_sent(exc: BaseException) -> bool:
    """Whether a publish failure certainly happened before any of the message was
    written: every connection error in its chain (``__cause__``/``__context__``) was
    raised while connecting, or is a refused connection or an unknown host. A failure
    while writing or reading (a timeout, a reset) may have left the message with the
    broker, and so may one with no connection error at all (a ``after_task_publish``
    receiver that raised, say): those are not certain."""
    found = False
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, (ConnectionRefusedError, socket.gaierror)):
            found = True
        elif isinstance(link, _CONNECTION_ERRORS) or type(link).__module__.startswith("amqp"):
            if not _raised_connecting(link):
                return False
            found = True
        link = link.__cause__ or link.__context__
    return found


def _raised_connecting(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in _CONNECTING:
            return True
        tb = tb.tb_next
    return False
