"""The Django example (examples/django_app) against a real worker and the sandbox.

The example's own pytest-django suite runs in a subprocess with its own settings
(``-c examples/django_app/pytest.ini``), so Django is never configured in this
process and the rest of the suite is unaffected. This test supplies what that suite
needs (Redis, the sandbox, ``celery -A shop worker --beat``) and then checks, from
the outside, exactly what reached SuprSend.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from conftest import REDIS_KILLED, WORKSPACE_KEY, WORKSPACE_SECRET, wait_for

from suprsend_celery.dev.redis_server import RedisServer

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


def worker_command(queue: str, tmp_path: Path) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "shop", "worker", "--beat",
        "--pool=prefork", "-c", "1", "-Q", queue,
        "-n", f"{queue}@%h", "-s", str(tmp_path / "beat-schedule"),
        "--without-gossip", "--without-mingle", "--loglevel=INFO",
    ]  # fmt: skip


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait(5)


@REDIS_KILLED
def test_order_placed_while_redis_is_down(sandbox: Any, tmp_path: Path) -> None:
    """The real view answers 201 with Redis stopped; its events wait in the outbox and
    are delivered, once each, after Redis is back (relayed by the worker's flush runs)."""
    with RedisServer(appendonly=True) as server:
        queue = f"django-example-{uuid.uuid4().hex[:8]}"
        env = example_env(server.url, sandbox.url, tmp_path, queue)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=EXAMPLE, env=env, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        log = tmp_path / "processes.log"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with open(log, "wb") as out:
            web = subprocess.Popen(
                [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
                cwd=EXAMPLE, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            worker = subprocess.Popen(
                worker_command(queue, tmp_path),
                cwd=EXAMPLE, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}/orders/"
        try:

            def answers() -> bool:
                try:
                    return requests.get(url[: -len("orders/")], timeout=2).status_code == 200
                except requests.ConnectionError:
                    return False

            wait_for(answers, timeout=30, message="runserver answering")
            server.kill()
            started = time.monotonic()
            response = requests.post(
                url, data={"customer": "cust-redis-down", "sku": "tea", "quantity": "1"}, timeout=30
            )
            assert response.status_code == 201, response.text
            assert time.monotonic() - started < 5
            keys = response.json()["events"]
            assert sandbox.stats()["events_processed"] == 0
            server.start()

            def delivered() -> bool:
                return {e["$idempotency_key"] for e in sandbox.events()} >= set(keys)

            wait_for(delivered, timeout=90, interval=0.2, message="the events after Redis is back")
        finally:
            stop(web)
            stop(worker)
    got = [e["$idempotency_key"] for e in sandbox.events()]
    assert sorted(got) == sorted(keys), log.read_text(errors="replace")
    assert sandbox.stats()["duplicates_skipped"] == 0


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
