"""flush_buffer end to end: real Redis, a real Celery worker, the sandbox as SuprSend.

Events are buffered with ``buffer_events``, drained by ``flush_buffer`` running on a
worker, and judged by what the sandbox processed and what Redis still holds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _buffer_helpers import (
    EMPTY,
    MAX_BULK_BODY,
    assert_bulk_limits,
    buffer_of,
    flush,
    flush_until,
    kill_group,
    make_events,
    processed_keys,
    redis_state,
    sent_keys,
    spawn,
    subprocess_env,
    wait_group_gone,
)
from celery import Celery
from conftest import WORKSPACE_KEY, WORKSPACE_SECRET, in_process_worker, wait_for

from suprsend_celery import Event, buffer_events, buffer_stats
from suprsend_celery.buffer.redis_buffer import RedisBuffer
from suprsend_celery.delivery.client import SuprsendClient
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.events.records import join_item, split_item
from suprsend_celery.pipeline.flusher import Flusher, FlushReport
from suprsend_celery.tasks.beat import BEAT_ENTRY
from suprsend_celery.tasks.flush import FLUSH_TASK


class TestDelivery:
    """Everything buffered is delivered once, in requests SuprSend accepts."""

    def test_ten_thousand_events(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """10,000 events: bulk requests of at most 100 records, each event processed once."""
        app = app_factory()
        keys = buffer_events(make_events(10_000), app=app)
        assert buffer_stats(app=app)["pending"] == 10_000
        with in_process_worker(app):
            results = flush_until(
                app, lambda: buffer_stats(app=app)["pending"] == 0, message="the buffer to drain"
            )
        stats = sandbox.stats()
        assert stats["events_processed"] == 10_000
        assert stats["duplicates_skipped"] == 0
        assert stats["rejected"] == 0
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        assert_bulk_limits(sandbox)
        assert sum(r.records or 0 for r in sandbox.requests()) == 10_000
        assert sum(r["sent"] for r in results) == 10_000
        assert results[-1]["remaining"] == 0
        assert set(results[0]) == {
            "sent",
            "retry_scheduled",
            "dead_lettered",
            "remaining",
            "seconds",
        }
        assert redis_state(buffer_of(app)) == EMPTY

    def test_large_events_are_split_by_size(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """~90 KiB events: a claim of 100 records goes out as several bodies under 800 KiB."""
        app = app_factory()
        events = []
        for big, small in zip(
            make_events(150, "report_ready", blob=90_000),
            make_events(150, "tiny_event"),
            strict=True,
        ):
            events += [big, small]
        keys = buffer_events(events, app=app)
        with in_process_worker(app):
            flush_until(app, lambda: buffer_stats(app=app)["pending"] == 0)
        assert sandbox.stats()["events_processed"] == 300
        assert sandbox.stats()["duplicates_skipped"] == 0
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        assert_bulk_limits(sandbox)
        requests = sandbox.requests()
        assert len(requests) > 300 // 100, "size, not only count, split the claims"
        assert max(r.body_bytes for r in requests) > MAX_BULK_BODY * 0.8, "bodies are packed"
        assert redis_state(buffer_of(app)) == EMPTY

    @pytest.mark.parametrize("flushers", [2, 4])
    def test_concurrent_flushers_never_send_a_record_twice(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox, flushers: int
    ) -> None:
        """Several flush_buffer runs at once share the buffer without any overlap."""
        app = app_factory(suprsend_flush_batch_size=20)
        keys = buffer_events(make_events(3000), app=app)
        sandbox.set_faults([{"delay": 0.01}])  # slow enough that the runs overlap
        with in_process_worker(app, concurrency=flushers):
            pending = [
                app.send_task(FLUSH_TASK, kwargs={"time_budget": 60}) for _ in range(flushers)
            ]
            results = [r.get(timeout=120) for r in pending]
        assert sum(r["sent"] for r in results) == 3000
        assert sum(1 for r in results if r["sent"]) >= 2, results
        assert sandbox.stats()["events_processed"] == 3000
        assert sandbox.stats()["duplicates_skipped"] == 0
        assert sent_keys(sandbox) == dict.fromkeys(keys, 1), "a record was sent twice"
        assert_bulk_limits(sandbox)
        assert redis_state(buffer_of(app)) == EMPTY


class TestRecordFailures:
    """One bulk response with successes, transient and permanent per-record failures."""

    @pytest.mark.slow
    def test_each_record_gets_its_own_fate(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """Successes are acknowledged once, transient failures retried (attempts counted)
        until delivered, permanent ones dead-lettered with the server's message and
        delivered after a requeue."""
        app = app_factory()
        buffer = buffer_of(app)
        good = buffer_events(make_events(40, "evt_good"), app=app)
        flaky = buffer_events(make_events(5, "evt_flaky"), app=app)
        broken = buffer_events(make_events(5, "evt_broken"), app=app)
        sandbox.set_faults(
            [
                {
                    "record_errors": [
                        {"event": "evt_flaky", "status": 503, "message": "busy"},
                        {
                            "event": "evt_broken",
                            "status": 422,
                            "message": "distinct_id 'user-1' is blocked",
                            "type": "ValidationError",
                        },
                    ]
                }
            ]
        )

        def attempts() -> list[int]:
            items = buffer.redis.zrange(buffer.keys.retry, 0, -1)
            items += buffer.redis.lrange(buffer.keys.pending, 0, -1)
            return sorted(split_item(i)[0] for i in items)

        with in_process_worker(app):
            first = flush(app)
            assert (first["sent"], first["retry_scheduled"], first["dead_lettered"]) == (40, 5, 5)
            stats = buffer_stats(app=app)
            assert (stats["pending"], stats["scheduled_retries"], stats["dead"]) == (0, 5, 5)
            assert attempts() == [1] * 5
            assert sandbox.stats()["events_processed"] == 40

            flush_until(app, lambda: min(attempts()) >= 2, message="a second failed attempt")
            assert sandbox.stats()["events_processed"] == 40
            sandbox.clear_faults()
            flush_until(app, lambda: buffer.remaining() == 0, message="the retries to succeed")
            stats = sandbox.stats()
            assert stats["events_processed"] == 45
            assert stats["duplicates_skipped"] == 0
            assert processed_keys(sandbox) == dict.fromkeys(good + flaky, 1)

            letters = buffer.dead_letters()
            assert sorted(d.idempotency_key or "" for d in letters) == sorted(broken)
            for letter in letters:
                assert letter.event == "evt_broken"
                assert letter.status_code == 422
                assert "distinct_id 'user-1' is blocked" in letter.error
                assert letter.attempts == 1
                assert letter.source == "buffer"
                assert "'n':" not in repr(letter), "no properties in the listing"

            assert buffer.requeue_dead_letters().moved == 5
            flush_until(app, lambda: sandbox.stats()["events_processed"] == 50)
        assert processed_keys(sandbox) == dict.fromkeys(good + flaky + broken, 1)
        sent = sent_keys(sandbox)
        assert all(sent[k] == 1 for k in good), "successes are sent once"
        assert all(sent[k] >= 3 for k in flaky), "two failures, then the success"
        assert all(sent[k] == 2 for k in broken), "refused once, then requeued"
        assert redis_state(buffer) == EMPTY
        assert_bulk_limits(sandbox)


class TestBreaker:
    """The shared circuit breaker during outages, credential faults and 429s."""

    @pytest.mark.slow
    def test_outage_is_bounded_then_everything_is_delivered(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """During an all-503 outage only ``threshold`` requests plus one probe per
        cool-down reach the API, however often flush_buffer runs; afterwards every
        event is delivered exactly once. (One request at a time, so the count is exact;
        ``test_concurrency`` bounds an outage with eight in flight.)"""
        app = app_factory(suprsend_flush_concurrency=1)
        buffer = buffer_of(app)
        queue = buffer.queue
        queue.breaker = queue.breaker._replace(cooldown=1.0)  # not 10 s: only slower
        threshold = queue.breaker.threshold
        keys = buffer_events(make_events(1500), app=app)
        sandbox.set_faults([{"status": 503}])
        seen: set[str] = set()
        runs = 0

        def failed_requests() -> int:
            return sum(1 for r in sandbox.requests() if r.status == 503)

        with in_process_worker(app):

            def two_probes_failed() -> bool:
                nonlocal runs
                seen.add(buffer_stats(app=app)["breaker"])
                flush(app)
                runs += 1
                seen.add(buffer_stats(app=app)["breaker"])
                return failed_requests() >= threshold + 2

            wait_for(two_probes_failed, timeout=60, interval=0.1, message="two failed probes")
            outage = [r for r in sandbox.requests() if r.status == 503]
            assert len(sandbox.requests()) == len(outage) == threshold + 2
            assert all(r.records == 100 for r in outage[:threshold])
            assert all((r.records or 0) <= 10 for r in outage[threshold:]), "probes are small"
            assert runs > len(outage), "most runs sent nothing while the breaker was open"
            assert {"open", "half_open"} <= seen
            assert buffer.breaker()["reason"].startswith("HTTP 503")
            stats = buffer_stats(app=app)
            assert stats["breaker"] == "open"
            assert stats["pending"] + stats["scheduled_retries"] == 1500
            assert stats["dead"] == 0

            sandbox.clear_faults()
            flush_until(
                app,
                lambda: sandbox.stats()["events_processed"] == 1500 and buffer.remaining() == 0,
                timeout=90,
                interval=0.2,
                message="delivery after the outage",
            )
        assert sandbox.stats()["duplicates_skipped"] == 0
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        assert buffer_stats(app=app)["breaker"] == "closed"
        assert redis_state(buffer) == EMPTY

    @pytest.mark.slow
    def test_wrong_credentials_keep_records_buffered(
        self, redis_client: Any, sandbox: Sandbox
    ) -> None:
        """401 opens the breaker at once; nothing is dead-lettered or counted as an
        attempt, and everything is delivered once the credentials are fixed."""
        buffer = RedisBuffer(redis_client, prefix="auth", breaker_cooldown=1.0)
        records = [
            SuprsendClient(WORKSPACE_KEY, WORKSPACE_SECRET).accept(e).payload
            for e in make_events(250)
        ]
        buffer.push(records)
        wrong = SuprsendClient(WORKSPACE_KEY, "WSSECRET_not_the_right_one", base_url=sandbox.url)
        flusher = Flusher(buffer, wrong, concurrency=1)  # exact counts: one request at a time
        report = flusher.run(5)
        assert (report.sent, report.returned, report.dead_lettered, report.requests) == (
            0,
            100,
            0,
            1,
        )
        assert report.breaker == "open"
        state = buffer.breaker()
        assert state["state"] == "open"
        assert "suprsend_workspace_secret" in state["reason"]
        assert flusher.run(5).requests == 0, "the open breaker stops every flusher"
        wait_for(lambda: buffer.stats()["breaker"] == "half_open", timeout=10)
        assert flusher.run(5).requests == 1, "one probe"
        cooldown = float(buffer.redis.hget(buffer.keys.breaker, "cooldown") or 0)
        assert cooldown == pytest.approx(2.0), "a failed probe doubles the cool-down"
        assert sandbox.stats()["auth_failures"] == 2
        assert buffer.redis.lrange(buffer.keys.pending, 0, -1) == records, "untouched, in order"
        assert buffer.stats()["dead"] == 0

        fixed = Flusher(
            buffer, SuprsendClient(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=sandbox.url)
        )
        wait_for(
            lambda: fixed.run(5).remaining == 0 and buffer.stats()["pending"] == 0,
            timeout=30,
            interval=0.1,
        )
        assert sandbox.stats()["events_processed"] == 250
        assert sandbox.stats()["duplicates_skipped"] == 0
        assert buffer.stats()["breaker"] == "closed"

    def test_credentials_refused_mid_claim_returns_only_the_unsent(
        self, redis_client: Any, sandbox: Sandbox
    ) -> None:
        """A claim split by size whose second request gets 401: the records already
        accepted are acknowledged, only the rest go back (so nothing is sent twice)."""
        buffer = RedisBuffer(redis_client, prefix="auth2", breaker_cooldown=0.5)
        client = SuprsendClient(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=sandbox.url)
        records = [client.accept(e).payload for e in make_events(30, blob=90_000)]
        buffer.push(records)
        sandbox.set_faults([{"status": 401, "after": 1, "count": 1}])
        flusher = Flusher(buffer, client)
        report = flusher.run(5)
        first = sandbox.requests()[0]
        assert report.requests == 2
        assert (report.sent, report.returned) == (first.records, 30 - (first.records or 0))
        assert buffer.stats()["pending"] == report.returned
        assert buffer.redis.hget(buffer.keys.breaker, "state") == b"open"
        wait_for(lambda: flusher.run(5).remaining == 0, timeout=30, interval=0.1)
        assert sandbox.stats()["events_processed"] == 30
        assert sandbox.stats()["duplicates_skipped"] == 0

    def test_a_failing_api_gets_one_request_per_claim(
        self, redis_client: Any, sandbox: Sandbox
    ) -> None:
        """When a claim's first request fails as a whole, the rest of the claim is not
        sent: those records go back untouched; only the sent ones count an attempt."""
        buffer = RedisBuffer(redis_client, prefix="stop")
        client = SuprsendClient(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=sandbox.url)
        records = [client.accept(e).payload for e in make_events(30, blob=90_000)]
        buffer.push(records)
        sandbox.set_faults([{"status": 502, "html": True, "count": 1}])
        report = Flusher(buffer, client).run(5, max_batches=1)
        sent = sandbox.requests()[0].records or 0
        assert report.requests == 1
        assert (report.retry_scheduled, report.returned) == (sent, 30 - sent)
        assert buffer.redis.lrange(buffer.keys.pending, 0, -1) == records[sent:]
        retrying = buffer.redis.zrange(buffer.keys.retry, 0, -1)
        assert sorted(retrying) == sorted(join_item(1, r) for r in records[:sent])
        wait_for(lambda: Flusher(buffer, client).run(5).remaining == 0, timeout=30, interval=0.1)
        assert sandbox.stats()["events_processed"] == 30
        assert sandbox.stats()["duplicates_skipped"] == 0

    def test_a_probe_answered_with_a_refusal_closes_the_breaker(
        self, redis_client: Any, sandbox: Sandbox
    ) -> None:
        """A 400 is an answer: the API is up, so a refused probe still closes the
        breaker (its record is dead-lettered) and the others flow again at once."""
        buffer = RedisBuffer(redis_client, prefix="probe400", breaker_cooldown=1.0)
        client = SuprsendClient(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=sandbox.url)
        buffer.push([client.accept(e).payload for e in make_events(10)])
        sandbox.set_faults([{"status": 503, "count": 5}, {"status": 400, "count": 1}])
        flusher = Flusher(buffer, client, batch_size=1, concurrency=1)
        assert flusher.run(5).breaker == "open"
        wait_for(lambda: buffer.stats()["breaker"] == "half_open", timeout=10)
        report = flusher.run(5, max_batches=1)
        assert (report.requests, report.dead_lettered) == (1, 1)
        assert buffer.stats()["breaker"] == "closed"
        wait_for(lambda: flusher.run(5).remaining == 0, timeout=30, interval=0.1)
        assert sandbox.stats()["events_processed"] == 9
        assert buffer.stats()["dead"] == 1

    @pytest.mark.slow
    def test_retry_after_pauses_every_flusher(self, redis_client: Any, sandbox: Sandbox) -> None:
        """A 429 with Retry-After: 2 stops all sending for at least two seconds."""
        buffer = RedisBuffer(redis_client, prefix="ra")
        client = SuprsendClient(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=sandbox.url)
        buffer.push([client.accept(e).payload for e in make_events(300)])
        sandbox.set_faults([{"status": 429, "retry_after": "2", "count": 1}])
        flushers = [Flusher(buffer, client, concurrency=1) for _ in range(2)]
        report = flushers[0].run(5)
        assert (report.requests, report.retry_scheduled, report.breaker) == (1, 100, "open")
        until, opened_at = buffer.redis.hmget(buffer.keys.breaker, "until", "opened_at")
        assert float(until or 0) - float(opened_at or 0) == pytest.approx(2.0)
        assert flushers[1].run(5).requests == 0
        retry_due = min(
            s for _, s in buffer.redis.zrange(buffer.keys.retry, 0, -1, withscores=True)
        )
        assert retry_due >= float(opened_at or 0) + 2.0 - 0.01, "retries honour Retry-After too"

        def delivered() -> bool:
            for f in flushers:
                f.run(5)
            return sandbox.stats()["events_processed"] == 300

        wait_for(delivered, timeout=30, interval=0.1, message="delivery after the pause")
        first, *rest = sandbox.requests()
        assert first.status == 429
        assert rest[0].received_at - first.received_at >= 2.0 - 0.05
        assert sandbox.stats()["duplicates_skipped"] == 0


class TestClaimEdges:
    """Branches of one claim that only odd timing or odd answers reach."""

    def test_whole_request_refusal_is_bisected_to_the_bad_record(
        self, redis_client: Any, sandbox: Sandbox
    ) -> None:
        """SuprSend refuses a bulk request as a whole (400) because of one bad record:
        the flusher halves the request until only that record is refused, dead-letters
        it, and delivers the seven others once each."""
        buffer = RedisBuffer(redis_client, prefix="bisect")
        client = SuprsendClient(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=sandbox.url)
        events = make_events(8)
        events[5] = Event("user-5", "poison", {"n": 5})
        records = [client.accept(e).payload for e in events]
        buffer.push(records)
        sandbox.set_faults([{"status": 400, "containing_event": "poison"}])
        report = Flusher(buffer, client, batch_size=8).run(5)
        # 8 refused; 0-3 ok; 4-7 refused; 4-5 refused; 4 ok; 5 refused; 6-7 ok
        assert [(r.records, r.status) for r in sandbox.requests()] == [
            (8, 400),
            (4, 207),
            (4, 400),
            (2, 400),
            (1, 207),
            (1, 400),
            (2, 207),
        ]
        assert (report.sent, report.dead_lettered, report.requests) == (7, 1, 7)
        assert report.retry_scheduled == report.returned == 0
        [letter] = buffer.dead_letters()
        assert (letter.event, letter.status_code, letter.record) == ("poison", 400, records[5])
        keys = [json.loads(r)["$idempotency_key"] for r in records]
        assert processed_keys(sandbox) == dict.fromkeys(keys[:5] + keys[6:], 1)
        assert redis_state(buffer) == {**EMPTY, "dead": 1}

    @pytest.mark.slow
    def test_lease_lost_between_chunks(self, redis_client: Any, sandbox: Sandbox) -> None:
        """A flusher whose lease ran out while its first request hung (another flusher
        took the claim back) cannot extend it for the second request: it sends no
        more, settles nothing, and every record is delivered exactly once. (A running
        flusher renews its leases, so the lease is expired by hand, as a process
        stalled for longer than the lease would find it.)"""
        buffer = RedisBuffer(redis_client, prefix="lost")
        client = SuprsendClient(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=sandbox.url)
        records = [client.accept(e).payload for e in make_events(12, blob=90_000)]
        buffer.push(records)
        sandbox.set_faults([{"delay": 1.5, "count": 1}])
        slow = Flusher(buffer, client, lease=30)
        reports: list[FlushReport] = []
        thread = threading.Thread(target=lambda: reports.append(slow.run(10, max_batches=1)))
        thread.start()
        try:
            [claim_id] = wait_for(
                lambda: redis_client.zrange(buffer.keys.claims, 0, -1),
                timeout=10,
                message="the slow flusher's claim",
            )
            redis_client.zadd(buffer.keys.claims, {claim_id: 0})  # its lease ran out
            other = Flusher(buffer, client).run(10)
        finally:
            thread.join(timeout=30)
        [report] = reports
        [first] = [r for r in sandbox.requests() if r.fault]  # the delayed request
        assert 1 < (first.records or 0) < 12, "the claim must span several requests"
        assert report.requests == 1, "no request after the lease was lost"
        assert (report.sent, report.retry_scheduled, report.dead_lettered) == (0, 0, 0)
        assert report.returned == 12
        assert other.sent == 12
        keys = [json.loads(r)["$idempotency_key"] for r in records]
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        assert sandbox.stats()["duplicates_skipped"] == first.records
        assert redis_state(buffer) == EMPTY


class TestBeat:
    """flush_buffer is on the beat schedule without anyone asking."""

    def test_registered_with_expires(self, app_factory: Callable[..., Celery]) -> None:
        """A configured app gets the entry when it is finalized; it expires after one
        interval so a backlog of runs cannot pile up."""
        app = app_factory(suprsend_flush_interval=3)
        app.finalize()
        entry = app.conf.beat_schedule[BEAT_ENTRY]
        assert entry == {"task": FLUSH_TASK, "schedule": 3.0, "options": {"expires": 3.0}}

    def test_zero_interval_disables_it(self, app_factory: Callable[..., Celery]) -> None:
        """suprsend_flush_interval=0: no entry."""
        app = app_factory(suprsend_flush_interval=0)
        app.finalize()
        assert BEAT_ENTRY not in (app.conf.beat_schedule or {})

    def test_users_own_entry_wins(self, app_factory: Callable[..., Celery]) -> None:
        """An entry the user scheduled for flush_buffer is kept, not doubled."""
        mine = {"task": FLUSH_TASK, "schedule": 30.0}
        app = app_factory(suprsend_flush_interval=3, beat_schedule={"mine": mine})
        app.finalize()
        assert app.conf.beat_schedule == {"mine": mine}

    def test_unconfigured_apps_are_left_alone(self) -> None:
        """An app without SuprSend credentials finalizes normally, without an entry."""
        app = Celery("unrelated", set_as_current=False)
        app.finalize()
        assert BEAT_ENTRY not in (app.conf.beat_schedule or {})
        app.close()

    @pytest.mark.slow
    def test_an_app_finalized_before_the_import_gets_it_too(self) -> None:
        """Celery binds shared tasks to apps finalized before their module is imported,
        and ``Task.on_bound`` (our hook, no private Celery API) runs for those as well."""
        code = textwrap.dedent(
            """
            import json
            from celery import Celery
            app = Celery("early", broker="redis://127.0.0.1:6379/0", set_as_current=False)
            app.conf.update(suprsend_workspace_key="k", suprsend_workspace_secret="s",
                            suprsend_flush_interval=2)
            app.finalize()
            import suprsend_celery.tasks
            print(json.dumps(app.conf.beat_schedule))
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        schedule = json.loads(done.stdout)
        assert schedule[BEAT_ENTRY]["task"] == FLUSH_TASK
        assert schedule[BEAT_ENTRY]["schedule"] == 2.0

    @pytest.mark.slow
    def test_embedded_beat_drains_the_buffer(
        self,
        app_factory: Callable[..., Celery],
        redis_url: str,
        sandbox: Sandbox,
        tmp_path: Path,
    ) -> None:
        """``celery -A suprsend_celery.app worker --beat`` drains the buffer by itself."""
        app = app_factory()
        keys = buffer_events(make_events(500), app=app)
        env = subprocess_env(
            SUPRSEND_BASE_URL=sandbox.url,
            SUPRSEND_FLUSH_INTERVAL="1",
            CELERY_BROKER_URL=redis_url,
            CELERY_TASK_DEFAULT_QUEUE="suprsend-beat-test",
        )
        proc = spawn(
            [
                "-m",
                "celery",
                "-A",
                "suprsend_celery.app",
                "worker",
                "--beat",
                "--schedule",
                str(tmp_path / "beat-schedule"),
                "--pool=prefork",
                "-c",
                "1",
                "-Q",
                "suprsend-beat-test",
                "--without-gossip",
                "--without-mingle",
                "--loglevel=INFO",
            ],
            env,
            tmp_path / "worker.log",
        )
        buffer = buffer_of(app)
        try:
            # Drained means sent *and* settled: the sandbox counts a batch before its
            # response reaches the flusher, which settles the claim only after that.
            wait_for(
                lambda: (
                    proc.poll() is not None
                    or (sandbox.stats()["events_processed"] == 500 and redis_state(buffer) == EMPTY)
                ),
                timeout=90,
                interval=0.1,
                message="beat to drain the buffer",
            )
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        finally:
            kill_group(proc)
            wait_group_gone(proc)
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        assert redis_state(buffer) == EMPTY


def test_flush_of_an_empty_buffer(app_factory: Callable[..., Celery], sandbox: Sandbox) -> None:
    """An empty buffer: nothing sent, the documented result keys all zero."""
    app = app_factory()
    with in_process_worker(app):
        result = flush(app)
    assert {k: v for k, v in result.items() if k != "seconds"} == {
        "sent": 0,
        "retry_scheduled": 0,
        "dead_lettered": 0,
        "remaining": 0,
    }
    assert sandbox.stats()["requests"] == 0
