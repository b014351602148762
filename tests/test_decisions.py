"""``decisions.decide``: one claim's request outcome → acks, retries, dead letters,
returns; ``decisions.decide_direct``: one ``track_event`` run's outcome → sent, retry,
dead letter or keep.

Pure: no Redis, no HTTP. Each case builds the ``ClaimOutcome`` (or the error) a sender
would have seen and checks what the flusher (or the task) would write and report.
"""

from __future__ import annotations

import json

import pytest

from suprsend_celery.delivery.dead_letters import parse_dead_letter
from suprsend_celery.delivery.decisions import Batch, ClaimOutcome, decide, decide_direct
from suprsend_celery.delivery.retry import RetryPolicy
from suprsend_celery.exceptions import DeliveryError, PermanentDeliveryError, TransientDeliveryError

POLICY = RetryPolicy(max_retries=3, backoff_base=1.0, backoff_max=60.0)


def record(i: int) -> bytes:
    return json.dumps({"$idempotency_key": f"k{i}", "event": "order_placed"}).encode()


def items(count: int, attempts: int = 0) -> list[bytes]:
    prefix = b"%d|" % attempts if attempts else b""
    return [prefix + record(i) for i in range(count)]


def transient(status: int | None = 500, retry_after: float | None = None) -> DeliveryError:
    return TransientDeliveryError(f"HTTP {status}", status_code=status, retry_after=retry_after)


def permanent(status: int = 400) -> DeliveryError:
    return PermanentDeliveryError(f"HTTP {status}: bad", status_code=status)


class TestAnswered:
    """SuprSend answered every request."""

    def test_all_accepted(self) -> None:
        """Every record acknowledged; the breaker hears ok."""
        s = decide(ClaimOutcome(requests=1, answered=True), Batch.of(items(5)), POLICY)
        assert (s.sent, s.retries, s.dead, list(s.back)) == (5, [], [], [])
        assert s.verdict == "ok"

    def test_per_record_500_is_retried(self) -> None:
        """A transient per-record error: retried as attempt 1, within the first backoff."""
        outcome = ClaimOutcome([(1, transient(500))], requests=1, answered=True)
        s = decide(outcome, Batch.of(items(3)), POLICY)
        assert s.sent == 2 and not s.dead
        [retry] = s.retries
        assert (retry.index, retry.attempt) == (1, 1)
        assert 0.0 <= retry.delay <= 1.0
        assert retry.item == b"1|" + record(1)
        assert s.verdict == "ok", "a per-record error says nothing about the API"

    def test_per_record_400_is_dead_lettered_at_once(self) -> None:
        """A permanent per-record error: dead-lettered on its first attempt, header kept."""
        outcome = ClaimOutcome([(0, permanent(400))], requests=1, answered=True)
        s = decide(outcome, Batch.of(items(2)), POLICY)
        assert s.sent == 1 and not s.retries
        [dead] = s.dead
        letter = parse_dead_letter(dead.entry)
        assert (letter.attempts, letter.status_code, letter.source) == (1, 400, "buffer")
        assert letter.record == record(0)
        assert dead.reason == "HTTP 400: bad"

    def test_attempts_carry_over(self) -> None:
        """A record that failed twice before is retried as attempt 3, delay up to 4 s."""
        outcome = ClaimOutcome([(0, transient(500))], requests=1, answered=True)
        [retry] = decide(outcome, Batch.of(items(1, attempts=2)), POLICY).retries
        assert retry.attempt == 3 and retry.item == b"3|" + record(0)
        assert 0.0 <= retry.delay <= 4.0

    def test_max_retries_reached(self) -> None:
        """A transient error on the last allowed attempt: dead-lettered, saying why."""
        outcome = ClaimOutcome([(0, transient(503))], requests=1, answered=True)
        s = decide(outcome, Batch.of(items(1, attempts=3)), POLICY)
        assert not s.retries
        [dead] = s.dead
        assert dead.reason == "gave up after 4 attempts: HTTP 503"
        assert parse_dead_letter(dead.entry).attempts == 4

    def test_mixed_records_keep_their_own_attempts(self) -> None:
        """Records retried before and fresh ones in one claim each count their own."""
        stored = [b"2|" + record(0), record(1), b"1|" + record(2)]
        failures = [(0, transient()), (1, transient()), (2, permanent())]
        s = decide(ClaimOutcome(failures, requests=1, answered=True), Batch.of(stored), POLICY)
        assert [(r.index, r.attempt) for r in s.retries] == [(0, 3), (1, 1)]
        assert [(d.index, d.attempt) for d in s.dead] == [(2, 2)]
        assert s.sent == 0


class TestWholeRequestFailures:
    """A request failed as a whole."""

    def test_503_retries_the_request_and_returns_the_rest(self) -> None:
        """Records of the failed request are retried; those never sent go back untouched."""
        error = transient(503)
        outcome = ClaimOutcome(
            [(2, error), (3, error)], requests=2, answered=True, request_error=error, unsent_from=4
        )
        batch = Batch.of(items(6, attempts=1))
        s = decide(outcome, batch, POLICY)
        assert s.sent == 2
        assert [r.index for r in s.retries] == [2, 3]
        assert list(s.back) == batch.items[4:], "returned exactly as stored, attempts kept"
        assert (s.verdict, s.open_for, s.reason) == ("fail", 0.0, "HTTP 503")

    def test_429_retry_after_is_the_floor_and_opens_the_breaker(self) -> None:
        """Retry-After: every retry waits at least that long; the breaker opens that long."""
        error = transient(429, retry_after=7.0)
        outcome = ClaimOutcome(
            [(i, error) for i in range(4)], requests=1, request_error=error, unsent_from=4
        )
        s = decide(outcome, Batch.of(items(4)), POLICY)
        assert len(s.retries) == 4 and all(r.delay >= 7.0 for r in s.retries)
        assert all(delay >= 7.0 for delay, _ in s.retry_items())
        assert (s.verdict, s.open_for) == ("fail", 7.0)

    def test_retry_after_is_capped_by_the_backoff_max(self) -> None:
        """A server asking for an hour gets the policy's cap."""
        error = transient(429, retry_after=3600.0)
        outcome = ClaimOutcome([(0, error)], requests=1, request_error=error, unsent_from=1)
        [retry] = decide(outcome, Batch.of(items(1)), POLICY).retries
        assert retry.delay == 60.0

    def test_dropped_connection_without_status(self) -> None:
        """No response at all is transient too: retried, the breaker hears a failure."""
        error = transient(None)
        outcome = ClaimOutcome([(0, error)], requests=1, request_error=error, unsent_from=1)
        s = decide(outcome, Batch.of(items(1)), POLICY)
        assert len(s.retries) == 1 and s.verdict == "fail"

    def test_401_returns_everything_untouched(self) -> None:
        """Refused credentials: nothing retried or dead-lettered, all back as stored."""
        error = PermanentDeliveryError("refused", status_code=401)
        batch = Batch.of(items(3, attempts=2))
        s = decide(ClaimOutcome(requests=1, auth_error=error, unsent_from=0), batch, POLICY)
        assert (s.sent, s.retries, s.dead) == (0, [], [])
        assert list(s.back) == batch.items
        assert (s.verdict, s.reason) == ("auth", "refused")

    def test_auth_after_an_answered_request_still_says_auth(self) -> None:
        """The first request answered, the second refused the key: auth wins the verdict."""
        error = PermanentDeliveryError("refused", status_code=403)
        outcome = ClaimOutcome(requests=2, answered=True, auth_error=error, unsent_from=2)
        s = decide(outcome, Batch.of(items(4)), POLICY)
        assert (s.sent, len(s.back), s.verdict) == (2, 2, "auth")


class TestLeaseLost:
    def test_records_after_a_lost_lease_go_back_unjudged(self) -> None:
        """The lease ran out between requests: the unsent rest is neither retried nor dead."""
        outcome = ClaimOutcome([(1, permanent())], requests=1, answered=True, unsent_from=3)
        s = decide(outcome, Batch.of(items(5)), POLICY)
        assert (s.sent, len(s.dead), len(s.back)) == (2, 1, 2)
        assert s.verdict == "ok"

    def test_failures_past_the_unsent_mark_are_ignored(self) -> None:
        """Only records that were sent can fail; a stray failure beyond is not counted."""
        outcome = ClaimOutcome([(3, transient())], requests=1, answered=True, unsent_from=2)
        s = decide(outcome, Batch.of(items(4)), POLICY)
        assert (s.sent, s.retries, len(s.back)) == (2, [], 2)


class TestNoEvidence:
    def test_nothing_answered_says_nothing_to_the_breaker(self) -> None:
        """No request went out (lease lost before the first): no verdict, all back."""
        s = decide(ClaimOutcome(unsent_from=0), Batch.of(items(2)), POLICY)
        assert (s.verdict, s.sent, len(s.back)) == ("", 0, 2)


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8])
def test_backoff_stays_within_its_window(attempt: int) -> None:
    """Attempt n waits at most base * 2^(n-1), capped."""
    policy = RetryPolicy(max_retries=10, backoff_base=0.5, backoff_max=2.0)
    for _ in range(50):
        assert 0.0 <= policy.delay(attempt, None) <= min(2.0, 0.5 * 2 ** (attempt - 1))


class TestDecideDirect:
    """``decide_direct``: what one ``track_event`` run does after its request."""

    def test_accepted_is_sent(self) -> None:
        """No error: sent, as the attempt it was."""
        decision = decide_direct(None, 2, POLICY)
        assert (decision.action, decision.attempt, decision.countdown) == ("sent", 2, 0.0)

    def test_transient_error_is_retried_within_the_first_backoff(self) -> None:
        """A 503 on attempt 1: a retry within the first backoff window, saying when."""
        decision = decide_direct(transient(503), 1, POLICY)
        assert (decision.action, decision.attempt) == ("retry", 1)
        assert 0.0 <= decision.countdown <= 1.0
        assert decision.reason == f"HTTP 503; retry 1/3 in {decision.countdown:.1f}s"

    def test_backoff_grows_with_the_attempt(self) -> None:
        """Attempt 3 waits at most base * 2^2."""
        for _ in range(50):
            decision = decide_direct(transient(500), 3, POLICY)
            assert decision.action == "retry" and 0.0 <= decision.countdown <= 4.0

    def test_dropped_connection_is_retried(self) -> None:
        """No response at all is transient too."""
        assert decide_direct(transient(None), 1, POLICY).action == "retry"

    def test_retry_after_is_the_floor(self) -> None:
        """A 429 with Retry-After: 7 waits at least 7 s."""
        decision = decide_direct(transient(429, retry_after=7.0), 1, POLICY)
        assert decision.action == "retry" and decision.countdown >= 7.0

    def test_retry_after_is_capped_by_the_policy(self) -> None:
        """A server asking for an hour gets the cap (the task passes the broker-safe one)."""
        decision = decide_direct(transient(429, retry_after=3600.0), 1, POLICY)
        assert decision.countdown == 60.0

    def test_last_allowed_attempt_still_retries(self) -> None:
        """Attempt max_retries (3) failing transiently goes once more."""
        assert decide_direct(transient(503), 3, POLICY).action == "retry"

    def test_exhausted_retries_dead_letter(self) -> None:
        """Attempt max_retries + 1 failing transiently: dead, saying how many attempts."""
        decision = decide_direct(transient(503), 4, POLICY)
        assert (decision.action, decision.attempt) == ("dead", 4)
        assert decision.reason == "gave up after 4 attempts: HTTP 503"

    def test_no_retries_allowed(self) -> None:
        """``max_retries=0``: the first transient failure is dead."""
        policy = RetryPolicy(max_retries=0, backoff_base=1.0, backoff_max=60.0)
        decision = decide_direct(transient(502), 1, policy)
        assert (decision.action, decision.reason) == ("dead", "gave up after 1 attempts: HTTP 502")

    def test_permanent_error_is_dead_at_once(self) -> None:
        """A 400: dead on the first attempt, its reason the error itself."""
        decision = decide_direct(permanent(400), 1, POLICY)
        assert (decision.action, decision.attempt, decision.reason) == ("dead", 1, "HTTP 400: bad")

    @pytest.mark.parametrize("status", [401, 403])
    def test_refused_credentials_are_kept(self, status: int) -> None:
        """401/403: kept (moved to the buffer), never dead-lettered, even past max_retries."""
        error = PermanentDeliveryError("refused", status_code=status)
        for attempt in (1, 4, 10):
            decision = decide_direct(error, attempt, POLICY)
            assert (decision.action, decision.reason) == ("keep", "refused")

    def test_wrong_url_is_kept(self) -> None:
        """A whole request's 404 (wrong suprsend_base_url) is a configuration fault: kept."""
        error = PermanentDeliveryError("HTTP 404: wrong", status_code=404, config_fault=True)
        assert decide_direct(error, 1, POLICY).action == "keep"

    def test_plain_404_is_dead(self) -> None:
        """A 404 not flagged as the URL's fault is about the event: dead."""
        assert decide_direct(permanent(404), 1, POLICY).action == "dead"
