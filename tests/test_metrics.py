"""Prometheus metrics: counted in Redis by the settling scripts, served by any exporter.

Every exporter test reads the exposition with ``prometheus_client``'s own parser and
compares it with what the sandbox saw, after real traffic with faults.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from _buffer_helpers import (
    buffer_of,
    kill_group,
    make_events,
    settlement,
    spawn,
    subprocess_env,
)
from _metrics_helpers import (
    Samples,
    counters,
    sandbox_request_classes,
    scrape,
    scrape_wsgi,
    start_exporter,
    value,
)
from celery import Celery
from conftest import in_process_worker, wait_for

from suprsend_celery import Event, buffer_events, track_event
from suprsend_celery.buffer.redis_buffer import RedisBuffer
from suprsend_celery.delivery.tally import BUCKETS, REQUEST_SECONDS, Tally, bucket_field
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.ops.exporter import SCRAPE_TIMEOUT, wsgi_app
from suprsend_celery.pipeline.runtime import get_flusher

TESTS = Path(__file__).resolve().parent

#: Whole-request failures (a 503, a dropped connection) and per-record ones (400 for
#: one event name: dead letters; five 500s: retries). Every fault is counted, so the
#: expected figures follow from what the sandbox saw.
FAULTS = {
    "paths": ["/v2/bulk/event/"],
    "rules": [
        {"status": 503, "count": 1, "after": 1},
        {"drop_connection": True, "count": 1, "after": 2},
        {
            "record_errors": [
                {"event": "bad_event", "status": 400, "message": "refused"},
                {"count": 5, "status": 500},
            ]
        },
    ],
}
GOOD, BAD = 250, 4


def metrics_hash(buffer: RedisBuffer) -> dict[str, float]:
    raw = buffer.redis.hgetall(buffer.keys.metrics)
    return {k.decode(): float(v) for k, v in raw.items()}


def records(buffer: RedisBuffer, n: int) -> list[bytes]:
    return [json.dumps({"$time": 1, "event": "e", "n": i}).encode() for i in range(n)]


class TestCountedBySettle:
    """The settling scripts count, once per claim, however often they are re-sent."""

    def test_one_settle_counts_each_outcome(self, redis_client: redis.Redis) -> None:
        """4 sent, 2 retried, 1 dead-lettered, 3 returned, and the request tally."""
        buffer = RedisBuffer(redis_client)
        buffer.push(records(buffer, 10))
        claim = buffer.claim(10, lease=30)
        tally = Tally()
        tally.request("bulk", 207, 0.04)
        assert buffer.settle(
            claim.id,
            settlement(
                retries=[(5.0, claim.items[0]), (5.0, claim.items[1])],
                dead=[b'{"error": "x"}\n' + claim.items[2]],
                back=claim.items[7:],
            ),
            tally,
        )
        assert metrics_hash(buffer) == {
            "records:sent": 4,
            "records:retried": 2,
            "records:dead_lettered": 1,
            "records:returned": 3,
            "requests:bulk:2xx": 1,
            bucket_field(f"{REQUEST_SECONDS}:bulk", 0.05): 1,
            f"hist:{REQUEST_SECONDS}:bulk:sum": pytest.approx(0.04),
        }

    def test_a_resent_settle_counts_nothing_more(self, redis_client: redis.Redis) -> None:
        """redis-py re-sends a script after a lost reply: the tombstone answers, uncounted."""
        buffer = RedisBuffer(redis_client)
        buffer.push(records(buffer, 3))
        claim = buffer.claim(3, lease=30)
        tally = Tally()
        tally.request("bulk", 200, 0.01)
        assert buffer.settle(claim.id, settlement(), tally)
        first = metrics_hash(buffer)
        assert buffer.settle(claim.id, settlement(), tally)
        assert metrics_hash(buffer) == first
        assert first["records:sent"] == 3

    def test_a_lost_lease_counts_requests_once_and_records_as_expired(
        self, redis_client: redis.Redis
    ) -> None:
        """Records whose lease ran out are counted once, as lease_expired, when recovered."""
        buffer = RedisBuffer(redis_client)
        buffer.push(records(buffer, 5))
        stale = buffer.claim(5, lease=0.05)
        time.sleep(0.1)  # let the lease run out (Redis TIME decides)
        fresh = buffer.claim(5, lease=30)  # recovers the expired claim, then takes it
        assert len(fresh.items) == 5
        tally = Tally()
        tally.request("bulk", None, 0.2)
        assert not buffer.settle(stale.id, settlement(), tally)
        assert not buffer.settle(
            stale.id, settlement(), tally
        )  # re-sent: still lost, not recounted
        counted = metrics_hash(buffer)
        assert counted["records:lease_expired"] == 5
        assert counted["requests:bulk:error"] == 1
        assert "records:sent" not in counted

    def test_buckets_include_their_upper_bound(self) -> None:
        """An observation equal to a bound lands in that bucket; beyond the last, +Inf."""
        tally = Tally()
        bounds = BUCKETS[REQUEST_SECONDS]
        tally.observe(f"{REQUEST_SECONDS}:bulk", bounds[3])
        tally.observe(f"{REQUEST_SECONDS}:bulk", bounds[-1] + 1)
        assert tally.counts[bucket_field(f"{REQUEST_SECONDS}:bulk", bounds[3])] == 1
        assert tally.counts[f"hist:{REQUEST_SECONDS}:bulk:+Inf"] == 1
        assert tally.counts[f"hist:{REQUEST_SECONDS}:bulk:sum"] == bounds[3] + bounds[-1] + 1


def drain(app: Celery, timeout: float = 60.0) -> None:
    """Run the app's flusher in-process until nothing is left to send."""
    flusher = get_flusher(app)
    buffer = buffer_of(app)

    def step() -> bool:
        flusher.run(time_budget=5.0)
        return buffer.remaining() == 0

    wait_for(step, timeout=timeout, interval=0.1, message="the buffer to drain")


def assert_agrees_with_sandbox(samples: Samples, sandbox: Sandbox) -> None:
    """Counters equal what the sandbox saw, request by request and record by record."""
    stats = sandbox.stats()
    classes = sandbox_request_classes(sandbox, "/v2/bulk/event/")
    assert classes["5xx"] == 1 and classes["error"] == 1, classes
    for klass in ("2xx", "4xx", "5xx", "error"):
        got = value(samples, "suprsend_celery_requests_total", path="bulk", status_class=klass)
        assert got == classes.get(klass, 0), klass
    total = sum(classes.values())
    assert value(samples, "suprsend_celery_request_duration_seconds_count", path="bulk") == total
    # Whole-request failures retry all their records; five records failed with a 500.
    failed_whole = sum(
        r.records or 0
        for r in sandbox.requests()
        if r.path.endswith("/v2/bulk/event/") and (r.status is None or r.status >= 500)
    )
    assert value(samples, "suprsend_celery_records_total", outcome="retried") == failed_whole + 5
    assert value(samples, "suprsend_celery_records_total", outcome="sent") == (
        stats["events_processed"] + stats["duplicates_skipped"]
    )
    assert stats["events_processed"] == GOOD
    assert value(samples, "suprsend_celery_records_total", outcome="dead_lettered") == BAD
    assert value(samples, "suprsend_celery_dead_letters") == BAD
    assert value(samples, "suprsend_celery_pending_records") == 0
    assert value(samples, "suprsend_celery_redis_up") == 1


class TestExporter:
    """The exposition after real traffic with faults, through prometheus_client's parser."""

    def test_wsgi_app_after_faults(self, celery_app: Celery, sandbox: Sandbox) -> None:
        """An in-process flusher under faults; the mounted WSGI app serves matching figures."""
        sandbox.set_faults(FAULTS)
        buffer_events(make_events(GOOD) + make_events(BAD, name="bad_event"), app=celery_app)
        drain(celery_app)
        samples = scrape_wsgi(wsgi_app(celery_app))
        assert_agrees_with_sandbox(samples, sandbox)
        assert value(samples, "suprsend_celery_flush_duration_seconds_count") >= 2
        assert value(samples, "suprsend_celery_last_flush_timestamp_seconds") == pytest.approx(
            time.time(), abs=30
        )
        assert value(samples, "suprsend_celery_breaker_state", state="closed") == 1
        assert value(samples, "suprsend_celery_direct_events_total", outcome="sent") == 0

    def test_redis_down_is_redis_up_zero(self, celery_app: Celery) -> None:
        """A scrape while Redis does not answer still succeeds, with redis_up 0 only."""
        from suprsend_celery.ops.exporter import BufferCollector, CollectorRegistry
        from suprsend_celery.ops.exporter import make_wsgi_app as prometheus_wsgi

        dead = RedisBuffer(redis.Redis(port=1, socket_connect_timeout=1))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(BufferCollector(dead))
        samples = scrape_wsgi(prometheus_wsgi(registry))
        assert samples == {("suprsend_celery_redis_up", ()): 0.0}

    @pytest.mark.slow
    def test_a_hung_redis_is_redis_up_zero_in_bounded_time(
        self, app_factory: Callable[..., Celery], silent_port: int
    ) -> None:
        """Redis accepts connections but never answers: the scrape still answers in time."""
        app = app_factory(suprsend_redis_url=f"redis://127.0.0.1:{silent_port}/0")
        started = time.monotonic()
        samples = scrape_wsgi(wsgi_app(app))
        assert samples == {("suprsend_celery_redis_up", ()): 0.0}
        assert time.monotonic() - started < SCRAPE_TIMEOUT * 2 + 1


class TestDirectPath:
    def test_direct_sends_retries_and_dead_letters(
        self, celery_app: Celery, sandbox: Sandbox
    ) -> None:
        """track_event's outcomes and requests are counted as the sandbox saw them."""
        sandbox.set_faults(
            {
                "paths": ["/v2/event/"],
                "rules": [{"status": 503, "count": 2}, {"status": 400, "count": 1}],
            }
        )
        outcomes = []
        # Retries publish from pool threads: close their result connections as tasks end.
        with in_process_worker(celery_app, concurrency=4, close_results_after_tasks=True):
            results = [track_event.delay(Event(f"u{i}", "signed_up")) for i in range(10)]
            for result in results:
                try:
                    outcomes.append(result.get(timeout=60)["status"])
                except Exception as exc:
                    outcomes.append(type(exc).__name__)
        assert outcomes.count("success") == 9
        samples = scrape_wsgi(wsgi_app(celery_app))
        direct = {
            o: value(samples, "suprsend_celery_direct_events_total", outcome=o)
            for o in ("sent", "retried", "dead_lettered", "kept")
        }
        assert direct == {"sent": 9, "retried": 2, "dead_lettered": 1, "kept": 0}
        classes = sandbox_request_classes(sandbox, "/v2/event/")
        assert classes == {"2xx": 9, "5xx": 2, "4xx": 1}
        for klass, n in classes.items():
            assert (
                value(samples, "suprsend_celery_requests_total", path="direct", status_class=klass)
                == n
            )
        assert value(samples, "suprsend_celery_request_duration_seconds_count", path="direct") == 12
        assert value(samples, "suprsend_celery_journal_records") == 0


@pytest.mark.slow
class TestSharedByEveryProcess:
    def test_two_flushers_and_an_exporter_restart(
        self,
        app_factory: Callable[..., Celery],
        redis_url: str,
        sandbox: Sandbox,
        tmp_path: Path,
    ) -> None:
        """Two flusher processes drain under faults; two exporters, one restarted, agree."""
        app = app_factory()
        sandbox.set_faults(FAULTS)
        args = [str(TESTS / "_flusher_proc.py"), redis_url, sandbox.url, "30", "40"]
        flushers = [spawn(args, subprocess_env(), tmp_path / f"f{i}.log") for i in range(2)]
        env = subprocess_env(SUPRSEND_BASE_URL=sandbox.url, CELERY_BROKER_URL=redis_url)
        exporter, url = start_exporter(env, tmp_path / "e1.log")
        other, other_url = start_exporter(env, tmp_path / "e2.log")
        try:
            buffer_events(make_events(GOOD) + make_events(BAD, name="bad_event"), app=app)
            buffer = buffer_of(app)
            during = scrape(url)
            wait_for(
                lambda: buffer.remaining() == 0 and sandbox.stats()["events_processed"] == GOOD,
                timeout=90,
                interval=0.1,
                message="two flushers to drain the buffer",
            )
            for proc in flushers:
                kill_group(proc)
            before = scrape(url)
            assert counters(scrape(other_url)) == counters(before), "exporters disagree"
            assert_agrees_with_sandbox(before, sandbox)
            assert all(before[k] >= v for k, v in counters(during).items()), "a counter went down"
            sent_by = {r.connection for r in sandbox.requests()}
            assert len(sent_by) >= 2, "both flushers sent"
            exporter.terminate()
            assert exporter.wait(timeout=10) == 0
            exporter, url = start_exporter(env, tmp_path / "e3.log")
            after = scrape(url)
            assert counters(after) == counters(before), "a restart reset or doubled a counter"
        finally:
            for proc in (*flushers, exporter, other):
                proc.kill()
                proc.wait(timeout=10)
