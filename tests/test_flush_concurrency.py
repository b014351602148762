"""Many bulk requests in flight per flush run (``suprsend_flush_concurrency``).

Real Redis, the real sandbox answering each request after a delay (a real API's
latency), real flusher processes where one must be killed. What held with one
request at a time still holds with eight: every accepted event processed once, none
lost, the sandbox never sees more requests at once than the setting allows, a 429
pauses every flusher, and a SIGKILL with eight claims out loses nothing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _buffer_helpers import (
    EMPTY,
    TESTS,
    kill_group,
    processed_keys,
    redis_state,
    sent_keys,
    spawn,
    subprocess_env,
)
from celery import Celery
from conftest import WORKSPACE_KEY, WORKSPACE_SECRET, in_process_worker, wait_for

from suprsend_celery import Event, track_event
from suprsend_celery.buffer.redis_buffer import RedisBuffer
from suprsend_celery.delivery.client import SuprsendClient
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.pipeline.flusher import Flusher, FlushReport
from suprsend_celery.pipeline.runtime import get_flusher


def fill(buffer: RedisBuffer, client: SuprsendClient, count: int) -> list[str]:
    """Buffer ``count`` events; their idempotency keys."""
    accepted = [client.accept(Event(f"user-{i}", "order_placed", {"n": i})) for i in range(count)]
    buffer.push([a.payload for a in accepted])
    return [a.idempotency_key for a in accepted]


def drain(flusher: Flusher, buffer: RedisBuffer, timeout: float = 60) -> list[FlushReport]:
    """Run the flusher until nothing is left to send (retries included)."""
    reports: list[FlushReport] = []

    def done() -> bool:
        reports.append(flusher.run(10))
        return buffer.remaining() == 0

    wait_for(done, timeout=timeout, interval=0.05, message="the buffer to drain")
    return reports


@pytest.fixture
def client(sandbox: Sandbox) -> SuprsendClient:
    return SuprsendClient(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=sandbox.url, timeout=5)


class TestSettingWiring:
    def test_the_apps_flusher_uses_the_setting(self, app_factory: Callable[..., Celery]) -> None:
        """suprsend_flush_concurrency reaches the flusher flush_buffer runs."""
        assert get_flusher(app_factory()).concurrency == 8
        assert get_flusher(app_factory(suprsend_flush_concurrency=3)).concurrency == 3


class TestInFlight:
    @pytest.mark.slow
    def test_fault_mix_every_event_once_and_at_most_eight_at_once(
        self, redis_client: Any, sandbox: Sandbox, client: SuprsendClient
    ) -> None:
        """Per-record 500/400, whole-request 503, a 429 with Retry-After, dropped
        connections and lost responses, eight requests in flight at 50 ms each: every
        event is processed exactly once or dead-lettered for its 400, nothing else."""
        buffer = RedisBuffer(redis_client, prefix="mix", breaker_cooldown=0.5)
        keys = fill(buffer, client, 2000)
        sandbox.set_faults(
            {
                "seed": 12,
                "rules": [
                    {"delay": 0.05},
                    {"status": 503, "after": 3, "count": 2},
                    {"status": 429, "retry_after": "1", "after": 6, "count": 1},
                    {"drop_connection": True, "after": 9, "count": 2},
                    {"drop_connection": True, "process": True, "after": 12, "count": 2},
                    {"status": 503, "process": True, "after": 15, "count": 1},
                    {
                        "record_errors": [
                            {"status": 400, "count": 5, "message": "bad record"},
                            {"status": 500, "rate": 0.03},
                        ],
                        "after": 1,
                    },
                ],
            }
        )
        flusher = Flusher(buffer, client, batch_size=50, backoff_base=0.05, backoff_max=0.5)
        assert flusher.concurrency == 8
        reports = drain(flusher, buffer)

        stats = sandbox.stats()
        assert 2 <= stats["max_concurrent_requests"] <= 8, stats
        dead = buffer.dead_letters(limit=100)
        assert len(dead) == 5 and {d.status_code for d in dead} == {400}
        dead_keys = {d.idempotency_key for d in dead}
        delivered = [k for k in keys if k not in dead_keys]
        assert processed_keys(sandbox) == dict.fromkeys(delivered, 1)
        assert stats["events_processed"] == 1995
        assert stats["rejected"] == 0
        faults = [r.fault or "" for r in sandbox.requests()]
        for kind in ("status 503", "status 429", "drop_connection", "record_errors"):
            assert any(kind in f for f in faults), f"{kind} was never applied: {faults}"
        assert sum(r.retry_scheduled for r in reports) > 0
        assert redis_state(buffer) == {**EMPTY, "dead": 5}

    def test_an_outage_costs_the_api_no_more_than_the_requests_already_out(
        self, redis_client: Any, sandbox: Sandbox, client: SuprsendClient
    ) -> None:
        """All 503: the eight first requests fail, no ninth is sent (one at a time after
        a failure), the breaker opens, and the next run sends nothing."""
        buffer = RedisBuffer(redis_client, prefix="outage8")
        fill(buffer, client, 1500)
        sandbox.set_faults([{"status": 503}])
        flusher = Flusher(buffer, client)
        report = flusher.run(10)
        assert report.requests == 8 and report.breaker == "open"
        assert buffer.breaker()["state"] == "open"
        assert flusher.run(10).requests == 0
        assert sandbox.stats()["max_concurrent_requests"] <= 8
        assert buffer.stats()["pending"] + buffer.stats()["scheduled_retries"] == 1500

    @pytest.mark.slow
    def test_a_request_slower_than_the_lease_keeps_its_claim(
        self, redis_client: Any, sandbox: Sandbox, client: SuprsendClient
    ) -> None:
        """Leases of claims in flight are renewed: a 1.5 s answer under a 0.6 s lease is
        settled by its own flusher, and a second flusher meanwhile finds nothing to take."""
        buffer = RedisBuffer(redis_client, prefix="renew")
        keys = fill(buffer, client, 200)
        sandbox.set_faults([{"delay": 1.5}])
        slow = Flusher(buffer, client, lease=0.6)
        reports: list[FlushReport] = []
        thread = threading.Thread(target=lambda: reports.append(slow.run(10)))
        thread.start()
        try:
            wait_for(lambda: redis_state(buffer)["claims"] == 2, timeout=10)
            others: list[FlushReport] = []
            while thread.is_alive():
                others.append(Flusher(buffer, client, lease=0.6).run(1))
                thread.join(0.2)
        finally:
            thread.join(30)
        [report] = reports
        assert (report.sent, report.returned) == (200, 0)
        assert sum(o.sent + o.returned for o in others) == 0, "no claim was taken back"
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        assert sandbox.stats()["duplicates_skipped"] == 0
        assert redis_state(buffer) == EMPTY


class TestSharedBreaker:
    @pytest.mark.slow
    def test_a_429_stops_new_requests_from_every_flusher(
        self, redis_client: Any, sandbox: Sandbox, client: SuprsendClient
    ) -> None:
        """Two flushers, eight requests each in flight: once one settles a 429 with
        Retry-After: 2, neither sends a new request until the two seconds are over;
        requests already out finish and settle, and everything arrives once."""
        buffer = RedisBuffer(redis_client, prefix="ra8")
        keys = fill(buffer, client, 4000)
        sandbox.set_faults(
            [{"delay": 0.2}, {"status": 429, "retry_after": "2", "after": 12, "count": 1}]
        )
        flushers = [Flusher(buffer, client, batch_size=50) for _ in range(2)]
        reports: list[FlushReport] = []
        threads = [threading.Thread(target=lambda f=f: reports.append(f.run(10))) for f in flushers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [r.breaker for r in reports] == ["open", "open"], "both stopped for the pause"
        log = sandbox.requests()
        assert [r.status for r in log].count(429) == 1
        opened_at, until = (
            float(v or 0) for v in buffer.redis.hmget(buffer.keys.breaker, "opened_at", "until")
        )
        assert until - opened_at == pytest.approx(2.0)
        # A request claimed just before the settle opened the breaker may still arrive a
        # moment after; none may arrive later in the pause.
        late = [r for r in log if opened_at + 0.5 < r.received_at < until - 0.05]
        assert late == [], f"{len(late)} request(s) sent during the Retry-After pause"
        assert sandbox.stats()["max_concurrent_requests"] <= 16

        sandbox.set_faults([{"delay": 0.05}])
        for flusher in flushers:
            drain(flusher, buffer)
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        assert redis_state(buffer) == EMPTY


class TestKilled:
    @pytest.mark.slow
    def test_sigkill_with_eight_claims_in_flight_loses_nothing(
        self,
        redis_url: str,
        redis_client: Any,
        sandbox: Sandbox,
        client: SuprsendClient,
        tmp_path: Path,
    ) -> None:
        """A flusher process is SIGKILLed while eight claims are out; their leases bring
        the records back and a new flusher delivers every event exactly once."""
        buffer = RedisBuffer(redis_client, prefix="kill8")
        keys = fill(buffer, client, 3000)
        sandbox.set_faults([{"delay": 2.0}])
        log = tmp_path / "flusher.log"
        args = [str(TESTS / "_flusher_proc.py"), redis_url, sandbox.url, "1.5", "50", "kill8"]
        proc = spawn(args, subprocess_env(), log)
        try:
            wait_for(
                lambda: proc.poll() is not None or sandbox.stats()["max_concurrent_requests"] == 8,
                timeout=60,
                message="eight requests in flight",
            )
            assert proc.poll() is None, log.read_text()[-3000:]
            assert redis_state(buffer)["claims"] == 8
        finally:
            kill_group(proc)
        state = redis_state(buffer)
        assert (state["claims"], state["in_flight"]) == (8, 400), "killed with eight claims out"
        out = [
            json.loads(item)["$idempotency_key"]
            for claim_id in redis_client.zrange(buffer.keys.claims, 0, -1)
            for item in redis_client.lrange(buffer.keys.claim_prefix + claim_id.decode(), 0, -1)
        ]

        sandbox.set_faults([{"delay": 0.02}])
        drain(Flusher(buffer, client, lease=1.5), buffer)
        # The killed process's eight requests are still being answered (two seconds
        # each): they reach the sandbox too, and are deduplicated against the re-sends.
        wait_for(
            lambda: all(n >= 2 for n in map(sent_keys(sandbox).__getitem__, out)),
            timeout=30,
            message="the killed flusher's requests to be answered",
        )
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        stats = sandbox.stats()
        assert stats["events_processed"] == 3000
        assert stats["duplicates_skipped"] == stats["events_received"] - 3000
        assert redis_state(buffer) == EMPTY


def test_records_are_the_buffered_bytes(
    redis_client: Any, sandbox: Sandbox, client: SuprsendClient
) -> None:
    """Eight requests at once still send each record byte for byte as buffered (plus env)."""
    buffer = RedisBuffer(redis_client, prefix="bytes8")
    fill(buffer, client, 400)
    stored = [
        json.loads(client.as_sent(r)) for r in buffer.redis.lrange(buffer.keys.pending, 0, -1)
    ]
    sandbox.set_faults([{"delay": 0.05}])
    report = Flusher(buffer, client, batch_size=25).run(10)
    assert report.sent == 400 and report.requests == 16
    assert sandbox.stats()["max_concurrent_requests"] >= 2
    assert sorted(sandbox.events(), key=lambda e: e["$idempotency_key"]) == sorted(
        stored, key=lambda e: e["$idempotency_key"]
    )


class TestDirectPathOnThreads:
    @pytest.mark.slow
    def test_track_event_on_a_threads_pool_under_latency(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """``-P threads``: sixteen tasks send at once at half a second each, every event
        once, each thread on its own kept-alive connection."""
        app = app_factory()
        sandbox.set_faults([{"delay": 0.5}])
        with in_process_worker(app, concurrency=16):
            results = [
                track_event.delay(f"user-{i}", "order_placed", {"n": i}, idempotency_key=f"t{i}")
                for i in range(64)
            ]
            values = [r.get(timeout=60) for r in results]
        assert {v["status"] for v in values} == {"success"}
        assert processed_keys(sandbox) == {f"t{i}": 1 for i in range(64)}
        stats = sandbox.stats()
        assert 4 <= stats["max_concurrent_requests"] <= 16, stats
        connections = {r.connection for r in sandbox.requests()}
        assert len(connections) <= 16, "one keep-alive connection per thread, reused"
