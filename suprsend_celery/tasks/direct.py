"""``track_event``: the direct path's Celery task.

The retry policy and the dead-letter format are in ``policy``, the beat schedule in
``beat``; every use of Celery's Task API is in the two Task classes here.

``track_event.delay(...)`` validates and serialises the event in the caller's process
(so bad input raises there and nothing is published) and publishes the finished
record; the worker only sends bytes. Flower and result backends see the event name,
distinct_id and idempotency key, never properties or secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, NoReturn

import redis
from celery import Task, shared_task
from celery.exceptions import Reject
from celery.signals import task_revoked

from ..defaults import TRACK_TASK
from ..delivery.dead_letters import direct_dead_letter
from ..delivery.retry import backoff_delay, failure_reason, past_dedup_window, should_retry
from ..delivery.tally import DIRECT_TALLY, PAST_WINDOW, Tally, count_direct
from ..events.model import Event
from ..exceptions import (
    BufferUnavailableError,
    ConfigurationError,
    DeliveryError,
    PermanentDeliveryError,
    PublishError,
    TransientDeliveryError,
)
from ..pipeline.hooks import Dropped, dropped_result
from ..pipeline.producers import accept_call
from ..pipeline.runtime import find_buffer, get_client
from ..pipeline.settings import get_settings, resolve_app
from ..pipeline.signals import send_dead_lettered
from .redaction import (
    RECORD,
    RedactedRequest,
    delay_of,
    expires_in,
    is_prepared,
    meta_of,
    redacted,
    warn_if_no_broker,
)

__all__ = ["TRACK_TASK", "TrackEventTask", "atrack_event", "track_event"]

logger = logging.getLogger(__name__)

_RECORD = RECORD


class TrackEventTask(Task):  # type: ignore[misc]
    """Sends one accepted event; the record is fixed before it is published."""

    #: Acknowledge only after the send, and requeue if the worker dies mid-send.
    acks_late = True
    reject_on_worker_lost = True
    #: Retries are counted and bounded by ``suprsend_max_retries`` in ``run``, so
    #: Celery never raises MaxRetriesExceededError (whose message shows raw arguments).
    max_retries = None
    #: The task takes the prepared record, not the call's arguments.
    typing = False
    #: The worker's request class: shows the event, never the record (``redaction``).
    Request = RedactedRequest

    def _prepare(self, args: Any, kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | Dropped:
        """``(message kwargs, options)`` for a call: validates and fixes the record."""
        if is_prepared(args, kwargs):
            meta = meta_of(kwargs[_RECORD])
            return kwargs, {"argsrepr": "()", "kwargsrepr": repr(meta)}
        record = accept_call(self.app, tuple(args or ()), dict(kwargs or {}))
        if isinstance(record, Dropped):  # by suprsend_before_send
            return record
        meta = redacted(record)
        return {_RECORD: record.payload.decode("utf-8")}, {
            "argsrepr": "()",
            "kwargsrepr": repr(meta),
        }

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: Any = None, *rest: Any, **options: Any
    ) -> Any:
        """Validate and serialise in the caller, then publish only the finished record.

        Returns the ``AsyncResult`` with the event's ``idempotency_key`` attached. Raises
        ``InvalidEventError`` for bad input and ``PublishError`` when the record could
        not be journaled or published within ``suprsend_accept_timeout``.
        """
        warn_if_no_broker(self.app)
        if isinstance(prepared := self._prepare(args, kwargs), Dropped):
            return dropped_result(prepared)
        message_kwargs, redaction = prepared
        options.update(redaction)
        publish = super().apply_async
        # Task.retry publishes under the running task's id: that is a retry, not a call.
        own_retry = task_id is not None and task_id == self.request.id
        result = self._journaled(
            message_kwargs,
            options,
            lambda: publish((), message_kwargs, task_id, *rest, **options),
            own_retry=own_retry,
        )
        result.idempotency_key = meta_of(message_kwargs[_RECORD])["idempotency_key"]
        return result

    def _journaled(
        self,
        message_kwargs: dict[str, Any],
        options: dict[str, Any],
        publish: Any,
        *,
        own_retry: bool = False,
    ) -> Any:
        """Publish with the record noted in the buffer's journal until a worker settles it.

        The broker can lose a message that a worker had popped but not yet noted as
        unacknowledged (a SIGKILL or a Redis restart in between); the flusher then sends
        the record from the journal (see ``RedisBuffer.journal``). Without a buffer the
        broker's own guarantee remains. A call that cannot journal or publish raises
        ``PublishError`` and leaves nothing behind. A retry that cannot publish keeps
        the entry: it belongs to the running message, which Celery then drops
        (``_retry`` reschedules the entry for the flusher).
        """
        buffer = find_buffer(self.app)
        text = message_kwargs[_RECORD]
        key = meta_of(text)["idempotency_key"]
        if buffer is not None:
            seconds = get_settings(self.app).visibility_timeout + delay_of(options)
            counts = DIRECT_TALLY.get()  # set when this publish is a retry of a running task
            DIRECT_TALLY.set(None)
            try:
                buffer.journal(text.encode("utf-8"), seconds, counts, expires_in(options))
            except BufferUnavailableError as exc:
                if not own_retry:
                    raise PublishError.for_event(key, "could not be journaled", exc) from exc
                logger.warning(
                    "event %s (task %s): retry not journaled again (%s)", key, self.request.id, exc
                )
        try:
            return publish()
        except BaseException as exc:
            if own_retry:
                raise  # Celery turns this into Reject; the journal entry stays
            if buffer is not None:
                with contextlib.suppress(redis.RedisError):
                    buffer.settle_journal(text.encode("utf-8"))
            if isinstance(exc, Exception):
                raise PublishError.for_event(key, "could not be published", exc) from exc
            raise

    def _settle_journal(self, text: str) -> None:
        buffer = find_buffer(self.app)
        if buffer is not None:
            try:
                buffer.settle_journal(text.encode("utf-8"), DIRECT_TALLY.get())
            except redis.RedisError as exc:  # the flusher will re-send it: a duplicate, skipped
                logger.warning("journal entry not settled (%s)", exc)

    def delay_on_commit(self, *args: Any, **kwargs: Any) -> str:
        """Publish when the current Django transaction commits (nothing if it rolls back).

        The event is validated now, so bad input still raises in the view.
        Returns the idempotency key.
        """
        try:
            from django.db import transaction  # type: ignore[import-untyped]
        except ImportError:  # pragma: no cover - depends on the environment
            raise ConfigurationError("delay_on_commit needs Django installed") from None
        if isinstance(prepared := self._prepare(args, kwargs), Dropped):
            return prepared.idempotency_key
        message_kwargs, options = prepared
        key = meta_of(message_kwargs[_RECORD])["idempotency_key"]
        publish = super().apply_async
        transaction.on_commit(
            lambda: self._journaled(
                message_kwargs, options, lambda: publish((), message_kwargs, **options)
            )
        )
        return str(key)

    def send_record(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The task body: send the prepared record (or build it, when called directly)."""
        if is_prepared(args, kwargs):
            text: str | Dropped = kwargs[_RECORD]
        else:  # published by name (app.send_task), or called directly in a shell
            text = self._accept_in_worker(args, kwargs)
        if isinstance(text, Dropped):  # by suprsend_before_send
            return dropped_result(text).result  # type: ignore[no-any-return]
        meta = meta_of(text)
        # Result backends with result_extended store request args: keep them redacted.
        self.request.args, self.request.kwargs = (), meta
        token = DIRECT_TALLY.set(Tally())
        try:
            try:
                result = self._send(text, meta)
            except (DeliveryError, ConfigurationError):
                self._settle_journal(text)  # dead-lettered, or kept in the buffer
                raise
            # A Retry re-published the record (and pushed its journal entry out); any
            # other exception leaves the entry for the flusher to send.
            count_direct("direct:sent")
            self._settle_journal(text)
        finally:
            DIRECT_TALLY.reset(token)
        return result

    def _accept_in_worker(self, args: Any, kwargs: Any) -> str | Dropped:
        """The record of a call published by name (``app.send_task``) or made directly.

        Unless the caller gave one, its idempotency key is the task id, which every
        redelivery of the message shares: a copy redelivered after a worker died is
        then skipped by SuprSend. (``$insert_id`` and ``$time`` are taken at each run.)
        """
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        is_event = len(args) == 1 and isinstance(args[0], Event)
        if self.request.id is not None and not is_event and not kwargs.get("idempotency_key"):
            kwargs["idempotency_key"] = self.request.id
        record = accept_call(self.app, args, kwargs)
        return record if isinstance(record, Dropped) else record.payload.decode("utf-8")

    def _post(self, text: str) -> dict[str, Any]:
        """One request to the event API, its status class and duration tallied."""
        sent_at = time.monotonic()
        status: int | None = None
        payload = text.encode("utf-8")
        if past_dedup_window([payload]):  # after a long outage or a late redelivery
            count_direct(PAST_WINDOW)
        try:
            response = get_client(self.app).send_event(payload)
            status = response["status_code"]
        except DeliveryError as exc:
            status = exc.status_code
            raise
        finally:
            tally = DIRECT_TALLY.get()
            if tally is not None:
                tally.request("direct", status, time.monotonic() - sent_at)
        return response

    def _send(self, text: str, meta: dict[str, Any]) -> dict[str, Any]:
        settings = get_settings(self.app)
        key = meta["idempotency_key"]
        attempt = int(self.request.retries or 0) + 1
        try:
            response = self._post(text)
        except TransientDeliveryError as exc:
            if should_retry(exc, attempt, settings.max_retries):
                countdown = backoff_delay(
                    attempt, cap=settings.max_countdown, floor=exc.retry_after
                )
                reason = TransientDeliveryError(
                    f"{exc}; retry {attempt}/{settings.max_retries} in {countdown:.1f}s "
                    f"(idempotency key {key})",
                    status_code=exc.status_code,
                    idempotency_key=key,
                    retry_after=exc.retry_after,
                )
                logger.warning(
                    "event %s (task %s): %s; retry %d/%d in %.1fs",
                    key,
                    self.request.id,
                    exc,
                    attempt,
                    settings.max_retries,
                    countdown,
                )
                count_direct("direct:retried")
                raise self._retry(text, key, reason, countdown) from None
            self._fail(text, meta, exc, attempt, failure_reason(exc, attempt))
        except PermanentDeliveryError as exc:
            if exc.is_config_error:  # refused credentials or a wrong URL: keep the event
                self._credentials_refused(text, meta, exc, attempt)
            self._fail(text, meta, exc, attempt, failure_reason(exc, attempt))
        return {
            "status": response["status"],
            "status_code": response["status_code"],
            "message_id": response["message_id"],
            "idempotency_key": key,
            "attempts": attempt,
        }

    def _fail(
        self, text: str, meta: dict[str, Any], exc: DeliveryError, attempts: int, reason: str
    ) -> NoReturn:
        """Dead-letter (when Redis is configured) and fail, naming the key, never the payload."""
        key = meta["idempotency_key"]
        where = "not dead-lettered (no suprsend_redis_url)"
        buffer = find_buffer(self.app)
        entry = direct_dead_letter(text, meta, reason, exc, attempts)
        if buffer is not None:
            try:
                buffer.dead_letter(entry)
            except redis.RedisError as redis_exc:
                raise self._retry_for_redis(text, key, exc, "dead-lettering", redis_exc) from None
            where = "moved to the dead-letter list"
            count_direct("direct:dead_lettered")
        logger.error(
            "event %s (task %s) not delivered: %s; %s", key, self.request.id, reason, where
        )
        send_dead_lettered([entry], stored=buffer is not None)
        raise type(exc)(
            f"event {key} not delivered: {reason}; {where}",
            status_code=exc.status_code,
            idempotency_key=key,
            retry_after=exc.retry_after,
        ) from None

    def _retry_for_redis(
        self, text: str, key: str, exc: DeliveryError, action: str, redis_exc: Exception
    ) -> Exception:
        """Redis is unreachable: keep the event in the broker and try again later.

        Losing the event is worse than sending it again (the key makes that safe).
        """
        countdown = min(30.0, get_settings(self.app).max_countdown)
        reason = f"{exc}; {action} failed ({type(redis_exc).__name__}); retry in {countdown:.1f}s"
        logger.error("event %s (task %s): %s", key, self.request.id, reason)
        retry_exc = type(exc)(
            f"{reason} (idempotency key {key})", status_code=exc.status_code, idempotency_key=key
        )
        return self._retry(text, key, retry_exc, countdown)

    def _retry(self, text: str, key: str, reason: Exception, countdown: float) -> Exception:
        """Publish the retry; if that fails, keep the record for the flusher.

        ``Task.retry`` turns a failed publish into ``Reject(requeue=False)`` and the
        running message is acknowledged away, so the journal entry is all that is left
        of the event: it is rescheduled to when the retry was due and never settled
        here (the flusher sends it, or the entry's earlier deadline stands when Redis
        refuses even that).
        """
        try:
            retry: Exception = self.retry(
                args=(), kwargs={_RECORD: text}, exc=reason, countdown=countdown, throw=False
            )
        except Reject as reject:
            where = "it is lost (no suprsend_redis_url to keep it)"
            buffer = find_buffer(self.app)
            if buffer is not None:
                try:
                    buffer.reschedule_journal(text.encode("utf-8"), countdown)
                    where = f"the flusher sends it from the journal in {countdown:.1f}s"
                except redis.RedisError:
                    where = "the flusher sends it from the journal when its entry is due"
            logger.error(
                "event %s (task %s): the retry could not be published (%s); %s",
                key,
                self.request.id,
                reject.reason,
                where,
            )
            raise
        return retry

    def _credentials_refused(
        self, text: str, meta: dict[str, Any], exc: DeliveryError, attempts: int
    ) -> NoReturn:
        """401/403: a configuration fault, so the event is kept for later, not dead-lettered."""
        key = meta["idempotency_key"]
        buffer = find_buffer(self.app)
        where = "the event could not be kept (no suprsend_redis_url)"
        if buffer is not None:
            entry = direct_dead_letter(text, meta, str(exc), exc, attempts)
            try:
                kept = buffer.rehome(text.encode("utf-8"), entry)
            except redis.RedisError as redis_exc:
                raise self._retry_for_redis(
                    text, key, exc, "keeping it in the buffer", redis_exc
                ) from None
            if kept:
                where = "the event was moved to the buffer and is sent once this is fixed"
            else:
                where = "the buffer is full, so the event was dead-lettered"
                send_dead_lettered([entry])
            count_direct("direct:kept" if kept else "direct:dead_lettered")
        logger.error("event %s (task %s): %s; %s", key, self.request.id, exc, where)
        raise ConfigurationError(f"event {key}: {exc}; {where}") from None


@task_revoked.connect  # type: ignore[untyped-decorator]
def _on_revoked(sender: Any = None, request: Any = None, expired: bool = False, **_: Any) -> None:
    """A ``track_event`` a worker discards (revoked, expired) is not sent later from the
    journal: settle its entry. (An expired message no worker took: ``recover_journal``.)"""
    record = getattr(request, "suprsend_record", None)
    if getattr(sender, "name", None) != TRACK_TASK or not isinstance(record, str):
        return
    logger.warning(
        "event %s (task %s) %s: not sent",
        meta_of(record)["idempotency_key"],
        getattr(request, "id", None),
        "expired" if expired else "revoked",
    )
    sender._settle_journal(record)


@shared_task(bind=True, base=TrackEventTask, name=TRACK_TASK)  # type: ignore[untyped-decorator]
def track_event(self: TrackEventTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Send one event to SuprSend (see ``TrackEventTask``)."""
    return self.send_record(*args, **kwargs)


async def atrack_event(*args: Any, app: Any = None, **options: Any) -> Any:
    """``track_event.delay`` for async code; returns its ``AsyncResult``.

    Validates in the caller (bad input raises at once, nothing is published); the
    publish and its journal entry run in a thread: Celery has no asyncio publisher.
    """
    task = resolve_app(app).tasks[TRACK_TASK]
    prepared = task._prepare(args, options)
    if isinstance(prepared, Dropped):
        return dropped_result(prepared)
    return await asyncio.to_thread(task.apply_async, (), prepared[0])
