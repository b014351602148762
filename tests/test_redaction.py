"""Nothing Celery shows of a ``track_event`` task holds a property value, a secret or a
password: ``inspect active/scheduled/reserved/conf``, task events, stored results; and
a task published by name gets the task id as its key (issue 10 items 3 and 6, issue 11
item 9). A real worker, a real Redis (with a password where it matters), the sandbox.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from conftest import WORKSPACE_SECRET, current_app, in_process_worker, wait_for

from suprsend_celery import track_event
from suprsend_celery.dev.redis_server import RedisServer
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.tasks.redaction import RedactedRequest, redacted_call

MARKER = "prop-marker-7c2e-never-shown"
PASSWORD = "pw-marker-93ab-never-shown"


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[RedisServer]:
    """A Redis that wants a password (the marker), for the settings' URLs."""
    with RedisServer(appendonly=False, extra_args=["--requirepass", PASSWORD]) as server:
        yield server


@pytest.fixture
def app(locked_redis: RedisServer, sandbox: Sandbox) -> Iterator[Celery]:
    url = f"redis://:{PASSWORD}@127.0.0.1:{locked_redis.port}/0"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    with current_app(url, sandbox.url, result_backend=url, result_extended=True) as app:
        yield app


def _text(value: Any) -> str:
    return json.dumps(value, default=repr)


def _assert_hidden(text: str) -> None:
    assert MARKER not in text
    assert PASSWORD not in text
    assert WORKSPACE_SECRET not in text


class TestInspect:
    """``celery inspect`` (and Flower's worker page, which asks the same) shows no record."""

    def test_active_scheduled_reserved_and_conf(
        self, app: Celery, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A send held in flight, one task waiting for its ETA and one queued behind: each
        inspect reply names the event and key, never the marker; conf masks the password."""
        sandbox.set_faults({"rules": [{"delay": 4, "count": 1}]})
        with in_process_worker(app, concurrency=1):
            running = track_event.delay("u1", "order_placed", {"note": MARKER})
            later = track_event.apply_async(("u2", "order_placed", {"note": MARKER}), countdown=60)
            track_event.delay("u3", "order_placed", {"note": MARKER})
            inspect = app.control.inspect(timeout=3)
            wait_for(lambda: sandbox.faults()["rules"][0]["applied"] >= 1, 20)
            replies: dict[str, Any] = {}
            for name in ("active", "scheduled", "reserved", "conf", "stats"):
                replies[name] = getattr(inspect, name)()
                assert replies[name], name
            everything = _text(replies)
            _assert_hidden(everything)
            assert running.idempotency_key in _text(replies["active"])
            assert later.idempotency_key in _text(replies["scheduled"])
            (conf,) = replies["conf"].values()
            assert conf["suprsend_redis_url"].startswith("redis://:***@127.0.0.1:")
            app.control.revoke(later.id)
        _assert_hidden(caplog.text)


class TestByName:
    """``app.send_task("suprsend_celery.track_event", ...)``: key = task id, nothing shown."""

    def test_key_is_the_task_id_and_result_names_it(self, app: Celery, sandbox: Sandbox) -> None:
        """A by-name call without a key is sent with the task id as its key; the result,
        the stored request and the AsyncResult all name it, never the properties."""
        with in_process_worker(app):
            result = app.send_task(
                "suprsend_celery.track_event",
                args=["u-name", "order_placed"],
                kwargs={"properties": {"note": MARKER}},
                argsrepr="()",
                kwargsrepr="{}",
            )
            value = result.get(timeout=30)
        assert value["idempotency_key"] == result.id
        (event,) = sandbox.events()
        assert event["$idempotency_key"] == result.id
        assert event["properties"]["note"] == MARKER
        stored = redis.Redis.from_url(app.conf.broker_url).get(f"celery-task-meta-{result.id}")
        assert stored is not None
        _assert_hidden(stored.decode())
        assert result.id in stored.decode()

    def test_delay_result_carries_the_key(self, app: Celery, sandbox: Sandbox) -> None:
        """``delay()`` returns the task id with the event's key beside it."""
        with in_process_worker(app):
            result = track_event.delay("u1", "order_placed", idempotency_key="k-find-me")
            assert result.idempotency_key == "k-find-me"
            assert result.get(timeout=30)["idempotency_key"] == "k-find-me"


class TestRedactedCall:
    """The pure part: what a message shows."""

    def test_prepared_record(self) -> None:
        record = json.dumps(
            {
                "event": "e1",
                "distinct_id": "u1",
                "properties": {"p": MARKER},
                "$idempotency_key": "k",
            }
        )
        shown = redacted_call((), {"record": record}, "tid")
        assert shown == {"event": "e1", "distinct_id": "u1", "idempotency_key": "k"}

    @pytest.mark.parametrize(
        ("args", "kwargs"),
        [
            (["u1", "e1", {"p": MARKER}], {}),
            ([], {"distinct_id": "u1", "event_name": "e1", "properties": {"p": MARKER}}),
            (["u1"], {"event_name": "e1", "properties": MARKER}),
        ],
    )
    def test_by_name_call(self, args: Any, kwargs: Any) -> None:
        shown = redacted_call(args, kwargs, "tid")
        assert shown == {"event": "e1", "distinct_id": "u1", "idempotency_key": "tid"}
        assert MARKER not in repr(shown)

    def test_request_class_is_ours(self) -> None:
        assert track_event.Request is RedactedRequest
