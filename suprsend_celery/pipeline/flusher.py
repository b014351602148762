"""Drain the buffer: claim batches, send them in bulk, settle each record. No Celery here.

The loop the ``flush_buffer`` task and ``suprsend-celery flush`` both run::

    claim (lease) ─► post_bulk ─► decide ─► settle: ack successes, schedule transient
                     (a thread)   (pure)              failures, dead-letter permanent
                                                      ones, feed the breaker

A batch is acknowledged only after SuprSend answered for it, in the same Lua step
that schedules its retries, so a flusher killed at any instant leaves its claims to
expire and return to the buffer; re-sent records carry their idempotency keys and
SuprSend skips them.

Concurrency: one run keeps up to ``concurrency`` claims in flight, each its own claim
under its own lease. Only the HTTP requests run in a small thread pool (one per
Flusher, kept across runs, rebuilt after a fork); claims, lease renewals and settles
all happen in the calling thread, which waits for whichever request finishes first and
settles that claim at once. So Redis sees one flusher's writes in order, the decisions
(``delivery.decisions.decide``) need no lock, and a settle that opens the breaker (a 429's
``Retry-After``, too many failures, refused credentials) is seen by the very next
claim: new requests stop at once while those in flight finish and settle. Each pool
thread has its own HTTP session and keep-alive connection (the client's sessions are
per thread), so threads never wait for each other's connections. Threads cost little
CPU here: the calling thread does what it did before, the pool threads do exactly the
request a sequential flusher would have done, and the hand-off is one future per batch.

With a ``concurrency_max``, the window of claims in flight is no longer fixed: it comes
from ``concurrency.SharedConcurrency`` (``concurrency`` is where it starts), adapted to
the API's latency and refusals and shared with the buffer's other flushers; each
settled claim feeds it a sample.

On duty (``duty``, the ``flush_buffer`` task's runs): a run that finds the buffer empty
waits on Redis for new records rather than ending, lingers while a batch fills, and
leaves after about one interval; the ``Shift`` decides all of that, this loop only
asks it how much a claim must ``fill`` and lets it wait when nothing else is to do.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Literal

import redis

from .. import defaults
from ..buffer.protocol import Buffer
from ..buffer.queue import Claim
from ..delivery.client import SuprsendClient, chunk_payloads
from ..delivery.decisions import Batch, ClaimOutcome, Settlement, decide
from ..delivery.retry import RetryPolicy, past_dedup_window
from ..delivery.tally import FLUSH_SECONDS, PAST_WINDOW, Tally
from ..delivery.tracing import ClaimSpans, claim_spans, traced_flush
from . import signals
from .concurrency import ConcurrencyLimit, FixedConcurrency, SharedConcurrency
from .duty import DutyPlan, Shift

__all__ = ["FlushReport", "Flusher"]

logger = logging.getLogger(__name__)


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
    #: "open" when this run stopped because the shared breaker is open.
    breaker: Literal["closed", "open"] = "closed"
    #: ``suprsend_dry_run``: ``sent`` counts what would have been sent.
    dry_run: bool = False

    def as_result(self) -> dict[str, float | int]:
        result: dict[str, float | int] = {
            "sent": self.sent,
            "retry_scheduled": self.retry_scheduled,
            "dead_lettered": self.dead_lettered,
            "remaining": self.remaining,
            "seconds": round(self.seconds, 3),
        }
        if self.dry_run:
            result["dry_run"] = True
        return result

    def add(self, settlement: Settlement) -> None:
        self.sent += settlement.sent
        self.retry_scheduled += len(settlement.retries)
        self.dead_lettered += len(settlement.dead)
        self.returned += len(settlement.back)


@dataclass(slots=True)
class _InFlight:
    """A claim whose requests are out, and when its lease was last renewed."""

    claim: Claim
    batch: Batch
    renewed: float
    #: The spans of its bulk requests (``delivery.tracing``), ended once it is settled.
    spans: ClaimSpans


class _Run:
    """One run's limits and whether it may still claim (a ``duty.RunState``)."""

    def __init__(self, time_budget: float, max_batches: int | None, window: int) -> None:
        #: Claims allowed in flight: the concurrency, or 1 after a request failed as a
        #: whole until one succeeds again, so an outage costs the API no more requests
        #: than the breaker's threshold (or those already out) before it opens.
        self.window = window
        self.started = time.monotonic()
        self.deadline = self.started + time_budget
        self.max_batches = max_batches
        self.batches = 0
        self.stopped = False
        self.report = FlushReport()
        # On duty only (``duty.Shift`` steers these):
        #: The buffer was found empty: claim again once woken.
        self.idle = False
        #: The breaker is open: no claim before this (monotonic).
        self.parked_until = 0.0
        #: A batch is filling until ``linger_until``; no claim before ``next_look``.
        self.linger_until = 0.0
        self.next_look = 0.0
        self.lingered = False
        #: When a claim last took records (monotonic).
        self.last_taken = 0.0
        #: Seconds spent waiting with no request in flight.
        self.waited = 0.0

    def may_claim(self) -> bool:
        now = time.monotonic()
        return (
            not self.stopped
            and not self.idle
            and now >= self.parked_until
            and now >= self.next_look
            and now < self.deadline
            and (self.max_batches is None or self.batches < self.max_batches)
        )


class Flusher:
    """Sends buffered records to the bulk API; safe to run in many processes at once."""

    def __init__(
        self,
        buffer: Buffer,
        client: SuprsendClient,
        *,
        batch_size: int = defaults.FLUSH_BATCH_SIZE,
        max_retries: int = defaults.MAX_RETRIES,
        backoff_max: float = defaults.RETRY_BACKOFF_MAX,
        backoff_base: float = defaults.RETRY_BACKOFF_BASE,
        concurrency: int = defaults.FLUSH_CONCURRENCY,
        concurrency_max: int | None = None,
        lease: float | None = None,
    ) -> None:
        self.buffer = buffer
        self.client = client
        self.batch_size = max(1, min(batch_size, defaults.MAX_BULK_RECORDS))
        self.policy = RetryPolicy(max_retries, backoff_base, backoff_max)
        self.concurrency = max(1, min(concurrency, defaults.FLUSH_CONCURRENCY_MAX))
        #: Claims in flight: ``concurrency`` always, or adapted from it up to
        #: ``concurrency_max`` and shared with the buffer's other flushers.
        self.limiter: ConcurrencyLimit = (
            FixedConcurrency(self.concurrency)
            if concurrency_max is None
            else SharedConcurrency(buffer.concurrency_limit, self.concurrency, concurrency_max)
        )
        # A lease must outlast one request's worst case by a wide margin; crash tests
        # pass a short one so a killed flusher's records come back quickly.
        self.lease = lease or max(defaults.CLAIM_LEASE, 3 * sum(client.timeout))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()

    @traced_flush
    def run(
        self,
        time_budget: float = defaults.FLUSH_TIME_BUDGET,
        *,
        max_batches: int | None = None,
        progress: Callable[[FlushReport], None] | None = None,
        duty: DutyPlan | None = None,
    ) -> FlushReport:
        """Send and settle batches until the buffer is empty, the breaker opens or time is up.

        Up to ``concurrency`` claims are in flight; each is settled as its requests end.
        ``duty``: stay on duty (``duty``) when a place is free: an empty buffer or an
        open breaker is waited out, until the plan's time is up.
        """
        run = _Run(time_budget, max_batches, self.limiter.ceiling)
        recovered = self.buffer.recover_journal()
        if recovered:
            logger.warning(
                "%d direct-path record(s) were never settled by their task (a lost broker "
                "message, or a worker that died holding it); sending them from the buffer",
                recovered,
                extra={"records": recovered, "outcome": "recovered"},
            )
        in_flight: dict[Future[ClaimOutcome], _InFlight] = {}
        shift = None if duty is None else Shift.start(self.buffer, duty, run.started)
        try:
            while True:
                room = self._fill(in_flight, run, shift)
                if shift is not None and shift.on:
                    done = shift.wait(in_flight, run, self.lease, room=room)
                elif in_flight:
                    done, _ = wait(in_flight, timeout=self.lease / 3, return_when=FIRST_COMPLETED)
                else:
                    break
                for future in done:
                    entry, outcome = in_flight.pop(future), future.result()
                    self.limiter.observe(outcome, len(in_flight) + 1)
                    self._settle(entry, outcome, run)
                    if progress is not None:
                        progress(run.report)
                self._renew(in_flight.values())
        finally:
            # Only on an error (Redis failing): claims still out return after their lease.
            for future in in_flight:
                future.cancel()
            if shift is not None:
                shift.end()
        return self._finish(run)

    def close(self) -> None:
        """Stop the request threads (they are started again by the next run)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    # -- the calling thread: claims, leases, settles -------------------------------------

    def _fill(
        self, in_flight: dict[Future[ClaimOutcome], _InFlight], run: _Run, shift: Shift | None
    ) -> bool:
        """Claim batches and start their requests until ``concurrency`` are in flight.

        True when there is room for another claim (only the run's state holds it back:
        an empty buffer, a lingering batch, an open breaker), False when the requests
        out must end first."""
        duty = shift if shift is not None and shift.on else None
        while True:
            if len(in_flight) >= min(run.window, self.limiter.window()):
                return False
            if any(entry.claim.mode == "probe" for entry in in_flight.values()):
                return False  # the breaker's probe decides whether more may go
            if not run.may_claim():
                return True
            fill = duty.fill(run, self.batch_size) if duty is not None else 0
            run.parked_until = run.next_look = 0.0  # passed: this claim is what they waited for
            claim = self.buffer.claim(self.batch_size, self.lease, fill=fill)
            if claim.mode == "open":
                run.report.breaker = "open"
                if duty is not None:
                    duty.park(run, claim.wait)
                else:
                    run.stopped = True
                logger.info(
                    "breaker open: not sending for %.1fs more",
                    claim.wait,
                    extra={"outcome": "breaker_open"},
                )
                return True
            if claim.mode == "short" and duty is not None:
                duty.short(run)
                return True
            if not claim.items:
                if duty is not None:
                    duty.empty(run, claim.due_in)
                else:
                    run.stopped = True
                return True
            run.batches += 1
            run.last_taken, run.lingered = time.monotonic(), False
            batch = Batch.of(claim.items)
            entry = _InFlight(claim, batch, time.monotonic(), claim_spans(claim.id, batch))
            if not batch.payloads:  # nothing but unreadable items: dead-letter them now
                self._settle(entry, ClaimOutcome(), run)
                continue
            future = self._executor().submit(self._send, claim.id, batch.payloads, entry.spans)
            in_flight[future] = entry

    def _renew(self, in_flight: Iterable[_InFlight]) -> None:
        """Extend the leases of claims in flight for a third of a lease or more."""
        now = time.monotonic()
        for entry in in_flight:
            if now - entry.renewed >= self.lease / 3:
                # A lost lease needs nothing here: the settle finds out and says so.
                try:
                    self.buffer.extend(entry.claim.id, self.lease)
                except redis.RedisError as exc:  # the settle will fail the run if Redis is gone
                    logger.warning(
                        "could not extend the lease of claim %s: %s",
                        entry.claim.id,
                        exc,
                        extra={"claim": entry.claim.id, "records": len(entry.claim.items)},
                    )
                    continue
                entry.renewed = now

    def _settle(self, entry: _InFlight, outcome: ClaimOutcome, run: _Run) -> None:
        """Apply ``decide``'s settlement to Redis in one step, log it, count it."""
        claim, report = entry.claim, run.report
        settlement = decide(outcome, entry.batch, self.policy)
        _log_settlement(outcome, settlement, claim.id)
        report.requests += outcome.requests
        settled, change = self.buffer.settle(claim.id, settlement, outcome.tally)
        entry.spans.settled(settlement if settled else None)
        signals.send_breaker_change(self.buffer.prefix, change, settlement.reason)
        if settlement.verdict == "auth":
            run.stopped = True  # in-flight claims still finish and keep their records
        elif settlement.verdict:
            run.window = 1 if settlement.verdict == "fail" else self.limiter.ceiling
        if not settled:
            logger.warning(
                "lease of claim %s ran out before it was settled; its %d record(s) went back "
                "to the buffer and will be re-sent (SuprSend skips repeated idempotency keys)",
                claim.id,
                len(claim.items),
                extra={"claim": claim.id, "records": len(claim.items), "outcome": "returned"},
            )
            report.returned += len(claim.items)
            return
        report.add(settlement)
        if settlement.verdict == "auth":
            report.breaker = "open"
        signals.send_dead_lettered(settlement.dead_entries())

    def _finish(self, run: _Run) -> FlushReport:
        report = run.report
        report.dry_run = self.client.dry_run
        report.seconds = time.monotonic() - run.started
        counts = Tally()
        # The run's working time: its waits on duty would only say how long duty lasts.
        counts.observe(FLUSH_SECONDS, max(0.0, report.seconds - run.waited))
        report.remaining = self.buffer.finish_run(counts)  # also notes the run for `check`
        self.limiter.leave()
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
                extra={"outcome": "flushed", **report.as_result(), "returned": report.returned},
            )
        signals.flush_completed.send(sender=self.buffer.prefix, **report.as_result())
        return report

    def _executor(self) -> ThreadPoolExecutor:
        """The request threads: one pool per process (a forked child builds its own)."""
        pool = self._pool
        if pool is None or self._pool_pid != os.getpid():
            with self._pool_lock:
                if self._pool is None or self._pool_pid != os.getpid():
                    self._pool = ThreadPoolExecutor(
                        self.limiter.ceiling, thread_name_prefix="suprsend-flush"
                    )
                    self._pool_pid = os.getpid()
                pool = self._pool
        return pool

    # -- a request thread: one claim's requests ------------------------------------------

    def _send(self, claim_id: str, payloads: Sequence[bytes], spans: ClaimSpans) -> ClaimOutcome:
        outcome = ClaimOutcome()
        _note_past_window(payloads, outcome)
        first = True
        for offset, chunk in chunk_payloads(payloads):
            if not first and not self.buffer.extend(claim_id, self.lease):
                # Lost the lease: the claim is back in the buffer; send no more of it.
                outcome.unsent_from = offset
                break
            first = False
            self._send_chunk(offset, chunk, outcome, spans)
            if outcome.unsent_from is not None:
                # Credentials refused, or the API failing as a whole: sending the rest
                # of this claim now would only add load (and breaker failures).
                break
        return outcome

    def _send_chunk(
        self, offset: int, chunk: Sequence[bytes], outcome: ClaimOutcome, spans: ClaimSpans
    ) -> None:
        sent_at = time.monotonic()
        with spans.request(offset, len(chunk)) as span:
            response = self.client.post_bulk(chunk)
            span.answered(response)
        seconds = time.monotonic() - sent_at
        outcome.started = outcome.started or sent_at
        outcome.requests += 1
        outcome.seconds += seconds
        error = response.request_error
        status = 200 if error is None else error.status_code  # None: no answer at all
        outcome.tally.request("bulk", status, seconds)
        if error is None:
            outcome.answered = True
            for index, record_error in response.failures or ():
                outcome.failures.append((offset + index, record_error))
            return
        if error.is_config_error:  # refused credentials, a wrong URL: keep the records
            outcome.auth_error = error
            outcome.unsent_from = offset
            return
        if error.retryable:
            outcome.request_error = error
            outcome.failures.extend((offset + i, error) for i in range(len(chunk)))
            outcome.unsent_from = offset + len(chunk)
            return
        outcome.answered = True
        if len(chunk) > 1:
            # A whole bulk request refused for good: find the culprit by halves
            # rather than dead-letter the records that were fine.
            half = len(chunk) // 2
            self._send_chunk(offset, chunk[:half], outcome, spans)
            if outcome.unsent_from is None:
                self._send_chunk(offset + half, chunk[half:], outcome, spans)
            return
        outcome.failures.append((offset, error))


def _note_past_window(payloads: Sequence[bytes], outcome: ClaimOutcome) -> None:
    """Count records sent over 24 h after they were accepted (``past_dedup_window``)."""
    late = past_dedup_window(payloads)
    if late:
        outcome.tally.add(PAST_WINDOW, len(late))


def _log_settlement(outcome: ClaimOutcome, settlement: Settlement, claim_id: str) -> None:
    """Say what a settlement does, naming keys, never records; the fields say it again
    for log pipelines (``extra=``)."""
    shared = outcome.request_error  # one error for a whole request's records
    if outcome.auth_error is not None:
        logger.error(
            "%s; %d record(s) stay buffered and the breaker is open until the "
            "configuration is fixed",
            outcome.auth_error,
            len(settlement.back),
            extra={
                "claim": claim_id,
                "records": len(settlement.back),
                "outcome": "kept",
                "status_code": outcome.auth_error.status_code,
            },
        )
    for retry in settlement.retries:
        if retry.error is not shared:
            key = retry.key
            logger.warning(
                "record %s will be retried in %.1fs (attempt %d): %s",
                key,
                retry.delay,
                retry.attempt,
                retry.error,
                extra={
                    "idempotency_key": key,
                    "claim": claim_id,
                    "attempt": retry.attempt,
                    "outcome": "retry",
                    "status_code": retry.error.status_code,
                },
            )
    for dead in settlement.dead:
        key = dead.key
        logger.error(
            "record %s dead-lettered: %s",
            key or "(unreadable)",
            dead.reason,
            extra={
                "idempotency_key": key,
                "claim": claim_id,
                "attempt": dead.attempt,
                "outcome": "dead_lettered",
                "status_code": dead.error.status_code,
            },
        )
    if shared is not None:
        logger.warning(
            "bulk request failed (%s): %d record(s) scheduled for retry, %d returned unsent",
            shared,
            len(settlement.retries),
            len(settlement.back),
            extra={
                "claim": claim_id,
                "records": len(settlement.retries) + len(settlement.back),
                "outcome": "retry",
                "status_code": shared.status_code,
            },
        )
