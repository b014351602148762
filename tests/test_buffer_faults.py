"""Crash safety of the buffered path: SIGKILLed flushers, Redis restarts, many flushers.

Everything real: flusher processes (our own loop in ``_flusher_proc.py``, and the
standalone Celery relay), redis-server with AOF, the sandbox. The one promise checked
throughout: every buffered event is processed exactly once by SuprSend (re-sends are
only ever ``duplicates_skipped``), and Redis ends empty.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from _buffer_helpers import (
    EMPTY,
    TESTS,
    assert_bulk_limits,
    buffer_of,
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
from conftest import REDIS_KILLED, in_process_worker, wait_for

from suprsend_celery import buffer_events
from suprsend_celery.dev.redis_server import RedisServer
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.pipeline.runtime import get_flusher
from suprsend_celery.tasks.flush import FLUSH_TASK


def wait_until_sending(
    proc: subprocess.Popen[bytes], sandbox: Sandbox, before: int, log: Path
) -> None:
    """Wait until the child has sent three more requests: it is mid-drain."""
    wait_for(
        lambda: proc.poll() is not None or len(sandbox.requests()) >= before + 3,
        timeout=90,
        interval=0.02,
        message="the flusher to start sending",
    )
    assert proc.poll() is None, log.read_text()[-3000:]


def assert_exactly_once(sandbox: Sandbox, keys: list[str]) -> None:
    """Each key processed once; every extra record SuprSend received was a skipped repeat."""
    stats = sandbox.stats()
    assert stats["events_processed"] == len(keys)
    assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
    assert stats["rejected"] == 0
    assert stats["duplicates_skipped"] == stats["events_received"] - len(keys)


class TestKilledFlushers:
    """A flusher killed with SIGKILL at any instant loses nothing and doubles nothing."""

    @pytest.mark.slow
    def test_flusher_process_killed_mid_drain_again_and_again(
        self,
        app_factory: Callable[..., Celery],
        redis_url: str,
        sandbox: Sandbox,
        tmp_path: Path,
    ) -> None:
        """Eight SIGKILLs while requests are in flight, then a last flusher finishes."""
        app = app_factory()
        buffer = buffer_of(app)
        keys = buffer_events(make_events(3000), app=app)
        sandbox.set_faults([{"delay": 0.05}])  # kills land while a request is out
        # Batches of 10: eight claims in flight finish a batch of 50 so fast that the
        # drain could end before the eighth kill.
        args = [str(TESTS / "_flusher_proc.py"), redis_url, sandbox.url, "1.0", "10"]
        env = subprocess_env()
        log = tmp_path / "flusher.log"
        for _ in range(8):
            before = len(sandbox.requests())
            proc = spawn(args, env, log)
            try:
                wait_until_sending(proc, sandbox, before, log)
            finally:
                kill_group(proc)
            assert buffer.remaining() > 0, "killed mid-drain, not after it"
        proc = spawn(args, env, log)
        try:
            wait_for(
                lambda: buffer.remaining() == 0 and sandbox.stats()["events_processed"] == 3000,
                timeout=90,
                interval=0.1,
                message="the last flusher to drain everything",
            )
        finally:
            kill_group(proc)
        assert_exactly_once(sandbox, keys)
        assert sandbox.stats()["events_received"] > 3000, "some claims were re-sent"
        assert_bulk_limits(sandbox)
        assert redis_state(buffer) == EMPTY

    @pytest.mark.slow
    def test_celery_relay_worker_killed_and_restarted(
        self,
        app_factory: Callable[..., Celery],
        redis_url: str,
        sandbox: Sandbox,
        tmp_path: Path,
    ) -> None:
        """The standalone relay (prefork worker with embedded beat), SIGKILLed three
        times mid-drain with its pool and beat, restarted each time."""
        app = app_factory()
        buffer = buffer_of(app)
        keys = buffer_events(make_events(2000), app=app)
        sandbox.set_faults([{"delay": 0.05}])
        env = subprocess_env(
            SUPRSEND_BASE_URL=sandbox.url,
            SUPRSEND_FLUSH_INTERVAL="0.5",
            SUPRSEND_FLUSH_BATCH_SIZE="10",  # many requests: every kill lands mid-drain
            CELERY_BROKER_URL=redis_url,
            CELERY_TASK_DEFAULT_QUEUE="suprsend-relay-kill",
            RELAY_CLAIM_LEASE="1.5",
        )
        log = tmp_path / "relay.log"

        def start(run: int) -> subprocess.Popen[bytes]:
            return spawn(
                [
                    "-m",
                    "celery",
                    "-A",
                    "benchmarks.relay_app",
                    "worker",
                    "--beat",
                    "--schedule",
                    str(tmp_path / f"beat-{run}"),
                    "--pool=prefork",
                    "-c",
                    "1",
                    "-Q",
                    "suprsend-relay-kill",
                    "--without-gossip",
                    "--without-mingle",
                    "--loglevel=WARNING",
                ],
                env,
                log,
            )

        for run in range(3):
            before = len(sandbox.requests())
            proc = start(run)
            try:
                wait_until_sending(proc, sandbox, before, log)
            finally:
                kill_group(proc)
                wait_group_gone(proc)
            assert buffer.remaining() > 0, "killed mid-drain, not after it"
        proc = start(3)
        try:
            wait_for(
                lambda: buffer.remaining() == 0 and sandbox.stats()["events_processed"] == 2000,
                timeout=90,
                interval=0.1,
                message="the restarted relay to drain everything",
            )
        finally:
            kill_group(proc)
            wait_group_gone(proc)
        assert_exactly_once(sandbox, keys)
        assert_bulk_limits(sandbox)
        assert redis_state(buffer) == EMPTY

    @pytest.mark.slow
    def test_four_flusher_processes_share_the_work(
        self,
        app_factory: Callable[..., Celery],
        redis_url: str,
        sandbox: Sandbox,
        tmp_path: Path,
    ) -> None:
        """Four processes drain one buffer together and never send a record twice."""
        app = app_factory()
        buffer = buffer_of(app)
        sandbox.set_faults([{"delay": 0.01}])
        args = [str(TESTS / "_flusher_proc.py"), redis_url, sandbox.url, "30", "25"]
        logs = [tmp_path / f"f{i}.log" for i in range(4)]
        procs = [spawn(args, subprocess_env(), log) for log in logs]
        try:
            wait_for(
                lambda: all(b"flusher ready" in log.read_bytes() for log in logs),
                timeout=60,
                message="four flushers polling an empty buffer",
            )
            keys = buffer_events(make_events(4000), app=app)
            wait_for(
                lambda: buffer.remaining() == 0 and sandbox.stats()["events_processed"] == 4000,
                timeout=90,
                interval=0.1,
                message="four flushers to drain the buffer",
            )
        finally:
            for proc in procs:
                kill_group(proc)
        assert sent_keys(sandbox) == dict.fromkeys(keys, 1), "a record was sent twice"
        assert sandbox.stats()["duplicates_skipped"] == 0
        assert len({r.connection for r in sandbox.requests()}) >= 2, "they worked in parallel"
        assert redis_state(buffer) == EMPTY


class TestRedisFailures:
    """Redis killed or restarted under a running flusher."""

    @pytest.mark.slow
    @REDIS_KILLED
    def test_redis_restart_with_aof_loses_nothing(
        self,
        app_factory: Callable[..., Celery],
        sandbox: Sandbox,
    ) -> None:
        """Redis SIGKILLed and restarted while records are pending and claimed: after
        the restart every event is delivered exactly once."""
        with RedisServer(appendonly=True, appendfsync="always") as aof:
            app = app_factory(suprsend_redis_url=aof.url, suprsend_flush_batch_size=50)
            buffer = buffer_of(app)
            get_flusher(app).lease = 1.5
            keys = buffer_events(make_events(2000), app=app)
            sandbox.set_faults([{"delay": 0.05}])
            with in_process_worker(app, concurrency=2):
                runs = [app.send_task(FLUSH_TASK, kwargs={"time_budget": 60}) for _ in range(2)]
                probe = aof.client()
                try:
                    wait_for(
                        lambda: (
                            int(probe.get(buffer.keys.inflight) or 0) > 0
                            and probe.llen(buffer.keys.pending) > 0
                            and sandbox.stats()["events_processed"] >= 300
                        ),
                        timeout=60,
                        message="records both pending and in flight",
                    )
                finally:
                    probe.close()
                aof.restart(kill=True)
                for run in runs:
                    run.get(timeout=120, propagate=False)  # may fail or carry on: both fine
                flush_until(
                    app,
                    lambda: buffer.remaining() == 0 and sandbox.stats()["events_processed"] == 2000,
                    timeout=90,
                    interval=0.1,
                    message="everything delivered after the restart",
                )
            assert_exactly_once(sandbox, keys)
            assert redis_state(buffer) == EMPTY

    @pytest.mark.slow
    @REDIS_KILLED
    def test_flush_fails_cleanly_while_redis_is_down(
        self,
        app_factory: Callable[..., Celery],
        sandbox: Sandbox,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A run whose Redis dies mid-request fails with the Redis error and says so;
        the buffer is intact after the restart and the next run finishes the job."""
        caplog.set_level(logging.ERROR, logger="suprsend_celery")
        with RedisServer(appendonly=True, appendfsync="always") as aof:
            # One request at a time: the run dies with exactly one claim out.
            app = app_factory(suprsend_redis_url=aof.url, suprsend_flush_concurrency=1)
            buffer = buffer_of(app)
            get_flusher(app).lease = 1.5
            keys = buffer_events(make_events(300), app=app)
            sandbox.set_faults([{"delay": 1.0, "count": 1}])
            with in_process_worker(app):
                run = app.send_task(FLUSH_TASK, kwargs={"time_budget": 30})
                wait_for(lambda: redis_state(buffer)["in_flight"] == 100, timeout=30)
                aof.kill()
                run.get(timeout=120, propagate=False)
                assert run.state == "FAILURE"
                assert isinstance(run.result, redis.ConnectionError), run.result
                assert "flush_buffer stopped: Redis failed (ConnectionError" in caplog.text
                assert sandbox.stats()["events_processed"] == 100, "the request went out"

                aof.start()
                assert redis_state(buffer) == {
                    "pending": 200,
                    "in_flight": 100,
                    "claims": 1,
                    "claimed_records": 100,
                    "retry": 0,
                    "dead": 0,
                }, "the unsettled claim survived, nothing else moved"
                flush_until(
                    app,
                    lambda: buffer.remaining() == 0 and sandbox.stats()["events_processed"] == 300,
                    timeout=60,
                    interval=0.1,
                    message="the next runs to resume",
                )
            assert_exactly_once(sandbox, keys)
            assert sandbox.stats()["duplicates_skipped"] == 100, "the lost claim was re-sent"
            assert redis_state(buffer) == EMPTY
