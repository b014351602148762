"""The adaptive concurrency limit: its rules without I/O, against model servers in
simulated time, and its shared figure in a real Redis.

The sandbox versions of the model servers (a capacity that queues, a 429 beyond N
requests at once) drive the real flusher in ``test_adaptive_flush.py``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from _concurrency_model import (
    Clock,
    ConcurrencyCap,
    FixedLatency,
    MemoryStore,
    Queueing,
    flushers,
    simulate,
)

from suprsend_celery.buffer.concurrency_limit import ConcurrencyReading
from suprsend_celery.buffer.redis_buffer import RedisBuffer
from suprsend_celery.buffer.sharded import ShardedBuffer
from suprsend_celery.delivery.decisions import ClaimOutcome
from suprsend_celery.exceptions import PermanentDeliveryError, TransientDeliveryError
from suprsend_celery.pipeline.concurrency import (
    BACKOFF,
    FixedConcurrency,
    GradientLimit,
    Sample,
    SharedConcurrency,
    sample_of,
    share_of,
)


def answers(limit: GradientLimit, rtt: float, count: int, now: float = 0.0) -> float:
    """Feed ``count`` answers of ``rtt`` seconds, spread over one round trip each."""
    for _ in range(count):
        now += rtt / max(1.0, limit.limit)
        limit.sample(rtt, "ok", now=now)
    return now


class TestSamples:
    """What a settled claim tells the limit."""

    def test_an_answer_is_ok_with_its_average_latency(self) -> None:
        """Two requests of 0.1 and 0.3 s: an ok sample of 0.2 s."""
        assert sample_of(ClaimOutcome(requests=2, seconds=0.4, answered=True)) == Sample(0.2, "ok")

    @pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 408, None])
    def test_refusals_and_no_answer_are_drops(self, status: int | None) -> None:
        """429, 5xx, 408 and no answer at all (a timeout, a reset) say: too much."""
        error = TransientDeliveryError("x", status_code=status)
        sample = sample_of(ClaimOutcome(requests=1, seconds=0.01, request_error=error))
        assert sample is not None and sample.signal == "drop"

    def test_a_refused_request_is_an_answer(self) -> None:
        """A whole request refused for good (400) was judged: latency is latency."""
        error = PermanentDeliveryError("bad", status_code=400)
        sample = sample_of(ClaimOutcome(requests=1, seconds=0.05, request_error=error))
        assert sample is not None and sample.signal == "ok"

    def test_no_request_or_refused_credentials_say_nothing(self) -> None:
        """An unreadable-only claim made no request; refused credentials are not load."""
        assert sample_of(ClaimOutcome()) is None
        auth = PermanentDeliveryError("no", status_code=401)
        assert sample_of(ClaimOutcome(requests=1, seconds=0.1, auth_error=auth)) is None


class TestGradientLimit:
    """The rules, one at a time."""

    def test_slow_start_doubles_each_round_trip(self) -> None:
        """At a steady latency the limit doubles per round trip until the ceiling."""
        limit = GradientLimit(8, ceiling=64)
        now = answers(limit, 0.1, 8)
        assert limit.limit == 16
        answers(limit, 0.1, 16, now)
        assert limit.limit == 32 and limit.slow_start

    def test_stays_between_floor_and_ceiling(self) -> None:
        limit = GradientLimit(100, floor=2, ceiling=20)
        assert limit.limit == 20
        for i in range(20):
            limit.sample(0.1, "drop", now=float(i))
        assert limit.limit == 2

    def test_latency_climbing_shrinks_it(self) -> None:
        """Answers twice as slow as the floor at 40 in flight: a queue of ~13 (over
        beta): the limit comes down."""
        limit = GradientLimit(40, ceiling=64)
        now = answers(limit, 0.1, 40)
        before = limit.limit
        answers(limit, 0.2, 200, now)
        assert limit.limit < before - 5
        assert not limit.slow_start

    def test_jitter_is_not_a_queue(self) -> None:
        """Latency wandering within the tolerance of its floor keeps the limit growing."""
        limit = GradientLimit(8, ceiling=64)
        now = 0.0
        for i in range(600):
            now += 0.002
            limit.sample(0.1 * (1.0 + 0.15 * ((i * 7919) % 100) / 100), "ok", now=now)
        assert limit.limit == 64

    def test_a_refusal_cuts_once_per_round_trip(self) -> None:
        """Every request of the round trip that saw the refusal fails too: one cut; a
        request sent after the cut that fails cuts again."""
        limit = GradientLimit(40)
        answers(limit, 0.1, 40)
        before = limit.limit
        limit.sample(0.05, "drop", now=10.0)
        for i in range(10):
            limit.sample(0.05, "drop", now=10.0 + i * 0.001)  # sent before the cut
        assert limit.limit == pytest.approx(before * BACKOFF)
        limit.sample(0.001, "drop", now=10.2)  # sent after it
        assert limit.limit == pytest.approx(before * BACKOFF**2)
        assert limit.refused_at == pytest.approx(before * BACKOFF)

    def test_growth_past_a_refusal_is_slow(self) -> None:
        """Back near the limit that was refused, 50 answers per request more (and once
        two past it without a refusal, the API takes more now: normal growth again)."""
        limit = GradientLimit(20, ceiling=64)
        answers(limit, 0.1, 20)
        limit.slow_start = False
        limit.sample(0.001, "drop", now=5.0)
        refused = limit.refused_at
        assert refused is not None
        answers(limit, 0.1, 100, now=5.0)
        assert refused - 1 <= limit.limit <= refused + 2

    def test_app_limited_answers_do_not_grow_it(self) -> None:
        """Answers taken with under half the window in use say nothing about more."""
        limit = GradientLimit(8)
        for i in range(50):
            limit.sample(0.1, "ok", now=i * 0.01, limited=True)
        assert limit.limit == 8

    def test_min_rtt_is_measured_anew(self) -> None:
        """An API that became slower for good is not a queue forever: the floor moves."""
        limit = GradientLimit(8)
        answers(limit, 0.05, 100)
        assert limit.min_rtt == pytest.approx(0.05)
        now = 0.0
        for _ in range(2000):
            now += 0.05
            limit.sample(0.2, "ok", now=now)
        assert limit.min_rtt > 0.15


class TestShares:
    def test_shares_add_up_to_the_limit(self) -> None:
        assert [share_of(10, 3, r) for r in range(3)] == [4, 3, 3]
        assert sum(share_of(64.9, 5, r) for r in range(5)) == 64

    def test_every_flusher_keeps_one(self) -> None:
        assert [share_of(1.5, 3, r) for r in range(3)] == [1, 1, 1]

    def test_fixed_concurrency_never_moves(self) -> None:
        fixed = FixedConcurrency(8)
        fixed.observe(ClaimOutcome(requests=1, seconds=0.1, answered=True), 8)
        assert fixed.window() == fixed.ceiling == 8


class TestModelServers:
    """Flushers against model APIs, 30 simulated seconds in a fraction of a real one."""

    @pytest.mark.parametrize("latency", [0.05, 0.1, 0.25])
    def test_a_fixed_latency_reaches_the_ceiling_in_a_few_round_trips(self, latency: float) -> None:
        clock = Clock()
        store = MemoryStore(clock)
        run = simulate(FixedLatency(latency), flushers(1, clock, store), clock, 10, store)
        reached = next(t for t, limit in run.limits if limit >= 60)
        assert reached < 5 * latency
        assert run.refused == 0

    @pytest.mark.parametrize("count", [1, 2])
    @pytest.mark.parametrize(("capacity", "latency"), [(100, 0.05), (200, 0.1), (500, 0.05)])
    def test_a_queueing_server_is_kept_busy_without_a_queue(
        self, capacity: float, latency: float, count: int
    ) -> None:
        """Throughput at the capacity; the limit a few above its bandwidth-delay
        product (capacity times latency), far from the ceiling of 64. Two flushers
        settle a few requests higher (each measures half the answers, so each notices a
        queue a little later)."""
        clock = Clock()
        store = MemoryStore(clock)
        run = simulate(Queueing(capacity, latency), flushers(count, clock, store), clock, 30, store)
        assert run.rate(5, 30) >= 0.97 * capacity
        product = capacity * (latency + 1 / capacity)
        late = [limit for t, limit in run.limits if t >= 10]
        assert product <= min(late)
        assert max(late) <= (1.5 * product + 12 if count == 1 else 2 * product + 16)

    @pytest.mark.parametrize("count", [1, 2])
    @pytest.mark.parametrize(("cap", "latency"), [(5, 0.05), (10, 0.05), (20, 0.1), (40, 0.05)])
    def test_a_server_refusing_beyond_n_sees_few_refusals(
        self, cap: int, latency: float, count: int
    ) -> None:
        """429s stay under 5% of requests after the first seconds, throughput near N
        requests per round trip, the limit near N."""
        clock = Clock()
        store = MemoryStore(clock)
        server = ConcurrencyCap(cap, latency)
        run = simulate(server, flushers(count, clock, store), clock, 30, store)
        total, refused = run.after(3)
        assert refused / total < 0.05, (refused, total)
        assert run.rate(3, 30) >= 0.85 * cap / latency
        late = [limit for t, limit in run.limits if t >= 3]
        assert 0.7 * cap <= sum(late) / len(late) <= cap + 2


class TestSharedLimit:
    """The figure in Redis (``concurrency.lua``)."""

    def test_merges_add_up_clamped(self, redis_client: Any) -> None:
        shared = RedisBuffer(redis_client, prefix="cl").concurrency_limit
        bounds = {"start": 8, "floor": 1, "ceiling": 64}
        assert shared.merge("a", 0, **bounds).limit == 8
        assert shared.merge("b", 4.5, **bounds).limit == 12.5
        assert shared.merge("a", -2, **bounds) == (10.5, 2, 0, None)
        assert shared.merge("b", 100, **bounds) == (64, 2, 1, None)
        assert shared.merge("a", -1000, **bounds).limit == 1
        reading = shared.read()
        assert reading is not None and (reading.limit, reading.flushers) == (1, 2)

    def test_a_leaving_flusher_stops_sharing(self, redis_client: Any) -> None:
        shared = RedisBuffer(redis_client, prefix="cl2").concurrency_limit
        bounds = {"start": 8, "floor": 1, "ceiling": 64}
        shared.merge("a", 0, **bounds)
        shared.merge("b", 0, **bounds)
        assert shared.merge("b", 0, leaving=True, **bounds).flushers == 1
        assert shared.merge("a", 0, **bounds) == (8, 1, 0, None)

    def test_where_the_api_refused_is_shared_until_cleared(self, redis_client: Any) -> None:
        shared = RedisBuffer(redis_client, prefix="cl4").concurrency_limit
        bounds = {"start": 8, "floor": 1, "ceiling": 64}
        assert shared.merge("a", -2, refused=11, **bounds).refused == 11
        assert shared.merge("b", 0, **bounds).refused == 11  # no news keeps it
        assert shared.merge("b", 0, refused=0, **bounds).refused is None

    def test_kept_an_hour_beside_the_breaker(self, redis_client: Any) -> None:
        """Shard 0's hash tag; forgotten an hour after the last merge; cleared with
        the buffer."""
        buffer = ShardedBuffer(redis_client, prefix="cl3", shards=3)
        buffer.concurrency_limit.merge("a", 1, start=8, floor=1, ceiling=64)
        key = buffer.shards[0].keys.concurrency
        assert key == "{cl3}:concurrency"
        assert 3500 < redis_client.ttl(key) <= 3600
        assert 3500 < redis_client.ttl(buffer.shards[0].keys.flushers) <= 3600
        buffer.clear()
        assert not redis_client.exists(key)
        assert buffer.concurrency_limit.read() is None

    def test_reading_of_a_hash(self) -> None:
        raw = {b"limit": b"12.500", b"flushers": b"2", b"updated_at": b"100.5"}
        assert ConcurrencyReading.of(raw) == ConcurrencyReading(12.5, 2, 100.5)
        assert ConcurrencyReading.of({}) is None


class TestSharedConcurrency:
    """Flushers merging through a real Redis."""

    def test_two_flushers_split_the_limit_and_merge_their_news(self, redis_client: Any) -> None:
        clock = Clock()
        shared = RedisBuffer(redis_client, prefix="sc").concurrency_limit
        a = SharedConcurrency(shared, 8, 64, clock=clock)
        b = SharedConcurrency(shared, 8, 64, clock=clock)
        assert (a.window(), b.window()) == (8, 4)  # a merged alone, then b joined
        clock.now += 1
        assert a.window() + b.window() == 8
        ok = ClaimOutcome(requests=1, seconds=0.1, answered=True)
        for _ in range(4):
            a.observe(ok, 4)  # slow start: +1 each, which a reads as +2 (two flushers)
        assert a.limit == 16
        clock.now += 1
        assert a.window() + b.window() == 12  # the merged news: a's own +4
        reading = shared.read()
        assert reading is not None and (reading.limit, reading.flushers) == (12, 2)

    def test_a_refusal_cuts_at_once_and_reaches_the_others(self, redis_client: Any) -> None:
        clock = Clock()
        shared = RedisBuffer(redis_client, prefix="sc2").concurrency_limit
        a = SharedConcurrency(shared, 40, 64, clock=clock)
        b = SharedConcurrency(shared, 40, 64, clock=clock)
        a.window()
        b.window()
        clock.now += 1
        error = TransientDeliveryError("HTTP 429", status_code=429)
        a.observe(ClaimOutcome(requests=1, seconds=0.001, request_error=error), 20)
        assert a.limit == pytest.approx(40 * BACKOFF)
        a.window()  # merges at once after a cut
        clock.now += 1
        b.window()
        assert b.limit == pytest.approx(40 * BACKOFF)
        assert b.gradient.refused_at is not None and not b.gradient.slow_start

    def test_redis_failing_leaves_the_local_limit(self) -> None:
        """A merge that fails is logged; the flusher goes on with what it knows."""
        import redis as redis_lib

        class Down:
            def merge(self, *args: Any, **kwargs: Any) -> Any:
                raise redis_lib.ConnectionError("down")

        limit = SharedConcurrency(Down(), 8, 64, clock=Clock())
        assert limit.window() == 8
        limit.leave()
        assert not math.isnan(limit.limit)


class TestThrottledSettlement:
    """What ``decide`` makes of a 429 the adaptive limit answered (``throttled``)."""

    def test_records_go_back_and_the_breaker_hears_nothing(self) -> None:
        from suprsend_celery.delivery.decisions import Batch, decide
        from suprsend_celery.delivery.retry import RetryPolicy

        items = [b'{"n": %d}' % i for i in range(4)]
        error = TransientDeliveryError("HTTP 429", status_code=429)
        outcome = ClaimOutcome(requests=1, seconds=0.01, request_error=error, throttled=True)
        outcome.failures = [(i, error) for i in range(4)]
        outcome.unsent_from = 4
        settlement = decide(outcome, Batch.of(items), RetryPolicy())
        assert list(settlement.back) == items
        assert settlement.retries == [] and settlement.dead == []
        assert settlement.verdict == "" and settlement.sent == 0

    def test_at_the_floor_a_429_is_a_failure_again(self, redis_client: Any) -> None:
        """With the limit at its floor, a 429 is no longer throttled: retried, and the
        breaker hears it."""
        shared = RedisBuffer(redis_client, prefix="floor").concurrency_limit
        limit = SharedConcurrency(shared, 1, 64, clock=Clock())
        error = TransientDeliveryError("HTTP 429", status_code=429)
        outcome = ClaimOutcome(requests=1, seconds=0.01, request_error=error)
        limit.observe(outcome, 1)
        assert not outcome.throttled
        with_retry_after = TransientDeliveryError("HTTP 429", status_code=429, retry_after=2.0)
        high = SharedConcurrency(shared, 20, 64, clock=Clock())
        outcome = ClaimOutcome(requests=1, seconds=0.01, request_error=with_retry_after)
        high.observe(outcome, 1)
        assert not outcome.throttled  # Retry-After: the breaker's
        outcome = ClaimOutcome(requests=1, seconds=0.01, request_error=error)
        high.observe(outcome, 1)
        assert outcome.throttled
