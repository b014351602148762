"""What a worker says about its buffer: one line at start, then repeated flush failures
summarised rather than a traceback per beat.

Real workers (``celery -A <module> worker``) in subprocesses on the test Redis as
broker; the buffer's Redis is that one, or a closed port.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _buffer_helpers import kill_group, spawn, subprocess_env
from celery import Celery
from conftest import make_app, wait_for

from suprsend_celery.dev.redis_server import RedisServer
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.pipeline.settings import reset_settings
from suprsend_celery.tasks.beat import startup_report
from suprsend_celery.tasks.flush import FailureSummary

TESTS = Path(__file__).resolve().parent


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def run_worker(tmp_path: Path, redis_url: str, sandbox: Sandbox) -> Iterator[Callable[..., Path]]:
    """Start a real worker of a fresh app module; returns its log file."""
    procs = []

    def start(buffer_url: str, *extra: str) -> Path:
        module = f"start_proj_{uuid.uuid4().hex[:8]}"
        queue = f"suprsend-start-{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{module}.py").write_text(
            "from celery import Celery\n"
            f"app = Celery({module!r}, broker={redis_url!r})\n"
            "app.conf.update(\n"
            "    imports=('suprsend_celery.tasks',),\n"
            f"    task_default_queue={queue!r},\n"
            f"    suprsend_redis_url={buffer_url!r},\n"
            "    suprsend_flush_interval=0.5,\n"
            ")\n"
        )
        env = subprocess_env(
            SUPRSEND_BASE_URL=sandbox.url, PYTHONPATH=f"{tmp_path}{os.pathsep}{TESTS.parent}"
        )
        log = tmp_path / f"{module}.log"
        args = ["-m", "celery", "-A", module, "worker", "--loglevel=INFO", "--pool=solo"]
        args += [f"--schedule={tmp_path / module}.beat", *extra]
        procs.append(spawn(args, env, log))
        wait_for(lambda: "ready." in log.read_text(), timeout=60, message="worker ready")
        return log

    yield start
    for proc in procs:
        kill_group(proc)


@pytest.mark.slow
def test_unreachable_buffer_is_said_at_start_and_failures_summarised(
    run_worker: Callable[..., Path],
) -> None:
    """One WARNING line at start names the Redis, the schedule and the problem; beat's
    failing flush runs then log their cause once, with no traceback per run."""
    port = closed_port()
    log = run_worker(f"redis://:start-pw-marker@127.0.0.1:{port}/0", "-B")
    wait_for(
        lambda: len(re.findall(r"flush_buffer\[\S+\] raised", log.read_text())) >= 5,
        timeout=60,
        message="five failed flush runs",
    )
    text = log.read_text()
    (start,) = [line for line in text.splitlines() if "suprsend-celery: buffer on Redis" in line]
    assert "WARNING" in start
    assert f"redis://:***@127.0.0.1:{port}/0, key prefix suprsend_celery" in start
    assert "flush_buffer every 0.5s by this worker's beat" in start
    assert "problems: Redis unreachable (ConnectionError" in start
    assert text.index(start) < text.index("ready.")
    assert text.count("flush_buffer stopped: Redis failed (ConnectionError") == 1, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert "start-pw-marker" not in text


@pytest.mark.slow
def test_healthy_worker_without_beat_says_so(
    run_worker: Callable[..., Path], redis_url: str
) -> None:
    log = run_worker(redis_url)
    text = log.read_text()
    (start,) = [line for line in text.splitlines() if "suprsend-celery: buffer on Redis" in line]
    assert "INFO" in start
    assert "(no beat in this worker); Redis answers" in start


def test_app_without_suprsend_settings_gets_no_start_line(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ``celery`` worker of an environment with the package loads it (the
    ``celery suprsend`` command): an app on a Redis broker with no ``suprsend_*``
    setting anywhere is not told that it lacks credentials."""
    for name in list(os.environ):
        if name.startswith("SUPRSEND_"):
            monkeypatch.delenv(name)
    app = Celery("unrelated", broker=redis_url, set_as_current=False)
    try:
        assert startup_report(app, embedded_beat=False) == (None, [])
        app.conf.suprsend_workspace_key = "WSKEY_unrelated_0123456789"
        line, problems = startup_report(app, embedded_beat=False)
        assert line is not None and "suprsend_workspace_secret" in line, line
        assert [p for p in problems if p.startswith("nothing can be sent")], problems
    finally:
        reset_settings(app)
        app.close()


def test_evicting_redis_is_a_start_problem(sandbox: Sandbox) -> None:
    with RedisServer(
        appendonly=False, extra_args=["--maxmemory", "16mb", "--maxmemory-policy", "allkeys-lru"]
    ) as server:
        app: Celery = make_app(server.url, sandbox.url)
        try:
            line, problems = startup_report(app, embedded_beat=False)
        finally:
            reset_settings(app)
            app.close()
    assert line is not None
    (problem,) = problems
    assert "maxmemory-policy allkeys-lru" in problem
    assert "problems: the Redis of the buffer" in line


def test_failure_summary_says_once_then_per_interval_then_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="suprsend_celery")
    summary = FailureSummary(every=3600)
    for _ in range(50):
        summary.failed(ConnectionError("refused"))
    summary.succeeded()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("flush_buffer failed: ConnectionError: refused")
    assert lines[1] == "flush_buffer runs again after 50 failed run(s)"
    summary.every = 0
    summary.failed(ConnectionError("refused"))
    summary.failed(ConnectionError("refused"))
    assert caplog.records[-1].getMessage().startswith("flush_buffer has failed 2 runs in a row")
