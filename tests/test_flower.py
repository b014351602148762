"""Retry monitoring in a real Flower: state, retries, reason, redacted arguments, results.

A real worker (``celery -A suprsend_celery.app worker``, events on) and a real Flower
(``celery -A suprsend_celery.app flower``) run as subprocesses on the private Redis;
this process publishes with ``task_send_sent_event``. Everything is read through
Flower's HTTP API, the way an operator's tooling would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from celery import Celery
from conftest import WORKSPACE_KEY, WORKSPACE_SECRET, wait_for

from suprsend_celery import Event, buffer_events, flush_buffer, track_event
from suprsend_celery.dev.redis_server import RedisServer

pytestmark = pytest.mark.slow

MARKER = "flower-marker-5d1c-never-shown"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Stack:
    """A worker and a Flower subprocess sharing one environment."""

    def __init__(self, tmp_path: Path, redis_url: str, sandbox_url: str, queue: str) -> None:
        self.tmp_path = tmp_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPRSEND_", "CELERY_"))}
        env.update(
            SUPRSEND_WORKSPACE_KEY=WORKSPACE_KEY,
            SUPRSEND_WORKSPACE_SECRET=WORKSPACE_SECRET,
            SUPRSEND_BASE_URL=sandbox_url,
            SUPRSEND_FLUSH_INTERVAL="0",
            CELERY_BROKER_URL=redis_url,
            CELERY_TASK_DEFAULT_QUEUE=queue,
            FLOWER_UNAUTHENTICATED_API="1",
            PYTHONUNBUFFERED="1",
        )
        self.env = env
        self.queue = queue
        self.app_module = "suprsend_celery.app"
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def spawn(self, name: str, *args: str) -> None:
        log = self.tmp_path / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", self.app_module, *args],
                env=self.env,
                cwd=self.tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append((process, log))

    def start(self) -> None:
        name = f"flower-test-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        self.spawn(
            "worker",
            "worker",
            "--pool=prefork",
            "-c",
            "1",
            "-Q",
            self.queue,
            "-n",
            name,
            "-E",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
        )
        self.spawn(
            "flower",
            "flower",
            f"--port={self.port}",
            "--address=127.0.0.1",
        )
        self.wait(self._flower_up, 60, f"Flower on {self.url}")
        # Events on from the start (-E), and Flower's event receiver connected: it has
        # had the worker's heartbeat. Otherwise a task received before Flower's first
        # ``enable_events`` broadcast shows in Flower without its arguments.
        self.wait(lambda: self._sees_heartbeat(name), 60, f"Flower receiving {name}'s events")

    def _sees_heartbeat(self, name: str) -> bool:
        self.check_alive()
        try:
            return self.api("/api/workers?status=1")[0].get(name) is True
        except requests.RequestException:
            return False

    def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """``wait_for``, with both processes' logs (as they are then) if it times out."""
        try:
            return wait_for(condition, timeout, 0.05, message=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def task(self, task_id: str) -> dict[str, Any] | None:
        """Flower's view of one task, or None while Flower has not seen it."""
        self.check_alive()
        try:
            info: dict[str, Any] = self.api(f"/api/task/info/{task_id}")[0]
        except requests.HTTPError:
            return None
        return info

    def _flower_up(self) -> bool:
        self.check_alive()
        try:
            return requests.get(f"{self.url}/healthcheck", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def check_alive(self) -> None:
        for process, log in self.processes:
            if process.poll() is not None:
                raise AssertionError(f"{log.stem} exited: {log.read_text(errors='replace')}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.stem}\n" + log.read_text(errors="replace")[-3000:]
            for _, log in self.processes
        )

    def api(self, path: str) -> tuple[Any, str]:
        """(parsed JSON, raw text) of a Flower API response."""
        response = requests.get(self.url + path, timeout=10)
        response.raise_for_status()
        return response.json(), response.text

    def stop(self) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                process.terminate()
        for process, _ in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait(5)
            else:
                # prefork children leave with their parent; make sure of it.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, 9)


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, sandbox: Any) -> Iterator[Stack]:
    queue = f"flower-{uuid.uuid4().hex[:8]}"
    stack = Stack(tmp_path, redis_url, sandbox.url, queue)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def producer(app_factory: Callable[..., Celery], stack: Stack) -> Celery:
    """This process's app: same Redis and queue, and it sends task-sent events.

    Flower answers HTTP before its event receiver listens, and task events sent before
    that are gone (they are broadcast, not queued): send no-op probes (Celery's built-in
    ``celery.accumulate``, which touches neither the buffer nor the sandbox) until
    Flower shows one, so the test's own tasks are seen from their first event.
    """
    app = app_factory(task_default_queue=stack.queue, task_send_sent_event=True)
    deadline = time.monotonic() + 60
    while True:
        probe = app.send_task("celery.accumulate", args=("probe",)).id
        try:
            stack.wait(lambda probe=probe: stack.task(probe) is not None, 3, "a probe in Flower")
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        else:
            return app


class TestFlower:
    def test_retrying_task_shows_state_reason_and_redacted_arguments(
        self, stack: Stack, producer: Celery, sandbox: Any
    ) -> None:
        """503 twice (Retry-After 2): Flower shows RETRY with why and when, then SUCCESS."""
        sandbox.set_faults(
            {"paths": ["/v2/event/"], "rules": [{"status": 503, "retry_after": "2", "count": 2}]}
        )
        result = track_event.delay(
            "user-42", "order_shipped", {"note": MARKER}, idempotency_key="flower-key-1"
        )
        task_id = result.id
        seen: dict[str, dict[str, Any]] = {}
        raw: list[str] = []

        def observe(state: str) -> bool:
            stack.check_alive()
            try:
                info, text = stack.api(f"/api/task/info/{task_id}")
            except requests.HTTPError:
                return False  # 404 until Flower saw the first event
            raw.append(text)
            seen.setdefault(info["state"], info)
            return info["state"] == state

        stack.wait(lambda: observe("RETRY"), 60, "state RETRY")
        stack.wait(lambda: observe("SUCCESS"), 60, "state SUCCESS")

        retry = seen["RETRY"]
        assert retry["name"] == "suprsend_celery.track_event"
        assert "503" in retry["exception"]
        assert re.search(r"retry [12]/\d+ in \d+(\.\d+)?s", retry["exception"]), retry
        assert "flower-key-1" in retry["exception"]
        assert retry["eta"]  # when the retry is due

        final = seen["SUCCESS"]
        assert final["retries"] == 2
        assert final["args"] == "()"
        kwargs = final["kwargs"]
        for shown in ("order_shipped", "user-42", "flower-key-1"):
            assert shown in kwargs
        assert "'attempts': 3" in final["result"]
        assert "flower-key-1" in final["result"]

        tasks, tasks_text = stack.api("/api/tasks")
        assert task_id in tasks
        everything = "\n".join([*raw, tasks_text])
        assert MARKER not in everything
        assert WORKSPACE_SECRET not in everything
        assert "properties" not in everything
        assert sandbox.stats()["events_processed"] == 1

    def test_flush_runs_show_their_counts(
        self, stack: Stack, producer: Celery, sandbox: Any
    ) -> None:
        """A flush_buffer run's result in Flower is its sent/retry/dead/remaining counts."""
        buffer_events(
            [Event(f"u{i}", "page_viewed", {"note": MARKER}) for i in range(7)], app=producer
        )
        task_id = flush_buffer.delay().id

        def finished() -> dict[str, Any] | None:
            info = stack.task(task_id)
            return info if info and info["state"] == "SUCCESS" else None

        info = stack.wait(finished, 60, "flush_buffer SUCCESS")
        assert info["name"] == "suprsend_celery.flush_buffer"
        result = info["result"]
        explain = f"{info}\n{stack.logs()}"
        for shown in ("'sent': 7", "'retry_scheduled': 0", "'dead_lettered': 0"):
            assert shown in result, explain
        assert "'remaining': 0" in result, explain
        assert "'seconds':" in result, explain
        _, text = stack.api("/api/tasks")
        assert MARKER not in text
        assert WORKSPACE_SECRET not in json.dumps(info)
        assert sandbox.stats()["events_processed"] == 7, (sandbox.stats(), explain)


PASSWORD = "flower-pw-marker-0b7d-never-shown"


@pytest.fixture
def locked_stack(tmp_path: Path, sandbox: Any) -> Iterator[Stack]:
    """A worker and Flower on a Redis that wants a password, with ``suprsend_redis_url``
    (password included) in the worker's Celery config, as Django settings would put it."""
    with RedisServer(appendonly=False, extra_args=["--requirepass", PASSWORD]) as server:
        url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
        stack = Stack(tmp_path, url, sandbox.url, f"flower-{uuid.uuid4().hex[:8]}")
        stack.app_module = "_conf_app"
        stack.env["SUPRSEND_REDIS_URL"] = url
        stack.env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).parent), stack.env.get("PYTHONPATH", "")]
        )
        try:
            stack.start()
            yield stack
        finally:
            stack.stop()


class TestFlowerRedaction:
    def test_by_name_call_and_worker_page_show_no_secrets(
        self, locked_stack: Stack, app_factory: Callable[..., Celery], sandbox: Any
    ) -> None:
        """A call published by name (another service: no task-sent event): Flower's task
        views and ``celery inspect active/conf`` show the event and its key (the task id),
        never the property marker, the workspace secret or the Redis password."""
        stack = locked_stack
        producer = app_factory(
            broker_url=stack.env["CELERY_BROKER_URL"],
            result_backend=None,
            suprsend_redis_url=stack.env["SUPRSEND_REDIS_URL"],
            task_default_queue=stack.queue,
        )
        sandbox.set_faults({"rules": [{"delay": 6, "count": 1}]})
        held = producer.send_task(
            "suprsend_celery.track_event", args=["u-held", "order_placed", {"note": MARKER}]
        )
        stack.wait(lambda: sandbox.faults()["rules"][0]["applied"] >= 1, 60, "a held send")

        def inspect(what: str) -> str:
            """``celery inspect`` on the command line, as an operator would run it."""
            command = [sys.executable, "-m", "celery", "-A", stack.app_module, "inspect", what]
            done = subprocess.run(
                [*command, "-t", "10", "--json"],
                env=stack.env,
                cwd=stack.tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
            return done.stdout + done.stderr

        workers = inspect("active") + inspect("conf")
        assert held.id in workers, workers
        assert "suprsend_redis_url" in workers, workers
        # Flower's worker page (/api/workers) shows each worker's conf, URLs included.
        _, worker_page = stack.api("/api/workers?refresh=1")
        assert '"suprsend_redis_url": "redis://:***@' in worker_page, worker_page
        stack.wait(lambda: (stack.task(held.id) or {}).get("state") == "SUCCESS", 60, "SUCCESS")
        info, text = stack.api(f"/api/task/info/{held.id}")
        assert held.id in info["kwargs"]  # the key is the task id
        everything = "\n".join([workers, worker_page, text, stack.api("/api/tasks")[1]])
        for hidden in (MARKER, PASSWORD, WORKSPACE_SECRET):
            assert hidden not in everything
        assert sandbox.events()[0]["$idempotency_key"] == held.id
