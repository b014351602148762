"""A worker whose app never imports suprsend_celery (no ``app.conf.imports``), and the
direct events no worker runs.

Issue 21 item 13. Installing the package adds a ``celery suprsend`` sub-command (a
``celery.commands`` entry point); the ``celery`` program loads it at start, which
registers our tasks with every app, so such a worker runs ``track_event`` all the same
(tested with a real prefork worker, the entry point installed as ``pyproject.toml``
declares it). And a ``track_event`` nobody runs is visible: ``status``, ``check`` and
the exporter show the direct path's journal, not "pending 0".
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from _buffer_helpers import kill_group, spawn, subprocess_env
from _metrics_helpers import scrape_wsgi, value
from celery import Celery
from click.testing import CliRunner, Result
from conftest import wait_for

from suprsend_celery import track_event
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.ops.cli import cli
from suprsend_celery.ops.exporter import wsgi_app
from suprsend_celery.ops.health import journal_window
from suprsend_celery.pipeline.runtime import get_buffer, get_flusher

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ("suprsend", "suprsend_celery.ops.celery_command:suprsend")


def invoke(app: Celery, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), obj=app)


def publish_unrun(app: Celery, overdue: float) -> str:
    """A ``track_event`` no worker will run (its task unregistered there), its journal
    entry made ``overdue`` seconds past due, as that long after its grace. Its key."""
    key = f"unrun-{uuid.uuid4().hex[:8]}"
    track_event.delay("u1", "order_placed", {"n": 1}, idempotency_key=key)
    buffer = get_buffer(app)
    assert buffer is not None
    (member,) = [m for m in buffer.redis.zrange(buffer.keys.journal, 0, -1) if key.encode() in m]
    buffer.redis.zadd(buffer.keys.journal, {member: buffer.snapshot().now - overdue})
    return key


class TestJournalIsVisible:
    """A direct event waiting in the journal shows in ``status``, ``check`` and the
    exporter, where ``pending`` alone said 0."""

    def test_status_shows_the_journal(self, celery_app: Celery) -> None:
        """``status --json`` and the table name the entry, how many are due and by how
        long the first is overdue."""
        publish_unrun(celery_app, overdue=100)
        figures = json.loads(invoke(celery_app, "status", "--json").stdout)
        assert (figures["pending"], figures["journal"], figures["journal_due"]) == (0, 1, 1)
        assert 99 <= figures["journal_overdue_seconds"] < 130
        assert 0 <= figures["journal_oldest_age_seconds"] < 30
        table = invoke(celery_app, "status").stdout
        (line,) = [row for row in table.splitlines() if row.startswith("direct journal")]
        assert "1 (1 due, overdue 10" in line, table

    def test_status_table_without_entries(self, celery_app: Celery) -> None:
        table = invoke(celery_app, "status").stdout
        (line,) = [row for row in table.splitlines() if row.startswith("direct journal")]
        assert line.split()[-1] == "0"

    def test_check_reports_overdue_entries(self, celery_app: Celery) -> None:
        """Overdue past 3 flush intervals plus a run's budget: a problem naming the likely
        cause; an entry not yet due (a task still queued) is healthy."""
        track_event.delay("u2", "order_placed", idempotency_key="still-queued")
        healthy = invoke(celery_app, "check")
        assert healthy.exit_code == 0, healthy.output
        window = journal_window(0)  # the test app's flush interval is 0
        publish_unrun(celery_app, overdue=window + 60)
        result = invoke(celery_app, "check")
        assert result.exit_code == 1
        (problem,) = problems = [ln for ln in result.output.splitlines() if ln.startswith("PROB")]
        assert problem.startswith("PROBLEM: 1 direct-path event(s) (track_event) overdue"), problems
        assert "Received unregistered task" in problem
        assert "Registering the tasks" in problem

    def test_exporter_serves_the_journal_gauges(self, celery_app: Celery, sandbox: Sandbox) -> None:
        """The gauges while the entry waits; once the flusher takes it over, they fall to
        0 and ``direct_events_total{outcome="taken_over"}`` counts it."""
        key = publish_unrun(celery_app, overdue=100)
        samples = scrape_wsgi(wsgi_app(celery_app))
        assert value(samples, "suprsend_celery_journal_records") == 1
        assert value(samples, "suprsend_celery_journal_overdue_seconds") >= 99
        assert value(samples, "suprsend_celery_journal_oldest_age_seconds") >= 0
        assert get_flusher(celery_app).run(time_budget=2).sent == 1
        assert [e["$idempotency_key"] for e in sandbox.events()] == [key]
        samples = scrape_wsgi(wsgi_app(celery_app))
        assert value(samples, "suprsend_celery_journal_records") == 0
        assert value(samples, "suprsend_celery_journal_overdue_seconds") == 0
        assert value(samples, "suprsend_celery_direct_events_total", outcome="taken_over") == 1


def declared_command() -> tuple[str, str]:
    """The ``celery.commands`` entry point ``pyproject.toml`` declares."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split('[project.entry-points."celery.commands"]\n', 1)[1].split("\n[", 1)[0]
    ((name, target),) = re.findall(r'^(\w+) = "([^"]+)"$', section, re.MULTILINE)
    return name, target


def install_entry_point(site: Path) -> None:
    """What ``pip install`` writes for our ``celery.commands`` entry point, in a folder
    put on a child's ``PYTHONPATH`` (the test environment may hold an older install)."""
    name, target = declared_command()
    dist = site / "suprsend_celery_entry_point_test-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: suprsend-celery-entry-point-test\nVersion: 0.0\n"
    )
    (dist / "entry_points.txt").write_text(f"[celery.commands]\n{name} = {target}\n")


def test_pyproject_declares_the_celery_command() -> None:
    """``celery -A proj suprsend``: the entry point names a click command."""
    assert declared_command() == COMMAND
    module, _, attr = COMMAND[1].partition(":")
    command = getattr(__import__(module, fromlist=[attr]), attr)
    assert isinstance(command, click.Command)


@pytest.mark.slow
class TestWorkerWithoutImports:
    """Issue 21 item 13: an app that never imports suprsend_celery, run by ``celery``."""

    def _plain_app(self, site: Path, redis_url: str, queue: str) -> None:
        """``plain_proj.py``: a Celery app that knows nothing of suprsend_celery."""
        (site / "plain_proj.py").write_text(
            "from celery import Celery\n\n"
            "app = Celery('plain_proj')\n"
            f"app.conf.update(broker_url={redis_url!r}, result_backend={redis_url!r},\n"
            f"                task_default_queue={queue!r})\n"
        )

    def test_worker_runs_track_event(
        self,
        app_factory: Callable[..., Celery],
        sandbox: Sandbox,
        redis_url: str,
        tmp_path: Path,
    ) -> None:
        """The worker runs the task (no "unregistered task", no message body in its log),
        and ``celery -A plain_proj suprsend status`` reads the same buffer."""
        queue = f"plain-{uuid.uuid4().hex[:8]}"
        site = tmp_path / "site"
        site.mkdir()
        install_entry_point(site)
        self._plain_app(site, redis_url, queue)
        env = subprocess_env(
            SUPRSEND_BASE_URL=sandbox.url,
            SUPRSEND_FLUSH_INTERVAL="0",
            PYTHONPATH=os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        )
        log = tmp_path / "worker.log"
        app = app_factory(task_default_queue=queue)
        marker = "plain-marker-never-logged"
        worker = spawn(
            [
                "-m", "celery", "-A", "plain_proj", "worker", "--pool=prefork", "-c", "1",
                "-Q", queue, "--loglevel=INFO", "--without-gossip", "--without-mingle",
                "--without-heartbeat", "-n", f"{queue}@%h",
            ],
            env,
            log,
        )  # fmt: skip
        try:
            result = track_event.delay("u-plain", "order_placed", {"note": marker})
            wait_for(lambda: result.ready(), 60, 0.1, "the worker to run track_event")
            text = log.read_text(errors="replace")
            assert result.state == "SUCCESS", text[-4000:]
            assert result.result["idempotency_key"] == result.idempotency_key
        finally:
            kill_group(worker)
        text = log.read_text(errors="replace")
        assert "unregistered task" not in text
        assert marker not in text
        assert [e["$idempotency_key"] for e in sandbox.events()] == [result.idempotency_key]
        buffer = get_buffer(app)
        assert buffer is not None
        assert buffer.redis.zcard(buffer.keys.journal) == 0
        status = spawn_status(env, tmp_path)
        assert status["journal"] == 0 and status["pending"] == 0, status


def spawn_status(env: dict[str, str], tmp_path: Path) -> dict[str, object]:
    """``celery -A plain_proj suprsend status --json``, through the celery program."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "plain_proj", "suprsend", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    figures: dict[str, object] = json.loads(done.stdout)
    return figures
