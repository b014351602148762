"""The real flusher finding its speed against the sandbox's load models.

Real Redis, the real sandbox as three kinds of API: one that answers after a fixed
latency however many requests it gets (the limit grows to use it), one with a fixed
capacity of requests a second beyond which answers queue and slow down (the limit
settles near capacity times latency, and the API is kept busy), and one that answers
429 beyond N requests at once (the limit settles near N, with few refusals). Two
flushers share one limit. Every event arrives once. Batches of 10 records keep the
sandbox's own work small.
"""

from __future__ import annotations

import json
import statistics
import threading
from collections.abc import Callable
from typing import Any

import pytest
from _buffer_helpers import EMPTY, processed_keys, redis_state
from celery import Celery
from conftest import WORKSPACE_KEY, WORKSPACE_SECRET, wait_for

from suprsend_celery import ConfigurationError, Event, buffer_events
from suprsend_celery.buffer.redis_buffer import RedisBuffer
from suprsend_celery.delivery.client import SuprsendClient
from suprsend_celery.dev.sandbox import RequestRecord, Sandbox
from suprsend_celery.pipeline.concurrency import FixedConcurrency, SharedConcurrency
from suprsend_celery.pipeline.flusher import Flusher, FlushReport
from suprsend_celery.pipeline.runtime import get_flusher
from suprsend_celery.pipeline.settings import get_settings


@pytest.fixture
def client(sandbox: Sandbox) -> SuprsendClient:
    return SuprsendClient(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=sandbox.url, timeout=5)


def fill(buffer: RedisBuffer, client: SuprsendClient, count: int) -> list[str]:
    accepted = [client.accept(Event(f"user-{i}", "order_placed", {"n": i})) for i in range(count)]
    buffer.push([a.payload for a in accepted])
    return [a.idempotency_key for a in accepted]


def adaptive(buffer: RedisBuffer, client: SuprsendClient) -> Flusher:
    """A flusher as the settings make it (start 8, ceiling 64), with quick retries."""
    return Flusher(
        buffer,
        client,
        batch_size=10,
        concurrency=8,
        concurrency_max=64,
        backoff_base=0.05,
        backoff_max=0.5,
    )


def drain(
    flushers: list[Flusher], buffer: RedisBuffer, seconds: float = 60
) -> list[list[FlushReport]]:
    """Run the flushers side by side until nothing is left to send (retries included);
    each one's reports."""
    reports: list[list[FlushReport]] = [[] for _ in flushers]

    def one(flusher: Flusher, mine: list[FlushReport]) -> None:
        while buffer.remaining():
            mine.append(flusher.run(seconds))

    pairs = zip(flushers, reports, strict=True)
    threads = [threading.Thread(target=one, args=pair) for pair in pairs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    assert buffer.remaining() == 0
    return reports


def after(log: list[RequestRecord], seconds: float) -> list[RequestRecord]:
    """The requests that arrived ``seconds`` or more after the first one."""
    start = log[0].received_at
    return [r for r in log if r.received_at >= start + seconds]


def rate(log: list[RequestRecord]) -> float:
    """Requests answered 2xx per second over the span of ``log``."""
    ok = [r for r in log if r.status is not None and r.status < 300]
    return len(ok) / (log[-1].received_at - log[0].received_at)


def limit_of(buffer: RedisBuffer) -> float:
    reading = buffer.concurrency_limit.read()
    assert reading is not None
    return reading.limit


def test_at_a_fixed_latency_the_limit_grows_past_the_start(
    redis_client: Any, sandbox: Sandbox, client: SuprsendClient
) -> None:
    """250 ms per answer whatever the load: from 8 in flight to 32 and more within a
    few round trips, every event once (a long latency, so that the sandbox's own CPU,
    on the machine the test shares, is no queue to speak of)."""
    buffer = RedisBuffer(redis_client, prefix="grow")
    keys = fill(buffer, client, 4000)
    sandbox.set_faults([{"delay": 0.25}])
    drain([adaptive(buffer, client)], buffer)
    assert sandbox.stats()["max_concurrent_requests"] >= 32
    assert limit_of(buffer) >= 32
    assert processed_keys(sandbox) == dict.fromkeys(keys, 1)


@pytest.mark.slow
def test_a_server_at_capacity_is_kept_busy_without_a_queue(
    redis_client: Any, sandbox: Sandbox, client: SuprsendClient
) -> None:
    """100 requests a second at 50 ms, beyond which answers queue: after the first
    second it delivers at 80% of the capacity or more, answers stay near their own
    latency (a fixed 64 in flight would wait 0.6 s each), and the limit settles near
    the capacity times the latency (6), not at the ceiling."""
    buffer = RedisBuffer(redis_client, prefix="capacity")
    keys = fill(buffer, client, 3500)
    sandbox.set_faults({"capacity": 100, "rules": [{"delay": 0.05}]})
    drain([adaptive(buffer, client)], buffer)
    log = after(sandbox.requests(), 1.0)
    assert rate(log) >= 80, f"{rate(log):.0f} requests/s"
    assert statistics.median(r.duration for r in log) < 0.25
    assert 6 <= limit_of(buffer) <= 30
    assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
    assert sandbox.stats()["duplicates_skipped"] == 0
    assert redis_state(buffer) == EMPTY


@pytest.mark.slow
def test_a_server_refusing_beyond_n_at_once_sees_few_429s(
    redis_client: Any, sandbox: Sandbox, client: SuprsendClient
) -> None:
    """429 beyond 8 requests at once (no Retry-After): after the first second under
    5% of requests are refused, the limit settles near 8, every event arrives once
    (the refused ones after their retry) and none twice."""
    buffer = RedisBuffer(redis_client, prefix="cap8")
    keys = fill(buffer, client, 3000)
    sandbox.set_faults({"max_concurrent": 8, "rules": [{"delay": 0.05}]})
    drain([adaptive(buffer, client)], buffer)
    log = after(sandbox.requests(), 1.0)
    refused = sum(1 for r in log if r.status == 429)
    assert refused / len(log) < 0.05, f"{refused} of {len(log)} refused"
    assert 5 <= limit_of(buffer) <= 11
    assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
    assert sandbox.stats()["duplicates_skipped"] == 0
    assert redis_state(buffer) == EMPTY


@pytest.mark.slow
def test_two_flushers_share_one_limit(
    redis_client: Any, sandbox: Sandbox, client: SuprsendClient
) -> None:
    """Two flushers against a server refusing beyond 10 at once: the shared limit
    counts them both and settles near 10 for the two together (not 10 each); under 5%
    refused after the first second; every event once."""
    buffer = RedisBuffer(redis_client, prefix="two")
    keys = fill(buffer, client, 6000)
    sandbox.set_faults({"max_concurrent": 10, "rules": [{"delay": 0.05}]})
    flushers = [adaptive(buffer, client), adaptive(buffer, client)]
    sharing: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            reading = buffer.concurrency_limit.read()
            if reading is not None:
                sharing.append(reading.flushers)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        reports = drain(flushers, buffer)
    finally:
        done.set()
        watcher.join()
    assert 2 in sharing, sharing
    log = after(sandbox.requests(), 1.0)
    refused = sum(1 for r in log if r.status == 429)
    assert refused / len(log) < 0.05, f"{refused} of {len(log)} refused"
    assert 6 <= limit_of(buffer) <= 13
    assert all(sum(r.sent for r in mine) > 0 for mine in reports)
    assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
    assert sandbox.stats()["duplicates_skipped"] == 0


def test_retry_after_still_wins(
    redis_client: Any, sandbox: Sandbox, client: SuprsendClient
) -> None:
    """A 429 with Retry-After opens the breaker: whatever the limit says, no request
    goes out during the pause."""
    buffer = RedisBuffer(redis_client, prefix="ra")
    keys = fill(buffer, client, 600)
    sandbox.set_faults(
        [{"delay": 0.05}, {"status": 429, "retry_after": "1", "after": 12, "count": 1}]
    )
    flusher = adaptive(buffer, client)
    assert flusher.run(10).breaker == "open"
    opened_at, until = (
        float(v or 0) for v in redis_client.hmget(buffer.keys.breaker, "opened_at", "until")
    )
    wait_for(lambda: flusher.run(10).remaining == 0, timeout=30, interval=0.1)
    log = sandbox.requests()
    late = [r for r in log if opened_at + 0.2 < r.received_at < until - 0.05]
    assert late == [], f"{len(late)} request(s) sent during the Retry-After pause"
    assert processed_keys(sandbox) == dict.fromkeys(keys, 1)


class TestShown:
    """The limit in ``status`` and the exporter; the settings that shape it."""

    def test_status_and_exporter_show_the_limit(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """Before any flusher adapted: none (the table says where one starts); after a
        flush run: the limit, and no flusher sharing it now that the run has ended."""
        from _metrics_helpers import scrape_wsgi, value
        from click.testing import CliRunner

        from suprsend_celery.ops.cli import cli
        from suprsend_celery.ops.exporter import wsgi_app

        app = app_factory()
        buffer_events([Event(f"u{i}", "signed_up") for i in range(3000)], app=app)
        before = json.loads(CliRunner().invoke(cli, ["status", "--json"], obj=app).stdout)
        assert (before["concurrency_limit"], before["concurrency_flushers"]) == (None, 0)
        table = CliRunner().invoke(cli, ["status"], obj=app).stdout
        assert "flushers start at suprsend_flush_concurrency" in table
        assert value(scrape_wsgi(wsgi_app(app)), "suprsend_celery_flush_concurrency_limit") == 0

        sandbox.set_faults([{"delay": 0.02}])
        assert get_flusher(app).run(10).sent == 3000
        after = json.loads(CliRunner().invoke(cli, ["status", "--json"], obj=app).stdout)
        assert 8 < after["concurrency_limit"] <= 64
        assert after["concurrency_flushers"] == 0  # the run ended and said so
        assert (
            "requests in flight (no flusher now)"
            in CliRunner().invoke(cli, ["status"], obj=app).stdout
        )
        samples = scrape_wsgi(wsgi_app(app))
        limit = value(samples, "suprsend_celery_flush_concurrency_limit")
        assert limit == after["concurrency_limit"]
        assert value(samples, "suprsend_celery_flush_concurrency_flushers") == 0

    def test_the_settings_reach_the_flusher(self, app_factory: Callable[..., Celery]) -> None:
        """Adaptive by default, from suprsend_flush_concurrency up to the max; fixed
        when adaptation is off."""
        flusher = get_flusher(app_factory(suprsend_flush_concurrency_max=32))
        assert isinstance(flusher.limiter, SharedConcurrency)
        assert (flusher.limiter.start, flusher.limiter.ceiling) == (8, 32)
        fixed = get_flusher(
            app_factory(suprsend_flush_concurrency=3, suprsend_flush_concurrency_adaptive=False)
        )
        assert isinstance(fixed.limiter, FixedConcurrency)
        assert fixed.limiter.window() == 3

    def test_a_start_above_the_max_is_refused(self, app_factory: Callable[..., Celery]) -> None:
        app = app_factory(suprsend_flush_concurrency=40, suprsend_flush_concurrency_max=16)
        with pytest.raises(ConfigurationError, match="suprsend_flush_concurrency_max"):
            get_settings(app)
        fixed = app_factory(
            suprsend_flush_concurrency=40,
            suprsend_flush_concurrency_max=16,
            suprsend_flush_concurrency_adaptive="false",
        )
        assert get_settings(fixed).flush_concurrency == 40
