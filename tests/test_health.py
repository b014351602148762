"""``suprsend-celery check``: each failure it claims to catch, made real and caught.

A dead beat is a real worker running without one; an unreachable Redis is a closed
port, and a Redis that accepts connections but never answers.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from _buffer_helpers import (
    buffer_of,
    kill_group,
    make_events,
    settlement,
    spawn,
    subprocess_env,
)
from celery import Celery
from click.testing import CliRunner, Result
from conftest import make_app, wait_for

from suprsend_celery import buffer_events
from suprsend_celery.delivery.dead_letters import dead_letter_entry
from suprsend_celery.dev.redis_server import RedisServer
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.ops.cli import cli
from suprsend_celery.pipeline.settings import reset_settings

QUEUE = "suprsend-health-test"


def check(app: Celery, *args: str) -> Result:
    return CliRunner().invoke(cli, ["check", *args], obj=app)


def problems(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("PROBLEM: ")]


def run_check(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """The real console script, timed."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "suprsend_celery.ops.cli", "check", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done, time.monotonic() - started


class TestHealthy:
    def test_empty_buffer_is_healthy_and_names_what_it_read(
        self, celery_app: Celery, redis_url: str
    ) -> None:
        """Exit 0, and the Redis and key prefix it read are printed."""
        result = check(celery_app, "--max-age", "60", "--max-dead", "0", "--breaker-open", "60")
        assert result.exit_code == 0, result.output
        port = urlsplit(redis_url).port
        assert f"redis://127.0.0.1:{port}/0, key prefix suprsend_celery" in result.output
        assert result.output.splitlines()[-1] == "healthy"


class TestProblems:
    def test_oldest_record_too_old(self, celery_app: Celery) -> None:
        """A record accepted two minutes ago fails --max-age 60, passes --max-age 300."""
        old = int(time.time() * 1000) - 120_000
        record = json.dumps({"$insert_id": "x", "$time": old, "event": "e"}).encode()
        buffer_of(celery_app).push([record])
        result = check(celery_app, "--max-age", "60")
        assert result.exit_code == 1
        (line,) = problems(result)
        assert "the oldest record waited 12" in line and "--max-age 60s" in line
        assert check(celery_app, "--max-age", "300").exit_code == 0

    def test_too_many_dead_letters(self, celery_app: Celery) -> None:
        """Three dead letters fail --max-dead 2 and pass --max-dead 3."""
        buffer = buffer_of(celery_app)
        for i in range(3):
            entry = dead_letter_entry(
                b'{"event": "e"}', error="HTTP 400", status_code=400, attempts=1, source="buffer"
            )
            buffer.dead_letter(entry + str(i).encode())
        result = check(celery_app, "--max-dead", "2")
        assert result.exit_code == 1
        assert problems(result) == [
            "PROBLEM: 3 dead letters (--max-dead 2): see `suprsend-celery dead-letters list`"
        ]
        assert check(celery_app, "--max-dead", "3").exit_code == 0

    def test_breaker_open_too_long(self, celery_app: Celery) -> None:
        """Credentials refused open the breaker; it stays open across a failed probe."""
        buffer = buffer_of(celery_app)
        buffer.push([b'{"event": "e"}'])
        claim = buffer.claim(10, lease=30)
        assert buffer.settle(
            claim.id, settlement(back=claim.items, verdict="auth", reason="HTTP 401: no")
        )
        time.sleep(0.05)  # so that "open for" is measurably above 0 s (Redis TIME)
        result = check(celery_app, "--breaker-open", "0")
        assert result.exit_code == 1
        (line,) = problems(result)
        assert "circuit breaker has been open for" in line and "HTTP 401: no" in line
        assert check(celery_app, "--breaker-open", "600").exit_code == 0

    def test_records_waiting_and_no_flush_ever(self, app_factory: Callable[..., Celery]) -> None:
        """Records older than 3 intervals and no flush run ever recorded: beat never ran."""
        app = app_factory(suprsend_flush_interval=1)
        old = int(time.time() * 1000) - 10_000
        buffer_of(app).push([json.dumps({"$time": old, "event": "e"}).encode()])
        result = check(app)
        assert result.exit_code == 1
        (line,) = problems(result)
        waited = re.search(r"no flush run has ever been recorded.* waited (\d+)s", line)
        assert waited and 10 <= int(waited.group(1)) < 30, line

    def test_every_problem_on_its_own_line(self, celery_app: Celery) -> None:
        """Two problems at once: two lines, exit 1."""
        buffer = buffer_of(celery_app)
        old = int(time.time() * 1000) - 120_000
        buffer.push([json.dumps({"$time": old, "event": "e"}).encode()])
        buffer.dead_letter(b'{"error": "x"}\n{}')
        result = check(celery_app, "--max-age", "1", "--max-dead", "0")
        assert result.exit_code == 1
        assert len(problems(result)) == 2


class TestEvictingRedis:
    @pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-random"])
    def test_allkeys_policy_is_a_problem(self, sandbox: Sandbox, policy: str) -> None:
        """A Redis whose policy makes the producers refuse every accept is not healthy,
        though its buffer is empty and nothing is stale."""
        with RedisServer(
            appendonly=False, extra_args=["--maxmemory", "16mb", "--maxmemory-policy", policy]
        ) as server:
            app = make_app(server.url, sandbox.url)
            try:
                result = check(app)
            finally:
                reset_settings(app)
                app.close()
        assert result.exit_code == 1, result.output
        (line,) = problems(result)
        assert f"maxmemory-policy {policy}" in line
        assert "noeviction" in line and "refuse every event" in line
        assert "healthy" not in result.output

    def test_volatile_policy_is_healthy(self, sandbox: Sandbox) -> None:
        """volatile-* never evicts our keys (they have no TTL): no problem."""
        with RedisServer(
            appendonly=False, extra_args=["--maxmemory-policy", "volatile-lru"]
        ) as server:
            app = make_app(server.url, sandbox.url)
            try:
                result = check(app)
            finally:
                reset_settings(app)
                app.close()
        assert result.exit_code == 0, result.output


class TestWrongKinds:
    def test_a_key_of_another_type_is_named(self, celery_app: Celery) -> None:
        """Another program's values under our prefix: every flush run would fail on
        them (WRONGTYPE), so ``check`` names each such key and the type it should hold,
        rather than calling Redis unreachable."""
        buffer = buffer_of(celery_app)
        buffer_events(make_events(3), app=celery_app)
        buffer.redis.set(buffer.keys.claims, b"garbage")
        buffer.redis.delete(buffer.keys.metrics)
        buffer.redis.rpush(buffer.keys.metrics, b"x")
        result = check(celery_app)
        assert result.exit_code == 1, result.output
        tail = (
            "another program writes under this key prefix (give it, or us, another "
            "prefix), and every flush run fails on it until the key is deleted"
        )
        assert problems(result) == [
            f"PROBLEM: {buffer.keys.claims} holds a string, where the buffer keeps a zset: {tail}",
            f"PROBLEM: {buffer.keys.metrics} holds a list, where the buffer keeps a hash: {tail}",
        ]
        assert "unreachable" not in result.output
        buffer.redis.delete(buffer.keys.claims, buffer.keys.metrics)
        assert check(celery_app).exit_code == 0


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TestRedisUnreachable:
    def test_closed_port(self) -> None:
        """Nothing listening: exit 1 at once, the password masked in what it names."""
        url = f"redis://:s3cret-pw@127.0.0.1:{closed_port()}/3"
        done, seconds = run_check(subprocess_env(CELERY_BROKER_URL=url))
        assert done.returncode == 1, done.stdout + done.stderr
        assert "PROBLEM: Redis unreachable" in done.stdout
        assert ":***@127.0.0.1:" in done.stdout and "/3, key prefix" in done.stdout
        assert "s3cret-pw" not in done.stdout + done.stderr
        assert seconds < 10

    def test_redis_that_never_answers(self, silent_port: int) -> None:
        """A hung Redis: exit 1 within the --timeout, not after redis-py's retries."""
        env = subprocess_env(CELERY_BROKER_URL=f"redis://127.0.0.1:{silent_port}/0")
        done, seconds = run_check(env, "--timeout", "1")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "PROBLEM: Redis unreachable: TimeoutError" in done.stdout
        assert seconds < 8, seconds


def start_relay(env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen[bytes]:
    """The standalone relay's worker (or beat), as deployed: ``celery -A suprsend_celery.app``."""
    args = ["-m", "celery", "-A", "suprsend_celery.app", *extra, "--loglevel=INFO"]
    return spawn(args, env, log)


@pytest.mark.slow
class TestDeadBeat:
    def test_worker_without_beat_then_beat_started(
        self,
        app_factory: Callable[..., Celery],
        redis_url: str,
        sandbox: Sandbox,
        tmp_path: Path,
    ) -> None:
        """A worker runs but beat does not: waiting records and no flush for 3 intervals
        is a problem; once beat runs, the buffer drains and the check passes."""
        app = app_factory(suprsend_flush_interval=1, task_default_queue=QUEUE)
        buffer = buffer_of(app)
        env = subprocess_env(
            SUPRSEND_BASE_URL=sandbox.url,
            SUPRSEND_FLUSH_INTERVAL="1",
            CELERY_BROKER_URL=redis_url,
            CELERY_TASK_DEFAULT_QUEUE=QUEUE,
        )
        worker_log = tmp_path / "worker.log"
        worker = start_relay(env, worker_log, "worker", "-Q", QUEUE, "-c", "1", "--without-gossip")
        beat = None
        try:
            wait_for(
                lambda: app.control.ping(timeout=0.5),
                timeout=60,
                message="the worker to answer a ping",
            )
            # The worker drains on demand: a flush run is recorded, nothing waits.
            buffer_events(make_events(20), app=app)
            from suprsend_celery.defaults import FLUSH_TASK

            flushed_at = time.monotonic()  # the run ends after this
            app.send_task(FLUSH_TASK, queue=QUEUE).get(timeout=30)
            assert buffer.remaining() == 0
            assert check(app).exit_code == 0
            # Then no one schedules flush_buffer while events keep arriving.
            buffer_events(make_events(5, name="later"), app=app)
            result = wait_for(
                lambda: (r := check(app)).exit_code == 1 and r,
                timeout=20,
                interval=0.2,
                message="check to notice that no flush ran",
            )
            assert time.monotonic() - flushed_at > 3 * 1.0
            (line,) = problems(result)
            assert "no flush run for" in line and "while 5 record(s) wait" in line
            assert "is beat running" in line
            assert app.control.ping(timeout=1), "the worker is alive all along"
            assert buffer.remaining() == 5
            beat = start_relay(
                env, tmp_path / "beat.log", "beat", "--schedule", str(tmp_path / "schedule")
            )
            wait_for(
                lambda: buffer.remaining() == 0 and check(app).exit_code == 0,
                timeout=30,
                interval=0.2,
                message="beat to schedule flushes and the check to pass",
            )
            assert sandbox.stats()["events_processed"] == 25
        finally:
            for proc in (worker, beat):
                if proc is not None:
                    kill_group(proc)
