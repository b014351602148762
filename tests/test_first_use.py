"""A new user's first steps (issue 11): the Quick start's path, placeholders refused."""

from __future__ import annotations

import importlib
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _buffer_helpers import TESTS, flush, kill_group, spawn, subprocess_env
from celery import Celery
from conftest import (
    WORKSPACE_KEY,
    WORKSPACE_SECRET,
    close_result_consumer,
    in_process_worker,
    wait_for,
)

from suprsend_celery import ConfigurationError, buffer_event, track_event
from suprsend_celery.defaults import FLUSH_TASK
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.pipeline.settings import reset_settings
from suprsend_celery.tasks.beat import register_beat_entry


@pytest.fixture
def quick_start_app(
    redis_url: str, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """The Quick start's app: a broker and the tasks; every suprsend_* setting from the
    environment, as exported from what the sandbox printed."""
    monkeypatch.setenv("SUPRSEND_BASE_URL", sandbox.url)
    monkeypatch.setenv("SUPRSEND_WORKSPACE_KEY", WORKSPACE_KEY)
    monkeypatch.setenv("SUPRSEND_WORKSPACE_SECRET", WORKSPACE_SECRET)
    monkeypatch.setenv("SUPRSEND_FLUSH_INTERVAL", "0")
    app = Celery("proj", broker=redis_url, set_as_current=False)
    app.conf.update(
        imports=("suprsend_celery.tasks",),
        result_backend=redis_url,
        task_default_queue="suprsend-tests",
        worker_hijack_root_logger=False,
    )
    app.set_current()
    yield app
    reset_settings(app)
    close_result_consumer(app)
    app.close()


class TestQuickStart:
    def test_environment_only_delivers(self, quick_start_app: Celery, sandbox: Sandbox) -> None:
        """The Quick start as written: both paths deliver with settings from the environment."""
        key = buffer_event("user-42", "page_viewed", {"path": "/pricing"}, app=quick_start_app)
        with in_process_worker(quick_start_app):
            result = track_event.delay("user-42", "order_placed", {"order_id": 1001})
            assert result.get(timeout=30)["status"] == "success"
            flush(quick_start_app)
        keys = {e["$idempotency_key"] for e in sandbox.events()}
        assert key in keys and len(keys) == 2

    @pytest.mark.parametrize(
        ("setting", "value"),
        [
            ("suprsend_workspace_key", "WSKEY_..."),
            ("suprsend_workspace_secret", "WSSECRET_..."),
            ("suprsend_workspace_key", "your key..."),
            ("suprsend_workspace_key", "<workspace key>"),
        ],
    )
    def test_placeholder_in_app_conf_is_refused(
        self, quick_start_app: Celery, setting: str, value: str
    ) -> None:
        """A copied placeholder in app.conf beat the real environment and gave a 401 later;
        now the first call refuses it, naming the setting and its environment variable."""
        quick_start_app.conf[setting] = value
        with pytest.raises(ConfigurationError) as info:
            buffer_event("user-42", "page_viewed", app=quick_start_app)
        message = str(info.value)
        assert f"{setting} is a placeholder" in message
        assert setting.upper() in message and "wins over the environment" in message
        if "secret" in setting:
            assert value not in message

    def test_placeholder_in_the_environment_is_refused(
        self, quick_start_app: Celery, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("SUPRSEND_WORKSPACE_KEY", "WSKEY_...")
        with pytest.raises(ConfigurationError, match="suprsend_workspace_key is a placeholder"):
            track_event.delay("user-42", "order_placed")


RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


class TestRabbitMQ:
    """A non-Redis broker without suprsend_redis_url (issue 11 item 3), on the real RabbitMQ."""

    def test_no_flush_entry_without_a_buffer(self) -> None:
        app = Celery("rabbit_app", broker=RABBITMQ, set_as_current=False)
        app.conf.update(
            suprsend_workspace_key=WORKSPACE_KEY, suprsend_workspace_secret=WORKSPACE_SECRET
        )
        assert register_beat_entry(app) is None
        assert not any(e.get("task") == FLUSH_TASK for e in (app.conf.beat_schedule or {}).values())
        app.close()

    @pytest.mark.slow
    def test_worker_with_beat_says_once_that_buffering_is_off(
        self, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The worker logs why the buffered path is off, once; beat never runs flush_buffer
        (it used to log an ERROR with a traceback every interval); the direct path works."""
        queue = f"suprsend-rabbit-{uuid.uuid4().hex[:8]}"
        module = f"rabbit_proj_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{module}.py").write_text(
            "from celery import Celery\n"
            "from kombu import Queue\n"
            f"app = Celery('rabbit_proj', broker={RABBITMQ!r})\n"
            "app.conf.update(\n"
            "    imports=('suprsend_celery.tasks',),\n"
            f"    task_default_queue={queue!r},\n"
            f"    task_queues=[Queue({queue!r}, auto_delete=True)],\n"
            "    suprsend_flush_interval=0.5,\n"
            "    beat_schedule={'probe': {'task': 'probe', 'schedule': 0.5}},\n"
            ")\n"
            "@app.task(name='probe')\n"
            "def probe():\n"
            "    return None\n"
        )
        env = subprocess_env(
            SUPRSEND_BASE_URL=sandbox.url, PYTHONPATH=f"{tmp_path}{os.pathsep}{TESTS.parent}"
        )
        log = tmp_path / "worker.log"
        args = ["-m", "celery", "-A", module, "worker", "-B", "--loglevel=INFO"]
        args += ["--concurrency=1", "--pool=solo", f"--schedule={tmp_path / 'beat'}"]
        proc = spawn(args, env, log)
        try:
            wait_for(lambda: "ready." in log.read_text(), timeout=60, message="worker ready")
            monkeypatch.syspath_prepend(str(tmp_path))
            for name in ("SUPRSEND_WORKSPACE_KEY", "SUPRSEND_WORKSPACE_SECRET"):
                monkeypatch.setenv(name, env[name])
            monkeypatch.setenv("SUPRSEND_BASE_URL", sandbox.url)
            producer = importlib.import_module(module).app
            producer.set_current()
            try:
                track_event.delay("user-1", "order_placed", {"n": 1})
            finally:
                reset_settings(producer)
                producer.close()
            wait_for(lambda: len(sandbox.events()) == 1, timeout=30, message="delivery")
            wait_for(
                lambda: log.read_text().count("Sending due task probe") >= 5,
                timeout=30,
                message="five beat intervals",
            )
        finally:
            kill_group(proc)
            sys.modules.pop(module, None)
        text = log.read_text()
        assert text.count("the buffered path is off") == 1, text[-3000:]
        assert "amqp://guest:***@127.0.0.1:5672//" in text
        assert "Sending due task suprsend-celery-flush-buffer" not in text, text[-3000:]
        assert f"Task {FLUSH_TASK}[" not in text, text[-3000:]
        assert "Traceback" not in text and "ERROR" not in text, text[-3000:]
