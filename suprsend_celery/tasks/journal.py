"""The direct path's safety net in the buffer's journal: note, settle, reschedule.

Celery's Redis transport pops a message (BRPOP) before it notes it as unacknowledged,
so a worker or Redis killed in between loses the message. Each published
``track_event`` record is therefore noted in the buffer's journal
(``RedisBuffer.journal``) until a worker settles it; an entry still there once the
broker's visibility timeout (plus any countdown) has passed is sent by the flusher
instead, and SuprSend skips the repeat by its idempotency key if the task did run.
Without ``suprsend_redis_url`` there is no journal: the broker's own guarantee remains.

An entry is released only once its event is delivered, dead-lettered, kept in the
buffer, or discarded by Celery (revoked, expired); or when its publish failed, so
nothing was accepted. No Celery here: the task hands in how it publishes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from ..delivery.tally import Tally
from ..exceptions import BufferUnavailableError, PublishError
from ..pipeline.runtime import find_buffer
from ..pipeline.settings import get_settings
from .redaction import delay_of, expires_in, meta_of

__all__ = ["DirectJournal"]

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

        A call that cannot journal or publish raises ``PublishError`` and leaves nothing
        behind. ``retry`` is given when this publish is the retry of running task
        ``task_id``: the tally of its attempt is counted with the entry, and the entry
        belongs to the running message, so a failed publish keeps it (Celery then drops
        that message: see ``retry_not_published``) and a journal Redis that fails only
        loses this refresh of an entry that is already there.
        """
        data = record.encode("utf-8")
        key = meta_of(record)["idempotency_key"]
        if self.buffer is not None:
            seconds = get_settings(self.app).visibility_timeout + delay_of(options)
            try:
                self.buffer.journal(data, seconds, retry, expires_in(options))
            except BufferUnavailableError as exc:
                if retry is None:
                    raise PublishError.for_event(key, "could not be journaled", exc) from exc
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
                raise  # Celery turns this into Reject; the journal entry stays
            if self.buffer is not None:  # nothing was published: nothing to keep
                with contextlib.suppress(redis.RedisError):
                    self.buffer.settle_journal(data)
            if isinstance(exc, Exception):
                raise PublishError.for_event(key, "could not be published", exc) from exc
            raise

    def settle(self, record: str, tally: Tally | None = None) -> None:
        """The event was delivered, dead-lettered or kept: drop its entry, count ``tally``."""
        if self.buffer is None:
            return
        try:
            self.buffer.settle_journal(record.encode("utf-8"), tally)
        except redis.RedisError as exc:  # the flusher will re-send it: a duplicate, skipped
            key = meta_of(record)["idempotency_key"]
            logger.warning(
                "journal entry of event %s not settled (%s)",
                key,
                exc,
                extra={"idempotency_key": key, "outcome": "unsettled"},
            )

    def retry_not_published(
        self, record: str, countdown: float, *, task_id: str | None, why: object
    ) -> None:
        """A running task's retry could not be published: keep its record for the flusher.

        Celery acknowledges the running message away (``Reject(requeue=False)``), so the
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
