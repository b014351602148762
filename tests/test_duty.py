"""A flush run on duty: it waits on Redis for new records instead of ending when the
buffer is empty, and sends them within milliseconds (``pipeline.duty``).

Runs here are real ``Flusher.run`` calls on duty in a thread of the test (real Redis,
the real sandbox); the worker tests start ``celery worker --beat`` in a process of its
own, with the default settings, and signal it as an operator would.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from _buffer_helpers import (
    EMPTY,
    buffer_of,
    kill_group,
    make_events,
    processed_keys,
    redis_state,
    settlement,
    spawn,
    subprocess_env,
    wait_group_gone,
)
from celery import Celery
from conftest import REDIS_KILLED, make_app, wait_for

from suprsend_celery import buffer_event, buffer_events, defaults
from suprsend_celery.buffer.redis_buffer import RedisBuffer
from suprsend_celery.delivery.tally import FLUSH_SECONDS, LAST_FLUSH_AT
from suprsend_celery.dev.redis_server import RedisServer
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.ops.health import Thresholds, check
from suprsend_celery.pipeline.duty import DutyPlan
from suprsend_celery.pipeline.flusher import FlushReport
from suprsend_celery.pipeline.runtime import get_flusher
from suprsend_celery.pipeline.settings import get_settings, reset_settings
from suprsend_celery.tasks.flush import FLUSH_TASK, duty_plan


@dataclass
class DutyRun:
    """A ``Flusher.run`` on duty in a thread: its report (or error) once it returns."""

    thread: threading.Thread
    stop: Future[None]
    started: float
    outcome: dict[str, Any] = field(default_factory=dict)

    @property
    def report(self) -> FlushReport:
        assert "error" not in self.outcome, self.outcome["error"]
        report: FlushReport = self.outcome["report"]
        return report

    def end(self, timeout: float = 10.0) -> float:
        """Resolve the shutdown future and wait for the run; how long it took to return."""
        asked = time.monotonic()
        if not self.stop.done():
            self.stop.set_result(None)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run did not end"
        return time.monotonic() - asked


def blocked(client: redis.Redis, count: int = 1) -> bool:
    """At least ``count`` connections are blocked in BLPOP (runs waiting for records)."""
    return sum(1 for c in client.client_list() if c.get("cmd") == "blpop") >= count


def on_duty_count(app: Celery) -> int:
    buffer = buffer_of(app)
    return int(buffer.redis.zcard(buffer.duty_roster().keys.duty))


@contextmanager
def run_on_duty(
    app: Celery, seconds: float = 20.0, *, wait_blocked: bool = True, **plan: Any
) -> Iterator[DutyRun]:
    """Start a run on duty for ``seconds``; by default, yield once it blocks for records."""
    flusher = get_flusher(app)
    stop: Future[None] = Future()
    run = DutyRun(threading.Thread(target=lambda: None), stop, time.monotonic())

    def target() -> None:
        try:
            run.outcome["report"] = flusher.run(60, duty=DutyPlan(seconds, stopped=stop, **plan))
        except BaseException as exc:  # handed to the test
            run.outcome["error"] = exc

    run.thread = threading.Thread(target=target, daemon=True)
    run.thread.start()
    try:
        if wait_blocked:
            wait_for(lambda: blocked(buffer_of(app).redis), timeout=10, message="a blocked run")
        yield run
    finally:
        run.end()


def latency(sandbox: Sandbox, accepted: dict[str, float]) -> dict[str, float]:
    """Seconds from each accept (``time.time()``) to the sandbox processing it."""
    processed = sandbox.processed()
    return {key: processed[key] - at for key, at in accepted.items() if key in processed}


class TestWaking:
    """What wakes a waiting run, and what it then does."""

    def test_a_push_wakes_it_and_it_keeps_waiting(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """Events accepted one by one while a run waits are each sent at once, by that run."""
        app = app_factory()
        accepted: dict[str, float] = {}
        with run_on_duty(app) as run:
            for i in range(5):
                wait_for(lambda: blocked(buffer_of(app).redis), timeout=10)
                at = time.time()
                key = buffer_event(f"user-{i}", "order_placed", {"n": i}, app=app)
                accepted[key] = at
                wait_for(lambda k=key: k in sandbox.processed(), timeout=5)
            assert run.thread.is_alive(), "still on duty"
        assert run.report.sent == 5
        waited = latency(sandbox, accepted)
        assert max(waited.values()) < 1.0, waited  # the beat's interval would be seconds
        assert [r.records for r in sandbox.requests()] == [1] * 5

    def test_a_full_batch_goes_at_once(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """A burst of 1000 in one call goes as ten requests of a hundred, lingering or not."""
        app = app_factory()
        with run_on_duty(app, linger=0.5):
            keys = buffer_events(make_events(1000), app=app)
            wait_for(lambda: sandbox.stats()["events_processed"] == 1000, timeout=10)
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        assert [r.records for r in sandbox.requests()] == [100] * 10

    def test_records_arriving_fast_are_batched(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """Single calls in a fast loop: the run lingers while a batch fills, and never
        for longer (a look that falls due must not wait for the next slice)."""
        app = app_factory()
        accepted: dict[str, float] = {}
        with run_on_duty(app, linger=0.05):
            for i in range(600):
                at = time.time()
                accepted[buffer_event(f"user-{i}", "order_placed", app=app)] = at
            wait_for(lambda: sandbox.stats()["events_processed"] == 600, timeout=10)
        assert processed_keys(sandbox) == dict.fromkeys(accepted, 1)
        sizes = [r.records or 0 for r in sandbox.requests()]
        assert sum(sizes) / len(sizes) >= 10, sizes
        assert max(latency(sandbox, accepted).values()) < 0.6 * defaults.WAIT_SLICE

    def test_a_due_retry_wakes_it(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """A retry falls due while the run waits: it is sent then, without a push."""
        app = app_factory()
        buffer = buffer_of(app)
        key = buffer_event("user-1", "order_placed", app=app)
        claim = buffer.claim(10, 30)
        buffer.settle(claim.id, settlement(retries=[(2.5, claim.items[0])]))
        due = time.time() + 2.5
        with run_on_duty(app) as run:
            wait_for(lambda: key in sandbox.processed(), timeout=10)
            assert run.thread.is_alive()
        assert due - 0.1 <= sandbox.processed()[key] < due + 1.0
        assert run.report.sent == 1

    def test_an_expired_lease_wakes_it(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """Records of a flusher that died with them: sent once their lease runs out."""
        app = app_factory()
        buffer = buffer_of(app)
        keys = buffer_events(make_events(3), app=app)
        buffer.claim(10, 2.5)  # never settled, as by a killed flusher
        expires = time.time() + 2.5
        with run_on_duty(app) as run:
            wait_for(lambda: sandbox.stats()["events_processed"] == 3, timeout=10)
            assert run.thread.is_alive()
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        assert all(expires - 0.1 <= t < expires + 1.0 for t in sandbox.processed().values())
        assert redis_state(buffer) == EMPTY

    def test_an_open_breaker_parks_it_until_the_probe(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """While the breaker is open the run sends nothing; at the probe it sends."""
        app = app_factory()
        buffer = buffer_of(app)
        # a request failed with a Retry-After of 2 s: the breaker opens for exactly that
        opened = buffer.settle("none", settlement(verdict="fail", open_for=2.0, reason="test"))
        assert opened.change == "opened"
        reopens = time.time() + 2.0
        with run_on_duty(app, wait_blocked=False) as run:
            keys = buffer_events(make_events(3), app=app)
            wait_for(lambda: sandbox.stats()["events_processed"] == 3, timeout=10)
            assert run.thread.is_alive()
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        assert all(reopens - 0.1 <= t < reopens + 1.5 for t in sandbox.processed().values())
        assert buffer.breaker()["state"] == "closed"


class TestDuty:
    """How long runs stay, how many, and what they leave behind."""

    def test_at_most_two_runs_wait_at_once(self, app_factory: Callable[..., Celery]) -> None:
        """Four runs started together: two take the places on duty, two end at once."""
        app = app_factory()
        runs = [run_on_duty(app, wait_blocked=False) for _ in range(4)]
        started = [run.__enter__() for run in runs]
        try:
            wait_for(lambda: sum(not r.thread.is_alive() for r in started) == 2, timeout=10)
            assert on_duty_count(app) == 2
            assert sum(r.thread.is_alive() for r in started) == 2
        finally:
            for run in runs:
                run.__exit__(None, None, None)
        assert on_duty_count(app) == 0, "each left its place"

    def test_a_shutdown_ends_a_waiting_run_at_once(
        self, app_factory: Callable[..., Celery]
    ) -> None:
        """The worker's shutdown future resolved: the run returns, leaving its place."""
        app = app_factory()
        with run_on_duty(app, 60) as run:
            assert run.end() < 0.5
        assert on_duty_count(app) == 0
        assert run.report.sent == 0

    def test_the_duty_ends_on_time_and_when_the_next_run_is_there(
        self, app_factory: Callable[..., Celery]
    ) -> None:
        """A run leaves at the end of its duty, or within a slice of the next joining."""
        app = app_factory()
        with run_on_duty(app, 1.5, wait_blocked=False) as first:
            first.thread.join(5)
            assert not first.thread.is_alive()
            assert 1.5 <= first.report.seconds < 2.5
        with run_on_duty(app, 30) as older, run_on_duty(app, 30, wait_blocked=False) as newer:
            older.thread.join(defaults.WAIT_SLICE + 2)
            assert not older.thread.is_alive(), "the older run left"
            assert newer.thread.is_alive()

    def test_a_run_on_duty_notes_it_is_alive(
        self, app_factory: Callable[..., Celery], redis_client: redis.Redis
    ) -> None:
        """``check`` sees a run that waits longer than three intervals as alive, and the
        flush_seconds histogram counts its working time, not its wait."""
        app = app_factory()
        buffer = buffer_of(app)
        assert isinstance(buffer, RedisBuffer)
        buffer.settle("none", settlement(verdict="fail", open_for=30, reason="test"))
        buffer_events(make_events(2), app=app)  # records waiting while the breaker is open
        with run_on_duty(app, 30, wait_blocked=False):
            start = time.monotonic()
            wait_for(lambda: time.monotonic() - start > 2.5, timeout=5)
            assert check(buffer, Thresholds(flush_interval=0.5)) == []
            last = float(redis_client.hget(buffer.keys.metrics, LAST_FLUSH_AT) or 0)
            assert buffer.snapshot().now - last < 1.5
        metrics = redis_client.hgetall(buffer.keys.metrics)
        assert float(metrics[f"hist:{FLUSH_SECONDS}:sum".encode()]) < 1.0

    def test_duty_plan_follows_the_settings(self, app_factory: Callable[..., Celery]) -> None:
        """On duty for an interval and a handover; off without an interval or when asked."""
        plan = duty_plan(get_settings(app_factory(suprsend_flush_interval=5)), 25)
        assert plan is not None and plan.seconds == 5 + defaults.DUTY_HANDOVER
        assert plan.linger == defaults.FLUSH_LINGER
        assert duty_plan(get_settings(app_factory(suprsend_flush_interval=0)), 25) is None
        off = app_factory(suprsend_flush_interval=5, suprsend_flush_wait=False)
        assert duty_plan(get_settings(off), 25) is None
        short = duty_plan(get_settings(app_factory(suprsend_flush_interval=60)), 25)
        assert short is not None and short.seconds == 25

    def test_flush_wait_off_keeps_the_old_run(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """``suprsend_flush_wait`` off: a flush task with an interval set drains the
        buffer and ends, taking no place on duty (on duty it would stay 6 s)."""
        app = app_factory(suprsend_flush_interval=5, suprsend_flush_wait=False)
        keys = buffer_events(make_events(3), app=app)
        started = time.monotonic()
        result = app.tasks[FLUSH_TASK].apply().get()
        assert time.monotonic() - started < 2.0
        assert (result["sent"], result["remaining"]) == (3, 0)
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        assert on_duty_count(app) == 0


@REDIS_KILLED
def test_redis_restarted_while_a_run_waits(sandbox: Sandbox) -> None:
    """The run recovers or fails cleanly; either way the next run delivers everything."""
    with RedisServer(appendonly=True) as server:
        app = make_app(server.url, sandbox.url)
        try:
            with run_on_duty(app) as run:
                server.restart(kill=True)
                keys = buffer_events(make_events(20), app=app)
                wait_for(
                    lambda: sandbox.stats()["events_processed"] == 20 or not run.thread.is_alive(),
                    timeout=60,
                    message="the run to deliver or to fail",
                )
                error = run.outcome.get("error")
                assert error is None or isinstance(error, redis.RedisError), error
            if sandbox.stats()["events_processed"] < 20:
                report = get_flusher(app).run(10)
                assert report.remaining == 0
            assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        finally:
            reset_settings(app)  # closes the app's runtime: client, flusher, buffer
            app.close()


# -- a real worker with beat, default settings -----------------------------------------

QUEUE = "suprsend-duty"


def start_worker(
    redis_url: str, sandbox: Sandbox, log: Path, pool: str = "threads", **extra: str
) -> Any:
    """``celery -A benchmarks.relay_app worker --beat -P threads``: the standalone relay,
    default flush settings, claims leased for 2 s (so a killed worker's come back)."""
    env = subprocess_env(
        SUPRSEND_BASE_URL=sandbox.url,
        CELERY_BROKER_URL=redis_url,
        CELERY_TASK_DEFAULT_QUEUE=QUEUE,
        RELAY_CLAIM_LEASE="2",
        **extra,
    )
    env.pop("SUPRSEND_FLUSH_INTERVAL", None)
    args = ["-m", "celery", "-A", "benchmarks.relay_app", "worker", "--beat"]
    args += ["--schedule", str(log.with_suffix(".beat")), f"--pool={pool}", "-c", "4"]
    args += ["-Q", QUEUE, "--without-gossip", "--without-mingle", "--loglevel=INFO"]
    return spawn(args, env, log)


def on_duty(app: Celery, proc: Any, log: Path) -> None:
    def ready() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        return on_duty_count(app) >= 1 and blocked(buffer_of(app).redis)

    wait_for(ready, timeout=60, interval=0.1, message="a flush run on duty")


@pytest.mark.slow
class TestWorker:
    """The relay worker with beat, as deployed, with default settings."""

    def test_a_trickle_is_prompt_and_a_burst_goes_in_full_batches(
        self,
        app_factory: Callable[..., Celery],
        redis_url: str,
        sandbox: Sandbox,
        tmp_path: Path,
    ) -> None:
        """20 events/s each delivered well within the 5 s interval; a burst by hundreds."""
        app = app_factory()
        log = tmp_path / "worker.log"
        proc = start_worker(redis_url, sandbox, log)
        try:
            on_duty(app, proc, log)
            accepted: dict[str, float] = {}
            start = time.monotonic()
            for i in range(40):
                # pacing the trickle at 20 events/s, not waiting for a condition
                time.sleep(max(0.0, start + i / 20 - time.monotonic()))
                accepted[buffer_event(f"user-{i}", "order_placed", app=app)] = time.time()
            wait_for(lambda: sandbox.stats()["events_processed"] == 40, timeout=10)
            waited = latency(sandbox, accepted)
            assert max(waited.values()) < 1.0, sorted(waited.values())
            sandbox.reset()
            keys = buffer_events(make_events(500), app=app)
            wait_for(lambda: sandbox.stats()["events_processed"] == 500, timeout=20)
            assert [r.records for r in sandbox.requests()] == [100] * 5
            assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        finally:
            kill_group(proc)
            wait_group_gone(proc)

    @pytest.mark.parametrize("pool", ["threads", "prefork"])
    def test_sigterm_ends_a_waiting_worker_promptly_and_loses_nothing(
        self,
        app_factory: Callable[..., Celery],
        redis_url: str,
        sandbox: Sandbox,
        tmp_path: Path,
        pool: str,
    ) -> None:
        """A warm shutdown while a run waits: the worker exits within about a second;
        what is accepted meanwhile waits in Redis for the next worker. In a prefork
        pool the run waits in a child, which Celery's shutdown signal does not reach."""
        app = app_factory()
        log = tmp_path / "worker.log"
        proc = start_worker(redis_url, sandbox, log, pool=pool)
        try:
            on_duty(app, proc, log)
            asked = time.monotonic()
            os.kill(proc.pid, signal.SIGTERM)
            # the run itself: it leaves its place on duty as it ends
            wait_for(lambda: on_duty_count(app) == 0, timeout=10, interval=0.01)
            left = time.monotonic() - asked
            proc.wait(timeout=30)
            took = time.monotonic() - asked
        finally:
            kill_group(proc)
        assert left < 1.5, f"the run ended {left:.2f}s after SIGTERM: {log.read_text()[-2000:]}"
        assert took < 3.0, f"{took:.1f}s: {log.read_text()[-2000:]}"
        assert on_duty_count(app) == 0, "it left its place"
        keys = buffer_events(make_events(30), app=app)
        assert buffer_of(app).pending_count() == 30
        proc = start_worker(redis_url, sandbox, tmp_path / "again.log")
        try:
            wait_for(lambda: sandbox.stats()["events_processed"] == 30, timeout=60)
        finally:
            kill_group(proc)
            wait_group_gone(proc)
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)

    def test_sigkill_mid_wait_and_mid_send_loses_nothing_and_sends_nothing_twice(
        self,
        app_factory: Callable[..., Celery],
        redis_url: str,
        sandbox: Sandbox,
        tmp_path: Path,
    ) -> None:
        """Killed while waiting, then while requests are out: every record once."""
        app = app_factory()
        buffer = buffer_of(app)
        proc = start_worker(redis_url, sandbox, tmp_path / "w1.log", SUPRSEND_FLUSH_BATCH_SIZE="10")
        try:
            on_duty(app, proc, tmp_path / "w1.log")
        finally:
            kill_group(proc)
            wait_group_gone(proc)
        keys = buffer_events(make_events(20), app=app)  # no one waits: they stay
        sandbox.set_faults([{"delay": 0.3}])
        proc = start_worker(redis_url, sandbox, tmp_path / "w2.log", SUPRSEND_FLUSH_BATCH_SIZE="10")
        try:
            on_duty(app, proc, tmp_path / "w2.log")
            keys += buffer_events(make_events(200, "cart_updated"), app=app)
            wait_for(lambda: sandbox.stats()["requests"] >= 3, timeout=30)
        finally:
            kill_group(proc)  # requests in flight, claims unsettled
            wait_group_gone(proc)
        assert buffer.remaining() > 0, "killed mid-send"
        sandbox.set_faults(None)
        proc = start_worker(redis_url, sandbox, tmp_path / "w3.log")
        try:
            wait_for(
                lambda: sandbox.stats()["events_processed"] == 220 and buffer.remaining() == 0,
                timeout=60,
                interval=0.1,
            )
        finally:
            kill_group(proc)
            wait_group_gone(proc)
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        assert redis_state(buffer) == EMPTY
