"""One run of ``track_event``: send the record once, decide, carry the decision out.

First the attempt holds its journal entry (``DirectJournal.hold``), so the flusher
leaves the event alone while this run may still send it; if the flusher already sent
it from the journal (the task was redelivered after its worker died), the run reports
that and sends nothing. ``decide_direct`` (pure, in ``delivery.decisions``) says what
the request's outcome means; ``DirectAttempt`` applies it: a delivered event's journal
entry is settled, a failed one is dead-lettered or, when SuprSend refused the
credentials or the URL is wrong, moved to the buffer (never dead-lettered), then
settled; a retry is returned as ``RetryLater`` for the task to publish. The run's
counters travel in its own ``Tally``, counted in Redis by the settle or by the retry's
journal entry.

No Celery here: publishing the retry (``Task.retry``) is the task's part. Log lines
and errors name the idempotency key, never the record.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from ..delivery.dead_letters import direct_dead_letter
from ..delivery.decisions import DirectDecision, decide_direct
from ..delivery.retry import RetryPolicy, past_dedup_window
from ..delivery.tally import PAST_WINDOW, Tally
from ..exceptions import ConfigurationError, DeliveryError, TransientDeliveryError
from ..pipeline.runtime import get_client
from ..pipeline.settings import get_settings
from ..pipeline.signals import send_dead_lettered
from .journal import DirectJournal
from .redaction import meta_of

__all__ = ["REDIS_RETRY_SECONDS", "TAKEN_STATUS", "DirectAttempt", "RetryLater"]

logger = logging.getLogger(__name__)

REDIS_RETRY_SECONDS = 30.0
"""How soon a task tries again when the buffer's Redis refused its dead letter or the
kept event (at most the broker-safe countdown): losing the event is worse than sending
it again, which its key makes safe."""


TAKEN_STATUS = "sent_from_journal"
"""The task result's ``status`` when a redelivered task found its event already taken
over by the flusher (sent from the journal, or dead-lettered there): nothing was sent."""


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Run the task again in ``countdown`` seconds; ``error`` says why (Flower's RETRY)."""

    error: DeliveryError
    countdown: float


class DirectAttempt:
    """One attempt at one prepared record, by task ``task_id`` (``number`` is 1-based)."""

    def __init__(self, app: Any, record: str, *, number: int, task_id: str | None) -> None:
        self.app = app
        self.record = record
        self.number = number
        self.task_id = task_id
        self.shown = meta_of(record)
        self.key = self.shown["idempotency_key"]
        self.event_name: str | None = self.shown["event"]
        #: The HTTP status of this run's request (None: no answer, or not sent yet).
        self.status_code: int | None = None
        #: How a run that failed for good ended: "dead_lettered", "kept" or "failed".
        self.outcome: str | None = None
        #: What this run did (its request, its outcome), counted where it is settled.
        self.tally = Tally()
        self.settings = get_settings(app)
        self.journal = DirectJournal(app)
        # The countdown cap keeps every retry below the broker's visibility timeout.
        self.policy = RetryPolicy(
            self.settings.max_retries, backoff_max=self.settings.max_countdown
        )

    def run(self) -> dict[str, Any] | RetryLater:
        """Send once and carry out the decision: the task result, or a retry to publish.

        Raises the failure, naming the key, once the event is dead-lettered
        (``DeliveryError``) or kept in the buffer (``ConfigurationError``). Any other
        exception leaves the journal entry for the flusher.
        """
        if self.journal.hold(self.record, task_id=self.task_id) == "taken":
            return self._taken()
        response: dict[str, Any] = {}
        error: DeliveryError | None = None
        try:
            response = self._post()
        except DeliveryError as exc:
            error = exc
        decision = decide_direct(error, self.number, self.policy)
        if error is None:  # decision.action == "sent"
            return self._sent(response)
        if decision.action == "retry":
            return self._retry_later(error, decision)
        if decision.action == "keep":
            return self._keep(error, decision)
        return self._dead_letter(error, decision)

    def _post(self) -> dict[str, Any]:
        """One request to the event API, its status class and duration tallied."""
        sent_at = time.monotonic()
        status: int | None = None
        payload = self.record.encode("utf-8")
        if past_dedup_window([payload]):  # after a long outage or a late redelivery
            self.tally.add(PAST_WINDOW)
        try:
            response = get_client(self.app).send_event(payload)
            status = response["status_code"]
        except DeliveryError as exc:
            status = exc.status_code
            raise
        finally:
            self.status_code = status
            self.tally.request("direct", status, time.monotonic() - sent_at)
        return response

    def _taken(self) -> dict[str, Any]:
        """The flusher sent this event from the journal after the task went silent (its
        worker died holding it): the broker's redelivery sends and counts nothing."""
        logger.info(
            "event %s (task %s): already sent from the journal after its worker went "
            "silent; not sent again",
            self.key,
            self.task_id,
            extra=self._fields("taken_over"),
        )
        return {
            "status": TAKEN_STATUS,
            "status_code": None,
            "message_id": None,
            "idempotency_key": self.key,
            "attempts": self.number,
        }

    def _sent(self, response: dict[str, Any]) -> dict[str, Any]:
        self.tally.add("direct:sent")
        if not self.journal.settle(self.record, self.tally):
            logger.info(
                "event %s (task %s): sent, but its attempt outlived the journal's grace and "
                "the flusher sent it too (skipped by key); counted once, by the flusher",
                self.key,
                self.task_id,
                extra=self._fields("sent"),
            )
        return {
            "status": response["status"],
            "status_code": response["status_code"],
            "message_id": response["message_id"],
            "idempotency_key": self.key,
            "attempts": self.number,
        }

    def _retry_later(self, error: DeliveryError, decision: DirectDecision) -> RetryLater:
        logger.warning(
            "event %s (task %s): %s; retry %d/%d in %.1fs",
            self.key,
            self.task_id,
            error,
            decision.attempt,
            self.policy.max_retries,
            decision.countdown,
            extra=self._fields("retry", error),
        )
        self.tally.add("direct:retried")
        reason = TransientDeliveryError(
            f"{decision.reason} (idempotency key {self.key})",
            status_code=error.status_code,
            idempotency_key=self.key,
            retry_after=error.retry_after,
        )
        return RetryLater(reason, decision.countdown)

    def _dead_letter(self, error: DeliveryError, decision: DirectDecision) -> RetryLater:
        """Dead-letter (when Redis is configured) and fail, naming the key, never the payload."""
        where = "not dead-lettered (no suprsend_redis_url)"
        buffer = self.journal.buffer
        entry = direct_dead_letter(self.record, self.shown, decision.reason, error, self.number)
        if buffer is not None:
            try:
                buffer.dead_letter(entry)
            except redis.RedisError as redis_exc:
                return self._redis_down(error, "dead-lettering", redis_exc)
            where = "moved to the dead-letter list"
            self.tally.add("direct:dead_lettered")
        self.outcome = "dead_lettered" if buffer is not None else "failed"
        logger.error(
            "event %s (task %s) not delivered: %s; %s",
            self.key,
            self.task_id,
            decision.reason,
            where,
            extra=self._fields(self.outcome, error),
        )
        send_dead_lettered([entry], stored=buffer is not None)
        self.journal.settle(self.record, self.tally)
        raise type(error)(
            f"event {self.key} not delivered: {decision.reason}; {where}",
            status_code=error.status_code,
            idempotency_key=self.key,
            retry_after=error.retry_after,
        ) from None

    def _keep(self, error: DeliveryError, decision: DirectDecision) -> RetryLater:
        """Refused credentials or a wrong URL: a fault of the configuration, so the event
        is moved to the buffer (sent once this is fixed), not dead-lettered."""
        buffer = self.journal.buffer
        where = "the event could not be kept (no suprsend_redis_url)"
        outcome = self.outcome = "failed"
        if buffer is not None:
            entry = direct_dead_letter(self.record, self.shown, decision.reason, error, self.number)
            try:
                kept = buffer.rehome(self.record.encode("utf-8"), entry)
            except redis.RedisError as redis_exc:
                return self._redis_down(error, "keeping it in the buffer", redis_exc)
            if kept:
                where = "the event was moved to the buffer and is sent once this is fixed"
            else:
                where = "the buffer is full, so the event was dead-lettered"
                send_dead_lettered([entry])
            outcome = self.outcome = "kept" if kept else "dead_lettered"
            self.tally.add(f"direct:{outcome}")
        logger.error(
            "event %s (task %s): %s; %s",
            self.key,
            self.task_id,
            error,
            where,
            extra=self._fields(outcome, error),
        )
        self.journal.settle(self.record, self.tally)
        raise ConfigurationError(f"event {self.key}: {error}; {where}") from None

    def _fields(self, outcome: str, error: DeliveryError | None = None) -> dict[str, Any]:
        """The structured fields of this run's log lines (keys and counts, no content)."""
        return {
            "idempotency_key": self.key,
            "task_id": self.task_id,
            "attempt": self.number,
            "outcome": outcome,
            "status_code": self.status_code if error is None else error.status_code,
        }

    def _redis_down(self, error: DeliveryError, action: str, redis_exc: Exception) -> RetryLater:
        """The buffer's Redis is unreachable: keep the event in the broker, try again later."""
        countdown = min(REDIS_RETRY_SECONDS, self.settings.max_countdown)
        reason = f"{error}; {action} failed ({type(redis_exc).__name__}); retry in {countdown:.1f}s"
        logger.error(
            "event %s (task %s): %s",
            self.key,
            self.task_id,
            reason,
            extra=self._fields("retry", error),
        )
        retry_error = type(error)(
            f"{reason} (idempotency key {self.key})",
            status_code=error.status_code,
            idempotency_key=self.key,
        )
        return RetryLater(retry_error, countdown)
