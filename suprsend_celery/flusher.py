"""Drain the buffer: claim a batch, send it in bulk, settle each record. No Celery here.

The loop the ``flush_buffer`` task and ``suprsend-celery flush`` both run::

    claim (lease) ─► post_bulk ─► settle: ack successes, schedule transient failures,
                                  dead-letter permanent ones, feed the breaker

A batch is acknowledged only after SuprSend answered for it, in the same Lua step
that schedules its retries, so a flusher killed at any instant leaves its claim to
expire and return to the buffer; re-sent records carry their idempotency keys and
SuprSend skips them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import defaults
from .buffer import Claim, RedisBuffer, join_item, split_item
from .client import SuprsendClient, chunk_payloads
from .exceptions import DeliveryError, TransientDeliveryError
from .policy import backoff_delay, dead_letter_entry
from .scripts import Verdict

__all__ = ["FlushReport", "Flusher"]

logger = logging.getLogger(__name__)

LEASE_ENV = "SUPRSEND_CLAIM_LEASE"
"""Overrides the claim lease (seconds) of flushers built without one: for crash tests,
which want a killed flusher's records back quickly. Not a setting; leave it unset."""


@dataclass(slots=True)
class FlushReport:
    """What one flush run did; ``as_result()`` is the task's result."""

    sent: int = 0
    retry_scheduled: int = 0
    dead_lettered: int = 0
    remaining: int = 0
    seconds: float = 0.0
    requests: int = 0
    returned: int = 0
    breaker: str = "closed"

    def as_result(self) -> dict[str, float | int]:
        return {
            "sent": self.sent,
            "retry_scheduled": self.retry_scheduled,
            "dead_lettered": self.dead_lettered,
            "remaining": self.remaining,
            "seconds": round(self.seconds, 3),
        }


@dataclass(slots=True)
class _Outcome:
    """How one claim's requests went, before it is settled."""

    failures: list[tuple[int, DeliveryError]]
    requests: int = 0
    #: SuprSend answered at least one request with a verdict (success or a permanent
    #: refusal): the API is up, which closes the breaker.
    answered: bool = False
    transient_request_error: DeliveryError | None = None
    auth_error: DeliveryError | None = None
    #: Index of the first record left unsent because a request failed as a whole
    #: (refused credentials, or the API failing): those go back to the buffer untouched.
    unsent_from: int | None = None


class Flusher:
    """Sends buffered records to the bulk API; safe to run in many processes at once."""

    def __init__(
        self,
        buffer: RedisBuffer,
        client: SuprsendClient,
        *,
        batch_size: int = defaults.FLUSH_BATCH_SIZE,
        max_retries: int = defaults.MAX_RETRIES,
        backoff_max: float = defaults.RETRY_BACKOFF_MAX,
        backoff_base: float = defaults.RETRY_BACKOFF_BASE,
        lease: float | None = None,
    ) -> None:
        self.buffer = buffer
        self.client = client
        self.batch_size = max(1, min(batch_size, defaults.MAX_BULK_RECORDS))
        self.max_retries = max_retries
        self.backoff_max = backoff_max
        self.backoff_base = backoff_base
        # A lease must outlast one request's worst case by a wide margin.
        if not lease and os.environ.get(LEASE_ENV):
            lease = float(os.environ[LEASE_ENV])
        self.lease = lease or max(defaults.CLAIM_LEASE, 3 * sum(client.timeout))

    def run(
        self,
        time_budget: float = defaults.FLUSH_TIME_BUDGET,
        *,
        max_batches: int | None = None,
        progress: Callable[[FlushReport], None] | None = None,
    ) -> FlushReport:
        """Claim and send batches until the buffer is empty, the breaker opens or time is up."""
        started = time.monotonic()
        deadline = started + time_budget
        report = FlushReport()
        batches = 0
        recovered = self.buffer.recover_journal()
        if recovered:
            logger.warning(
                "%d direct-path record(s) were never settled by their task (a lost broker "
                "message); sending them from the buffer",
                recovered,
            )
        while time.monotonic() < deadline and (max_batches is None or batches < max_batches):
            claim = self.buffer.claim(self.batch_size, self.lease)
            if claim.mode == "open":
                report.breaker = "open"
                logger.info("breaker open: not sending for %.1fs more", claim.wait)
                break
            if not claim.items:
                break
            batches += 1
            stop = self._process(claim, report)
            if progress is not None:
                progress(report)
            if stop:
                break
        report.remaining = self.buffer.remaining()
        report.seconds = time.monotonic() - started
        if report.sent or report.retry_scheduled or report.dead_lettered or report.returned:
            logger.info(
                "flush: sent=%d retry_scheduled=%d dead_lettered=%d returned=%d "
                "remaining=%d requests=%d in %.2fs",
                report.sent,
                report.retry_scheduled,
                report.dead_lettered,
                report.returned,
                report.remaining,
                report.requests,
                report.seconds,
            )
        return report

    # -- one claim -----------------------------------------------------------------

    def _process(self, claim: Claim, report: FlushReport) -> bool:
        """Send and settle one claim; True when the run should stop (auth fault)."""
        items = claim.items
        attempts: list[int] | None = None
        if any(item[:1] != b"{" for item in items):
            pairs = [split_item(item) for item in items]
            attempts = [a for a, _ in pairs]
            payloads: Sequence[bytes] = [p for _, p in pairs]
        else:
            payloads = items
        outcome = self._send(claim.id, payloads)
        report.requests += outcome.requests

        back: Sequence[bytes] = ()
        failures = outcome.failures
        if outcome.unsent_from is not None:
            # Records never judged by SuprSend go back to the head of the buffer
            # untouched: no attempt counted, never dead-lettered.
            back = items[outcome.unsent_from :]
            failures = [(i, e) for i, e in failures if i < outcome.unsent_from]
        if outcome.auth_error is not None:
            logger.error(
                "SuprSend refused the credentials (HTTP %s); %d record(s) stay buffered and "
                "the breaker is open until the configuration is fixed",
                outcome.auth_error.status_code,
                len(back),
            )

        retries: list[tuple[float, bytes]] = []
        dead: list[bytes] = []
        shared = outcome.transient_request_error  # one error for a whole request's records
        for index, error in failures:
            payload = payloads[index]
            attempt = (attempts[index] if attempts else 0) + 1
            if error.retryable and attempt <= self.max_retries:
                delay = backoff_delay(
                    attempt, base=self.backoff_base, cap=self.backoff_max, floor=error.retry_after
                )
                retries.append((round(delay, 3), join_item(attempt, payload)))
                if error is not shared:
                    logger.warning(
                        "record %s will be retried in %.1fs (attempt %d): %s",
                        error.idempotency_key,
                        delay,
                        attempt,
                        error,
                    )
                continue
            reason = str(error)
            if error.retryable:
                reason = f"gave up after {attempt} attempts: {reason}"
            dead.append(
                dead_letter_entry(
                    payload,
                    error=reason,
                    status_code=error.status_code,
                    attempts=attempt,
                    source="buffer",
                    idempotency_key=error.idempotency_key,
                )
            )
            logger.error("record %s dead-lettered: %s", error.idempotency_key, reason)

        if shared is not None:
            logger.warning(
                "bulk request failed (%s): %d record(s) scheduled for retry, %d returned unsent",
                shared,
                len(retries),
                len(back),
            )

        verdict: Verdict = ""
        open_for = 0.0
        reason = ""
        if outcome.auth_error is not None:
            verdict = "auth"
            reason = str(outcome.auth_error)[:200]
        elif outcome.transient_request_error is not None:
            verdict = "fail"
            open_for = outcome.transient_request_error.retry_after or 0.0
            reason = str(outcome.transient_request_error)[:200]
        elif outcome.answered:
            verdict = "ok"
        settled = self.buffer.settle(
            claim.id,
            retries=retries,
            dead=dead,
            back=back,
            verdict=verdict,
            open_for=open_for,
            reason=reason,
        )
        if not settled:
            logger.warning(
                "lease of claim %s ran out before it was settled; its %d record(s) went back "
                "to the buffer and will be re-sent (SuprSend skips repeated idempotency keys)",
                claim.id,
                len(items),
            )
            report.returned += len(items)
            return outcome.auth_error is not None
        report.sent += len(items) - len(back) - len(failures)
        report.retry_scheduled += len(retries)
        report.dead_lettered += len(dead)
        report.returned += len(back)
        if outcome.auth_error is not None:
            report.breaker = "open"
            return True
        return False

    def _send(self, claim_id: str, payloads: Sequence[bytes]) -> _Outcome:
        outcome = _Outcome(failures=[])
        first = True
        for offset, chunk in chunk_payloads(payloads):
            if not first and not self.buffer.extend(claim_id, self.lease):
                # Lost the lease: the claim is back in the buffer; stop sending it.
                lost = TransientDeliveryError("claim lease ran out before this record was sent")
                outcome.failures.extend((offset + i, lost) for i in range(len(chunk)))
                continue
            first = False
            self._send_chunk(offset, chunk, outcome)
            if outcome.unsent_from is not None:
                # Credentials refused, or the API failing as a whole: sending the rest
                # of this claim now would only add load (and breaker failures).
                break
        return outcome

    def _send_chunk(self, offset: int, chunk: Sequence[bytes], outcome: _Outcome) -> None:
        response = self.client.post_bulk(chunk)
        outcome.requests += 1
        error = response.request_error
        if error is None:
            outcome.answered = True
            for index, record_error in response.failures or ():
                outcome.failures.append((offset + index, record_error))
            return
        if error.is_auth_error:
            outcome.auth_error = error
            outcome.unsent_from = offset
            return
        if error.retryable:
            outcome.transient_request_error = error
            outcome.failures.extend((offset + i, error) for i in range(len(chunk)))
            outcome.unsent_from = offset + len(chunk)
            return
        outcome.answered = True
        if len(chunk) > 1:
            # A whole bulk request refused for good: find the culprit by halves
            # rather than dead-letter the records that were fine.
            half = len(chunk) // 2
            self._send_chunk(offset, chunk[:half], outcome)
            if outcome.unsent_from is None:
                self._send_chunk(offset + half, chunk[half:], outcome)
            return
        outcome.failures.append((offset, error))
