"""``track_event``: the direct path's Celery task, and nothing but its Celery glue.

``track_event.delay(...)`` prepares the call in the caller's process
(``prepare.prepare_track_event``: bad input raises there and nothing is published),
notes the finished record in the journal and publishes it (``journal``); the worker
makes one ``attempt.DirectAttempt`` per run, whose decision is the pure
``delivery.decisions.decide_direct``. Flower and result backends see the event name,
distinct_id and idempotency key, never properties or secrets (``redaction``).

Every use of Celery's internals on this path is in ``TrackEventTask``, each with a
comment saying why.
"""

from __future__ import annotations

import asyncio
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Reject
from celery.signals import task_revoked

from ..defaults import TRACK_TASK
from ..delivery.tally import Tally
from ..delivery.tracing import send_event_span, trace_headers
from ..events.model import Event, event_from_call
from ..exceptions import ConfigurationError
from ..pipeline.hooks import Dropped, dropped_result
from ..pipeline.settings import resolve_app
from .attempt import DirectAttempt, RetryLater
from .journal import DirectJournal
from .prepare import PreparedEvent, prepare_track_event
from .redaction import RECORD, RedactedRequest, is_prepared, meta_of, warn_if_no_broker

__all__ = [
    "TRACK_TASK",
    "PreparedEvent",
    "TrackEventTask",
    "atrack_event",
    "prepare_track_event",
    "track_event",
]


#: The ``Task.retry`` option that carries a running attempt's ``Tally`` to the retry's
#: ``apply_async`` (never published: ``apply_async`` takes it out).
_RETRY_TALLY = "suprsend_retry_tally"


class TrackEventTask(Task):  # type: ignore[misc]
    """Sends one accepted event; the record is fixed before it is published."""

    #: Acknowledge only after the send, and requeue if the worker dies mid-send.
    acks_late = True
    reject_on_worker_lost = True
    #: Retries are counted and bounded by ``suprsend_max_retries`` (``decide_direct``),
    #: so Celery never raises MaxRetriesExceededError (whose message shows raw arguments).
    max_retries = None
    #: The task takes the prepared record, not the call's arguments.
    typing = False
    #: The worker's request class: shows the event, never the record (``redaction``).
    Request = RedactedRequest

    # -- publishing (in the caller) ----------------------------------------------------

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: Any = None, *rest: Any, **options: Any
    ) -> Any:
        """Validate and serialise in the caller, then publish only the finished record.

        Returns the ``AsyncResult`` with the event's ``idempotency_key`` attached. Raises
        ``InvalidEventError`` for bad input and ``PublishError`` when the record could
        not be journaled or published within ``suprsend_accept_timeout``.
        """
        warn_if_no_broker(self.app)
        # ``Task.retry(**options)`` passes its options on to ``apply_async`` (documented):
        # ``_retry`` sends the running attempt's tally that way, which also marks this
        # publish as that task's retry. Taken out here, so the broker never sees it.
        retry: Tally | None = options.pop(_RETRY_TALLY, None)
        if is_prepared(args, kwargs):  # a retry, or a call prepared before
            prepared: PreparedEvent | Dropped = PreparedEvent.of_record(kwargs[RECORD])
        else:
            event = event_from_call(tuple(args or ()), dict(kwargs or {}))
            prepared = prepare_track_event(event, app=self.app)
        if isinstance(prepared, Dropped):  # by suprsend_before_send
            return dropped_result(prepared)
        return self._publish(prepared, task_id, rest, options, retry)

    def publish_prepared(self, prepared: PreparedEvent, **options: Any) -> Any:
        """Publish a call ``prepare_track_event`` prepared (noted in the journal first);
        ``options`` are Celery's (``countdown``, ``expires``, ``queue``...). Returns the
        ``AsyncResult`` with ``idempotency_key`` attached; raises ``PublishError``."""
        warn_if_no_broker(self.app)
        return self._publish(prepared, None, (), options, None)

    def delay_on_commit(self, *args: Any, **kwargs: Any) -> str:
        """Publish when the current Django transaction commits (nothing if it rolls back).

        The event is validated now, so bad input still raises in the view.
        Returns the idempotency key.
        """
        try:
            from django.db import transaction  # type: ignore[import-untyped]
        except ImportError:  # pragma: no cover - depends on the environment
            raise ConfigurationError("delay_on_commit needs Django installed") from None
        prepared = prepare_track_event(event_from_call(args, kwargs), app=self.app)
        if isinstance(prepared, PreparedEvent):
            transaction.on_commit(lambda: self._publish(prepared, None, (), {}, None))
        return prepared.idempotency_key

    def _publish(
        self,
        prepared: PreparedEvent,
        task_id: Any,
        rest: tuple[Any, ...],
        options: dict[str, Any],
        retry: Tally | None,
    ) -> Any:
        options.update(prepared.options)
        # The caller's trace context rides in the message headers (never in the record).
        headers = trace_headers()
        if headers:
            options["headers"] = {**(options.get("headers") or {}), **headers}
        # Celery's own publish; bound here, since super() needs the method's frame.
        publish = super().apply_async
        result = DirectJournal(self.app).publish(
            prepared.record,
            options,
            lambda: publish((), prepared.kwargs, task_id, *rest, **options),
            retry=retry,
            task_id=task_id,
        )
        # An AsyncResult takes attributes: the key travels with the result the caller holds.
        result.idempotency_key = prepared.shown["idempotency_key"]
        return result

    # -- the task body (in the worker) -------------------------------------------------

    def send_record(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The task body: one attempt at the prepared record (or at one built here)."""
        if is_prepared(args, kwargs):
            record: str = kwargs[RECORD]
        else:  # published by name (app.send_task), or called directly in a shell
            prepared = self._accept_in_worker(args, kwargs)
            if isinstance(prepared, Dropped):  # by suprsend_before_send
                return dropped_result(prepared).result  # type: ignore[no-any-return]
            record = prepared.record
        # Celery stores ``request.args``/``kwargs`` with a failed task's result when
        # ``result_extended`` is on: replace them with what may be shown.
        self.request.args, self.request.kwargs = (), meta_of(record)
        # ``request.retries`` counts the retries Celery published for this task id.
        number = int(self.request.retries or 0) + 1
        attempt = DirectAttempt(self.app, record, number=number, task_id=self.request.id)
        # Message headers are attributes of ``request`` (Celery's protocol 2).
        with send_event_span(self.request.get, attempt) as span:
            outcome = attempt.run()
            if isinstance(outcome, RetryLater):
                span.retrying(outcome.countdown, attempt.status_code, outcome.error)
                raise self._retry(attempt, outcome)  # published inside: same trace
            return outcome

    def _accept_in_worker(self, args: Any, kwargs: Any) -> PreparedEvent | Dropped:
        """The record of a call published by name (``app.send_task``) or made directly.

        Unless the caller gave one, its idempotency key is the task id, which every
        redelivery of the message shares: a copy redelivered after a worker died is
        then skipped by SuprSend. (``$insert_id`` and ``$time`` are taken at each run.)
        """
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        is_event = len(args) == 1 and isinstance(args[0], Event)
        if self.request.id is not None and not is_event and not kwargs.get("idempotency_key"):
            kwargs["idempotency_key"] = self.request.id
        return prepare_track_event(event_from_call(args, kwargs), app=self.app)

    def _retry(self, attempt: DirectAttempt, later: RetryLater) -> Exception:
        """Publish the retry (Celery's ``Task.retry``); if that fails, keep the record
        for the flusher.

        ``Task.retry`` turns a failed publish into ``Reject(requeue=False)``. The
        journal entry is rescheduled (``DirectJournal.retry_not_published``) and the
        run fails with the delivery error instead of the Reject: Celery's worker then
        acknowledges the message at once (``acks_late``, acknowledged on failure).
        A Reject would first store the failure from the worker's main process, and a
        result backend that fails there (the broker's Redis at ``maxclients``, which is
        also why the publish failed) leaves the message neither acknowledged nor
        rejected: kombu keeps it in the consumer's prefetch window for good, and once
        the window is full the worker takes no more tasks (seen in the soak: two
        workers stopped consuming, 408 events waited until they were restarted).
        """
        try:
            retry: Exception = self.retry(
                args=(),
                kwargs={RECORD: attempt.record},
                exc=later.error,
                countdown=later.countdown,
                throw=False,
                **{_RETRY_TALLY: attempt.tally},
            )
        except Reject as reject:
            where = attempt.journal.retry_not_published(
                attempt.record, later.countdown, task_id=self.request.id, why=reject.reason
            )
            error = later.error
            raise type(error)(
                f"{error}; the retry could not be published; {where}",
                status_code=error.status_code,
                idempotency_key=error.idempotency_key,
                retry_after=error.retry_after,
                error_type=error.error_type,
            ) from None
        return retry


@task_revoked.connect  # type: ignore[untyped-decorator]
def _on_revoked(sender: Any = None, request: Any = None, expired: bool = False, **_: Any) -> None:
    """A ``track_event`` a worker discards (revoked, expired) is not sent later from the
    journal: settle its entry. ``suprsend_record`` is set by ``RedactedRequest``."""
    record = getattr(request, "suprsend_record", None)
    if getattr(sender, "name", None) != TRACK_TASK or not isinstance(record, str):
        return
    DirectJournal(sender.app).discarded(
        record, task_id=getattr(request, "id", None), expired=expired
    )


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
    prepared = prepare_track_event(event_from_call(args, options), app=task.app)
    if isinstance(prepared, Dropped):
        return dropped_result(prepared)
    return await asyncio.to_thread(task.publish_prepared, prepared)
