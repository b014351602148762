"""The Django example (examples/django_app) against a real worker and the sandbox.

The example's own pytest-django suite runs in a subprocess with its own settings
(``-c examples/django_app/pytest.ini``), so Django is never configured in this
process and the rest of the suite is unaffected. This test supplies what that suite
needs (Redis, the sandbox, ``celery -A shop worker --beat``) and then checks, from
the outside, exactly what reached SuprSend.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import WORKSPACE_KEY, WORKSPACE_SECRET

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "django_app"


def example_env(redis_url: str, sandbox_url: str, tmp_path: Path, queue: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SUPRSEND_", "CELERY_", "DJANGO_", "PYTEST_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="shop.settings",
        DJANGO_DB_PATH=str(tmp_path / "db.sqlite3"),
        SUPRSEND_WORKSPACE_KEY=WORKSPACE_KEY,
        SUPRSEND_WORKSPACE_SECRET=WORKSPACE_SECRET,
        SUPRSEND_BASE_URL=sandbox_url,
        SUPRSEND_FLUSH_INTERVAL="1",
        CELERY_BROKER_URL=redis_url,
        CELERY_TASK_DEFAULT_QUEUE=queue,
        PYTHONUNBUFFERED="1",
    )
    return env


def test_example_project_sends_only_committed_events(
    redis_url: str, sandbox: Any, tmp_path: Path
) -> None:
    """Committed orders deliver both events; a rolled-back order delivers none."""
    queue = f"django-example-{uuid.uuid4().hex[:8]}"
    env = example_env(redis_url, sandbox.url, tmp_path, queue)
    log = tmp_path / "worker.log"
    worker_command = [
        sys.executable, "-m", "celery", "-A", "shop", "worker", "--beat",
        "--pool=prefork", "-c", "1", "-Q", queue,
        "-n", f"{queue}@%h", "-s", str(tmp_path / "beat-schedule"),
        "--without-gossip", "--without-mingle", "--loglevel=INFO",
    ]  # fmt: skip
    pytest_command = [
        sys.executable, "-m", "pytest", "-q",
        "-c", str(EXAMPLE / "pytest.ini"), "--rootdir", str(EXAMPLE), str(EXAMPLE / "tests"),
    ]  # fmt: skip
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            worker_command,
            cwd=EXAMPLE,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        inner = subprocess.run(
            pytest_command,
            cwd=EXAMPLE,
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
        report = inner.stdout + inner.stderr
        assert worker.poll() is None, log.read_text(errors="replace")
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, 9)
            worker.wait(5)
    assert inner.returncode == 0, report + "\n--- worker log\n" + log.read_text(errors="replace")
    assert "2 passed" in report

    # Two committed orders, two events each; nothing from the rolled-back one.
    events = sandbox.events()
    assert sorted(e["event"] for e in events) == [
        "order_placed",
        "order_placed",
        "product_purchased",
        "product_purchased",
    ]
    assert {e["distinct_id"] for e in events} == {"cust-commit", "cust-after"}
    stats = sandbox.stats()
    assert stats["events_processed"] == 4
    assert stats["duplicates_skipped"] == 0
    assert stats["rejected"] == 0
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.llen("{suprsend_celery}:pending") == 0  # nothing left in the buffer
    finally:
        client.close()
