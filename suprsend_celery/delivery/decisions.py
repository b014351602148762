"""What to do once SuprSend answered (or did not): pure functions, no I/O, one per path.

The buffered path: ``decide(outcome, batch, policy)`` turns how a claim's bulk requests went into a
``Settlement``: which records are acknowledged, which are retried and when, which are
dead-lettered, which go back to the buffer untouched, and what the shared breaker
hears. The flusher applies it to Redis in one ``buffer.settle`` and logs it; the
rules live here, where tests drive them without Redis or HTTP:

- a record SuprSend accepted is acknowledged;
- a record refused transiently (a per-record 5xx, or its whole request failing with a
  retryable error) is retried with backoff, a ``Retry-After`` as the floor, until its
  attempts exceed ``max_retries``; then it is dead-lettered ("gave up after N attempts");
- a record refused for good (a per-record 4xx) is dead-lettered on its first attempt;
- records SuprSend never judged (refused credentials, a request after one that failed
  as a whole, a lease lost between requests, a 429 the adaptive concurrency limit
  answered by slowing down: ``throttled``) go back to the buffer untouched: no attempt
  counted, never dead-lettered;
- the breaker hears ``auth`` (credentials refused), ``fail`` (a request failed as a
  whole, but for a 429 the adaptive concurrency limit answered by slowing down:
  ``throttled``), ``ok`` (SuprSend answered), or nothing.

The direct path: ``decide_direct(error, attempt, policy)`` turns how one ``track_event``
run's request went into a ``DirectDecision`` (``tasks.attempt`` carries it out):

- no error: ``sent``;
- refused credentials or a wrong URL (``is_config_error``): ``keep``, the event moves
  to the buffer and is sent once the settings are fixed, never dead-lettered;
- a retryable error within ``max_retries``: ``retry`` after a backoff with jitter, a
  ``Retry-After`` as the floor, capped by the policy (below the broker's visibility
  timeout: the task passes that cap as ``backoff_max``);
- anything else: ``dead`` ("gave up after N attempts" for a transient error).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..events.records import join_item, key_of, parse_item, split_item
from ..exceptions import DeliveryError, PermanentDeliveryError
from .dead_letters import dead_letter_entry, parse_dead_letter
from .retry import RetryPolicy, failure_reason, should_retry
from .tally import Tally

__all__ = [
    "Batch",
    "ClaimOutcome",
    "DeadDecision",
    "DirectAction",
    "DirectDecision",
    "RetryDecision",
    "Settlement",
    "Verdict",
    "decide",
    "decide_direct",
]

_REASON_LIMIT = 200

Verdict = Literal["ok", "fail", "auth", ""]
"""What a settled claim tells the shared breaker (``""``: nothing either way)."""


@dataclass(frozen=True, slots=True)
class Batch:
    """A claim's records as stored (``items``), as sent (``payloads``) and their attempts.

    ``unreadable``: stored items that are not records at all (junk written into Redis by
    something else); they are never sent and are dead-lettered byte for byte, so they
    cannot hold up the records claimed with them. ``traceparents``: the trace context
    each record was accepted in (None: none), kept on its retries.
    """

    items: Sequence[bytes]
    payloads: Sequence[bytes]
    attempts: Sequence[int] | None = None
    unreadable: Sequence[bytes] = ()
    traceparents: Sequence[bytes | None] = ()

    @classmethod
    def of(cls, items: Sequence[bytes]) -> Batch:
        """Split stored items; records never retried (the usual case) are used as they are."""
        # Every item lies between the least and the greatest, bytewise: when both start
        # with "{", all do (one pass in C instead of a slice per item).
        if items and min(items)[:1] == b"{" and max(items)[:1] == b"{":
            return cls(items, items)
        if not items:
            return cls(items, items)
        kept: list[bytes] = []
        payloads: list[bytes] = []
        attempts: list[int] = []
        unreadable: list[bytes] = []
        traceparents: list[bytes | None] = []
        for item in items:
            found = parse_item(item)
            if found is None:
                unreadable.append(item)
                continue
            kept.append(item)
            attempts.append(found.attempts)
            payloads.append(found.record)
            traceparents.append(found.traceparent)
        if not any(traceparents):
            traceparents = []
        return cls(kept, payloads, attempts, unreadable, traceparents)

    def attempt(self, index: int) -> int:
        """The attempt number the last send of record ``index`` was (1-based)."""
        return (self.attempts[index] if self.attempts else 0) + 1

    def traceparent(self, index: int) -> bytes | None:
        """The trace context record ``index`` was accepted in, if any."""
        return self.traceparents[index] if self.traceparents else None


@dataclass(slots=True)
class ClaimOutcome:
    """How one claim's requests went, as the sender saw them."""

    #: ``(index, error)`` of every record SuprSend did not accept, in the claim's order.
    failures: list[tuple[int, DeliveryError]] = field(default_factory=list)
    requests: int = 0
    #: SuprSend answered at least one request with a verdict (success or a permanent
    #: refusal): the API is up, which closes the breaker.
    answered: bool = False
    #: A request that failed as a whole with a retryable error: its records share it.
    request_error: DeliveryError | None = None
    auth_error: DeliveryError | None = None
    #: Index of the first record left unsent (credentials refused, the API failing, the
    #: lease lost): those records go back to the buffer untouched.
    unsent_from: int | None = None
    #: The requests' status classes and durations, counted in Redis by the settle.
    tally: Tally = field(default_factory=Tally)
    #: Seconds the requests took, summed: the adaptive concurrency's latency sample;
    #: and when the first was sent (``time.monotonic``), to tell a refusal of a request
    #: sent before the limit's last cut from a new one.
    seconds: float = 0.0
    started: float = 0.0
    #: A 429 without ``Retry-After`` that the adaptive concurrency limit took as its
    #: signal to slow down (it was above its floor): the breaker does not count it too.
    throttled: bool = False


@dataclass(frozen=True, slots=True)
class RetryDecision:
    index: int
    attempt: int
    delay: float
    item: bytes = field(repr=False)
    error: DeliveryError

    @property
    def key(self) -> str | None:
        """The record's idempotency key (a whole-request error names none): for logs."""
        return self.error.idempotency_key or key_of(split_item(self.item)[1])


@dataclass(frozen=True, slots=True)
class DeadDecision:
    index: int
    attempt: int
    reason: str
    entry: bytes = field(repr=False)
    error: DeliveryError

    @property
    def key(self) -> str | None:
        """The record's idempotency key, from the dead letter's header: for logs."""
        return self.error.idempotency_key or parse_dead_letter(self.entry).idempotency_key


@dataclass(slots=True)
class Settlement:
    """What ``buffer.settle`` does with one claim, and what the run reports."""

    sent: int = 0
    retries: list[RetryDecision] = field(default_factory=list)
    dead: list[DeadDecision] = field(default_factory=list)
    back: Sequence[bytes] = ()
    verdict: Verdict = ""
    #: The breaker stays open at least this long (the server's ``Retry-After``).
    open_for: float = 0.0
    #: Why the breaker heard ``fail`` or ``auth``; never holds a record's content.
    reason: str = ""

    def retry_items(self) -> list[tuple[float, bytes]]:
        return [(round(r.delay, 3), r.item) for r in self.retries]

    def dead_entries(self) -> list[bytes]:
        return [d.entry for d in self.dead]


def decide(outcome: ClaimOutcome, batch: Batch, policy: RetryPolicy) -> Settlement:
    """The settlement of one claim whose requests went as ``outcome`` says."""
    unsent = outcome.unsent_from
    failures = outcome.failures
    if outcome.throttled:
        # A throttled request's records were never judged: back untouched, like the
        # records after them, rather than retried later with an attempt counted.
        shared = outcome.request_error
        first = next((i for i, error in failures if error is shared), None)
        if first is not None:
            unsent = first if unsent is None else min(unsent, first)
    settlement = Settlement()
    if unsent is not None:
        settlement.back = batch.items[unsent:]
        failures = [(i, e) for i, e in failures if i < unsent]
    for index, error in failures:
        attempt = batch.attempt(index)
        payload = batch.payloads[index]
        if should_retry(error, attempt, policy.max_retries):
            delay = policy.delay(attempt, error.retry_after)
            item = join_item(attempt, payload, batch.traceparent(index))
            settlement.retries.append(RetryDecision(index, attempt, delay, item, error))
            continue
        reason = failure_reason(error, attempt)
        entry = dead_letter_entry(
            payload,
            error=reason,
            status_code=error.status_code,
            attempts=attempt,
            source="buffer",
            idempotency_key=error.idempotency_key,
        )
        settlement.dead.append(DeadDecision(index, attempt, reason, entry, error))
    settlement.sent = len(batch.items) - len(settlement.back) - len(failures)
    settlement.dead.extend(_unreadable(item) for item in batch.unreadable)
    _judge(outcome, settlement)
    return settlement


UNREADABLE = "not a record: an item in the buffer that no producer of ours wrote"


def _unreadable(item: bytes) -> DeadDecision:
    """A dead letter for a stored item that is not a record, its bytes kept as they are."""
    error = PermanentDeliveryError(UNREADABLE)
    entry = dead_letter_entry(item, error=UNREADABLE, status_code=None, attempts=0, source="buffer")
    return DeadDecision(-1, 0, UNREADABLE, entry, error)


def _judge(outcome: ClaimOutcome, settlement: Settlement) -> None:
    """What the breaker hears: credentials refused beat a failing API beat an answer."""
    if outcome.auth_error is not None:
        settlement.verdict = "auth"
        settlement.reason = str(outcome.auth_error)[:_REASON_LIMIT]
    elif outcome.request_error is not None:
        # A throttled 429 is the API asking for fewer requests at once, which the
        # adaptive limit gives it: not a failing API (its records are retried all the same).
        settlement.verdict = "" if outcome.throttled else "fail"
        settlement.open_for = outcome.request_error.retry_after or 0.0
        settlement.reason = str(outcome.request_error)[:_REASON_LIMIT]
    elif outcome.answered:
        settlement.verdict = "ok"


# -- the direct path ---------------------------------------------------------------------

DirectAction = Literal["sent", "retry", "dead", "keep"]
"""What a ``track_event`` run does with its record once its request is done."""


@dataclass(frozen=True, slots=True)
class DirectDecision:
    """The verdict on one ``track_event`` run (see ``decide_direct``)."""

    action: DirectAction
    #: The attempt this run was (1-based): the task result's ``attempts``.
    attempt: int
    #: ``retry``: seconds until the next attempt.
    countdown: float = 0.0
    #: Why, in words that never hold the record: for a retry the error and when it goes
    #: again, for a dead letter ``failure_reason``, for ``keep`` the error.
    reason: str = ""


def decide_direct(error: DeliveryError | None, attempt: int, policy: RetryPolicy) -> DirectDecision:
    """What a ``track_event`` run whose ``attempt``-th request failed with ``error``
    (None: SuprSend accepted it) does next."""
    if error is None:
        return DirectDecision("sent", attempt)
    if should_retry(error, attempt, policy.max_retries):
        countdown = policy.delay(attempt, error.retry_after)
        reason = f"{error}; retry {attempt}/{policy.max_retries} in {countdown:.1f}s"
        return DirectDecision("retry", attempt, countdown, reason)
    if error.is_config_error and not error.retryable:
        return DirectDecision("keep", attempt, reason=str(error))
    return DirectDecision("dead", attempt, reason=failure_reason(error, attempt))
