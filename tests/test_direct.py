"""The direct path: ``track_event`` with a real Redis broker, a real worker and the sandbox.

Every test asserts what SuprSend (the sandbox) processed and what is left in Redis;
waits poll a condition with a deadline.
"""

from __future__ import annotations

import ast
import http.client
import json
import logging
import math
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult
from conftest import (
    REDIS_KILLED,
    WORKSPACE_KEY,
    WORKSPACE_SECRET,
    in_process_worker,
    wait_for,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suprsend_celery import (
    ConfigurationError,
    Event,
    InvalidEventError,
    PermanentDeliveryError,
    TransientDeliveryError,
    buffer_event,
    track_event,
)
from suprsend_celery.delivery.dead_letters import parse_dead_letter
from suprsend_celery.dev.redis_server import RedisServer
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.events.validation import BUILTIN_EVENT_NAMES
from suprsend_celery.pipeline.runtime import get_buffer, get_flusher
from suprsend_celery.tasks import PreparedEvent, prepare_track_event

QUEUE = "suprsend-tests"  # conftest's task_default_queue
RESULT_KEYS = {"status", "status_code", "message_id", "idempotency_key", "attempts"}


# -- helpers --------------------------------------------------------------------------


def finished(result: AsyncResult, timeout: float = 30.0) -> AsyncResult:
    """Wait until the task reached a final state (SUCCESS or FAILURE)."""
    wait_for(result.ready, timeout, interval=0.05, message=f"task {result.id} to finish")
    return result


def dead_letters(app: Celery) -> list[Any]:
    buffer = get_buffer(app)
    assert buffer is not None
    return [parse_dead_letter(raw) for raw in buffer.redis.lrange(buffer.keys.dead, 0, -1)]


class RecordingProxy:
    """A pass-through HTTP proxy in front of the sandbox that keeps every request body.

    The sandbox logs identifiers but never bodies; this shows the exact bytes sent on
    each attempt. Signatures stay valid because the path is forwarded unchanged.
    """

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.bodies: list[bytes] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                bodies.append(body)
                skip = {"host", "connection", "content-length"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                upstream = http.client.HTTPConnection(*target, timeout=30)
                try:
                    upstream.request("POST", self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() in ("content-type", "retry-after"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class TaskEvents:
    """Flower's view of the tasks: a real event receiver on the broker, in a thread."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            self._receiver = self.app.events.Receiver(conn, handlers={"*": self.events.append})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> TaskEvents:
        self._thread.start()
        probe = f"probe-{uuid.uuid4().hex}"
        with self.app.events.default_dispatcher() as dispatcher:

            def subscribed() -> bool:
                dispatcher.send("probe-event", probe=probe)
                return any(e.get("probe") == probe for e in list(self.events))

            wait_for(subscribed, 15, interval=0.2, message="the event receiver to subscribe")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(10)

    def of_type(self, kind: str, task_id: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in list(self.events)
            if e["type"] == kind and (task_id is None or e.get("uuid") == task_id)
        ]


# -- retries and results ---------------------------------------------------------------


class TestRetries:
    """Transient failures retry with the very same record; the result reports attempts."""

    @pytest.mark.slow
    def test_503_503_success_sends_identical_bytes(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """Two 503s then a 202: three requests, byte-identical, one processed event."""
        sandbox.set_faults({"rules": [{"status": 503, "count": 2}]})
        with RecordingProxy(sandbox.url) as proxy:
            app = app_factory(suprsend_base_url=proxy.url)
            with in_process_worker(app, close_results_after_tasks=True):
                result = track_event.delay("u-503", "order_placed", {"total": 12.5})
                value = result.get(timeout=30)

        assert set(value) == RESULT_KEYS
        assert value["status"] == "success"
        assert value["status_code"] == 202
        assert isinstance(value["message_id"], str)
        assert value["attempts"] == 3
        stats = sandbox.stats()
        assert stats["requests"] == 3
        assert stats["events_processed"] == 1
        assert [r.status for r in sandbox.requests()] == [503, 503, 202]

        assert len(proxy.bodies) == 3
        assert proxy.bodies[0] == proxy.bodies[1] == proxy.bodies[2]
        sent = json.loads(proxy.bodies[0])
        processed = sandbox.events()
        assert len(processed) == 1
        for field in ("$insert_id", "$time", "$idempotency_key"):
            assert processed[0][field] == sent[field]
        assert sent["$idempotency_key"] == value["idempotency_key"]
        keys = {k for r in sandbox.requests() for k in r.idempotency_keys}
        assert keys == {value["idempotency_key"]}

    @pytest.mark.slow
    def test_retry_after_is_a_floor(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """A 429 with ``Retry-After: 2`` delays the next attempt by at least 2 seconds."""
        sandbox.set_faults({"rules": [{"status": 429, "retry_after": "2", "count": 1}]})
        app = app_factory()
        with in_process_worker(app, close_results_after_tasks=True):
            value = track_event.delay("u-429", "order_placed").get(timeout=30)
        assert value["attempts"] == 2
        first, second = sandbox.requests()
        assert (first.status, second.status) == (429, 202)
        assert second.received_at - first.received_at >= 2.0
        assert sandbox.stats()["events_processed"] == 1

    @pytest.mark.slow
    def test_countdown_stays_below_visibility_timeout(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """``Retry-After: 3600`` is capped under the broker's visibility timeout, and the
        RETRY event says why (the status code) and when (the countdown)."""
        sandbox.set_faults({"rules": [{"status": 429, "retry_after": "3600", "count": 1}]})
        app = app_factory(
            broker_transport_options={"visibility_timeout": 6},
            worker_send_task_events=True,
            task_send_sent_event=True,
        )
        with TaskEvents(app) as events, in_process_worker(app, close_results_after_tasks=True):
            result = track_event.delay("u-cap", "order_placed")
            wait_for(lambda: events.of_type("task-retried", result.id), 30, message="a RETRY event")
            value = result.get(timeout=30)
        retried = events.of_type("task-retried", result.id)[0]
        assert "429" in retried["exception"]
        match = re.search(r" in (\d+(?:\.\d+)?)s", retried["exception"])
        assert match, retried["exception"]
        countdown = float(match.group(1))
        assert 0 < countdown <= 6 * 0.8
        assert value["attempts"] == 2
        first, second = sandbox.requests()[:2]
        # The floor still holds, up to the cap.
        assert second.received_at - first.received_at >= countdown - 0.2
        assert sandbox.stats()["events_processed"] == 1

    def test_delay_with_an_event_instance(
        self, celery_app: Celery, worker: Any, sandbox: Sandbox
    ) -> None:
        """``track_event.delay(Event(...))`` sends the event with its own key and scope."""
        event = Event(
            "u-event",
            "order_placed",
            {"total": 3},
            idempotency_key="  order-42  ",
            tenant_id="acme",
        )
        value = track_event.delay(event).get(timeout=30)
        assert value["idempotency_key"] == "order-42"
        (processed,) = sandbox.events()
        assert processed["$idempotency_key"] == "order-42"
        assert processed["tenant_id"] == "acme"
        assert processed["distinct_id"] == "u-event"
        assert processed["properties"]["total"] == 3

    def test_apply_async_with_countdown(
        self, celery_app: Celery, worker: Any, sandbox: Sandbox
    ) -> None:
        """``apply_async(args, kwargs, countdown=1)`` validates, then runs a second later."""
        published = time.time()
        result = track_event.apply_async(
            ("u-later", "order_placed"), {"properties": {"n": 1}}, countdown=1
        )
        value = result.get(timeout=30)
        assert value["attempts"] == 1
        (request,) = sandbox.requests()
        assert request.received_at - published >= 0.9
        assert sandbox.events()[0]["$idempotency_key"] == value["idempotency_key"]


# -- a call prepared now, published later ---------------------------------------------


class TestPrepare:
    """``prepare_track_event``: the caller's half of ``delay()``, for publishing later."""

    def test_prepared_now_published_later(
        self, celery_app: Celery, worker: Any, sandbox: Sandbox, redis_client: redis.Redis
    ) -> None:
        """Preparing publishes nothing and shows no properties; ``publish_prepared`` then
        delivers the record fixed at prepare time, under its key."""
        prepared = prepare_track_event(
            "u-prep",
            "order_placed",
            {"note": "PROP_prep_5d1"},
            idempotency_key="k-prep",
            app=celery_app,
        )
        assert isinstance(prepared, PreparedEvent)
        assert prepared.idempotency_key == "k-prep"
        assert "PROP_prep_5d1" not in repr(prepared) + repr(prepared.options)
        assert (_queue_length(redis_client), sandbox.stats()["requests"]) == (0, 0)
        result = track_event.publish_prepared(prepared)
        assert result.idempotency_key == "k-prep"
        assert result.get(timeout=30)["idempotency_key"] == "k-prep"
        (processed,) = sandbox.events()
        record = json.loads(prepared.record)
        assert processed["$insert_id"] == record["$insert_id"]
        assert processed["properties"]["note"] == "PROP_prep_5d1"

    def test_an_event_instance_and_bad_input(
        self, celery_app: Celery, redis_client: redis.Redis
    ) -> None:
        """An ``Event`` is prepared as ``delay(event)`` would; bad input raises
        ``InvalidEventError`` naming the field, like ``delay()``."""
        prepared = prepare_track_event(
            Event("u1", "order_placed", idempotency_key="k-ev"), app=celery_app
        )
        assert prepared.idempotency_key == "k-ev"
        with pytest.raises(InvalidEventError, match="event_name"):
            prepare_track_event("u1", "$reserved", app=celery_app)
        with pytest.raises(InvalidEventError, match="event_name"):
            prepare_track_event("u1", app=celery_app)
        assert _queue_length(redis_client) == 0


# -- permanent failures ----------------------------------------------------------------


class TestFailures:
    """Nothing is dropped silently: permanent failures and exhausted retries dead-letter."""

    def test_400_dead_letters_without_retry(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """A 400 fails at once: one request, a dead letter with the error, task FAILURE."""
        sandbox.set_faults({"rules": [{"status": 400, "count": 1}]})
        app = app_factory()
        with in_process_worker(app, close_results_after_tasks=True):
            result = finished(track_event.delay("u-400", "order_placed", idempotency_key="k-400"))
        assert result.state == "FAILURE"
        assert isinstance(result.result, PermanentDeliveryError)
        assert "k-400" in str(result.result)
        assert sandbox.stats()["requests"] == 1
        assert sandbox.stats()["events_processed"] == 0
        (letter,) = dead_letters(app)
        assert letter.idempotency_key == "k-400"
        assert letter.source == "direct"
        assert letter.status_code == 400
        assert "400" in letter.error
        assert letter.attempts == 1

    @pytest.mark.slow
    def test_exhausted_retries_dead_letter(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """Persistent 503 with ``suprsend_max_retries=2``: 3 attempts, then dead letter and
        FAILURE naming the key (never MaxRetriesExceededError with the raw arguments)."""
        sandbox.set_faults({"rules": [{"status": 503}]})
        app = app_factory(suprsend_max_retries=2)
        marker = "PROP_exhausted_8c1e"
        with in_process_worker(app, close_results_after_tasks=True):
            result = finished(
                track_event.delay(
                    "u-gone", "order_placed", {"note": marker}, idempotency_key="k-gone"
                )
            )
        assert result.state == "FAILURE"
        assert isinstance(result.result, TransientDeliveryError)
        assert type(result.result).__name__ != "MaxRetriesExceededError"
        assert "k-gone" in str(result.result)
        assert "3 attempts" in str(result.result)
        assert marker not in str(result.result)
        assert marker not in (result.traceback or "")
        assert sandbox.stats()["requests"] == 3
        (letter,) = dead_letters(app)
        assert (letter.idempotency_key, letter.source, letter.attempts) == ("k-gone", "direct", 3)
        assert letter.status_code == 503

    def test_401_keeps_the_event_for_later(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """Refused credentials fail with ConfigurationError; the event is moved into the
        buffer, not dead-lettered, and is sent once the credentials are fixed."""
        app = app_factory(suprsend_workspace_secret="WSSECRET_wrong")
        with in_process_worker(app, close_results_after_tasks=True):
            result = finished(track_event.delay("u-401", "order_placed", idempotency_key="k-401"))
        assert result.state == "FAILURE"
        assert isinstance(result.result, ConfigurationError)
        assert "k-401" in str(result.result)
        assert sandbox.stats()["auth_failures"] == 1
        assert dead_letters(app) == []
        buffer = get_buffer(app)
        assert buffer is not None
        pending = buffer.redis.lrange(buffer.keys.pending, 0, -1)
        assert [json.loads(p)["$idempotency_key"] for p in pending] == ["k-401"]

        fixed = app_factory()
        report = get_flusher(fixed).run(10)
        assert report.sent == 1
        assert [e["$idempotency_key"] for e in sandbox.events()] == ["k-401"]

    def test_401_with_a_full_buffer_dead_letters(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """Refused credentials and no room left in the buffer: the event is
        dead-lettered rather than pushed past the bound, and the error says so."""
        app = app_factory(suprsend_workspace_secret="WSSECRET_wrong", suprsend_buffer_max_length=1)
        held = buffer_event("u-held", "order_placed", app=app)
        with in_process_worker(app, close_results_after_tasks=True):
            result = finished(track_event.delay("u-full", "order_placed", idempotency_key="k-full"))
        assert result.state == "FAILURE"
        assert isinstance(result.result, ConfigurationError)
        assert "buffer is full" in str(result.result)
        assert [d.idempotency_key for d in dead_letters(app)] == ["k-full"]
        buffer = get_buffer(app)
        assert buffer is not None
        pending = buffer.redis.lrange(buffer.keys.pending, 0, -1)
        assert [json.loads(p)["$idempotency_key"] for p in pending] == [held]

    @pytest.mark.slow
    @pytest.mark.parametrize("status", [400, 401])
    @REDIS_KILLED
    def test_buffer_redis_down_keeps_the_event_in_the_broker(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox, status: int
    ) -> None:
        """When the dead-letter (400) or buffer (401) Redis is down, the task retries
        instead of losing the event, and files it once Redis is back."""
        with RedisServer(appendonly=True, appendfsync="always") as buffer_redis:
            overrides: dict[str, Any] = {
                "suprsend_redis_url": buffer_redis.url,
                "suprsend_retry_backoff_max": 1,
            }
            if status == 400:
                sandbox.set_faults({"rules": [{"status": 400}]})
            else:
                overrides["suprsend_workspace_secret"] = "WSSECRET_wrong"
            app = app_factory(**overrides)
            # Accepted (journaled) first: with the buffer's Redis down, delay() refuses.
            result = track_event.delay("u-down", "order_placed", idempotency_key="k-down")
            buffer_redis.kill()
            with in_process_worker(app, close_results_after_tasks=True):
                wait_for(lambda: result.state == "RETRY", 30, 0.05, "a RETRY while Redis is down")
                reason = str(result.info)
                buffer_redis.restart()
                finished(result)
            assert "failed" in reason
            assert "retry in" in reason
            assert "k-down" in reason
            assert result.state == "FAILURE"
            assert sandbox.stats()["requests"] >= 2
            buffer = get_buffer(app)
            assert buffer is not None
            pending = buffer.redis.lrange(buffer.keys.pending, 0, -1)
            if status == 400:
                assert isinstance(result.result, PermanentDeliveryError)
                assert [d.idempotency_key for d in dead_letters(app)] == ["k-down"]
                assert pending == []
            else:
                assert isinstance(result.result, ConfigurationError)
                assert dead_letters(app) == []
                assert [json.loads(p)["$idempotency_key"] for p in pending] == ["k-down"]
            buffer.redis.close()


# -- validation at the call site -------------------------------------------------------


def _huge() -> dict[str, Any]:
    return {"blob": "x" * 110_000}


class _NotJson:
    pass


BAD_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("distinct_id None", (None, "order_placed"), {}),
    ("distinct_id bool", (True, "order_placed"), {}),
    ("distinct_id float", (1.5, "order_placed"), {}),
    ("distinct_id empty", ("", "order_placed"), {}),
    ("distinct_id blank", ("   ", "order_placed"), {}),
    ("distinct_id list", (["u1"], "order_placed"), {}),
    ("event_name short", ("u1", " a "), {}),
    ("event_name not str", ("u1", 42), {}),
    ("event_name $", ("u1", "$custom"), {}),
    ("event_name ss_", ("u1", "ss_thing"), {}),
    ("event_name SS_", ("u1", "SS_thing"), {}),
    ("properties list", ("u1", "order_placed", [1, 2]), {}),
    ("properties int key", ("u1", "order_placed", {1: "a"}), {}),
    ("properties $ key", ("u1", "order_placed", {"$x": 1}), {}),
    ("properties ss_ key", ("u1", "order_placed", {"Ss_x": 1}), {}),
    ("properties object", ("u1", "order_placed", {"v": _NotJson()}), {}),
    ("properties set", ("u1", "order_placed", {"v": {1, 2}}), {}),
    ("properties NaN", ("u1", "order_placed", {"v": math.nan}), {}),
    ("properties Infinity", ("u1", "order_placed", {"v": [math.inf]}), {}),
    ("idempotency_key empty", ("u1", "order_placed"), {"idempotency_key": ""}),
    ("idempotency_key blank", ("u1", "order_placed"), {"idempotency_key": "  "}),
    ("idempotency_key long", ("u1", "order_placed"), {"idempotency_key": "k" * 256}),
    ("idempotency_key int", ("u1", "order_placed"), {"idempotency_key": 7}),
    ("tenant_id long", ("u1", "order_placed"), {"tenant_id": "t" * 65}),
    ("tenant_id int", ("u1", "order_placed"), {"tenant_id": 5}),
    ("brand_id long", ("u1", "order_placed"), {"brand_id": "b" * 65}),
    ("too big", ("u1", "order_placed", _huge()), {}),
    ("unknown argument", ("u1", "order_placed"), {"colour": "red"}),
    ("too many positional", ("u1", "order_placed", {}, "extra"), {}),
    ("missing event_name", ("u1",), {}),
    ("argument twice", ("u1", "order_placed"), {"distinct_id": "u2"}),
]


def _queue_length(client: redis.Redis) -> int:
    return int(client.llen(QUEUE))


class TestValidation:
    """Bad input raises InvalidEventError in the caller and publishes nothing."""

    @pytest.mark.parametrize(
        ("args", "kwargs"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
    )
    def test_bad_input_never_publishes(
        self,
        celery_app: Celery,
        redis_client: redis.Redis,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """``.delay()`` and ``.apply_async()`` raise; the broker queue length is unchanged."""
        track_event.delay("u-ok", "order_placed")  # the queue exists and holds one message
        before = _queue_length(redis_client)
        assert before == 1
        with pytest.raises(InvalidEventError) as delayed:
            track_event.delay(*args, **kwargs)
        with pytest.raises(InvalidEventError):
            track_event.apply_async(args, kwargs, countdown=1)
        assert str(delayed.value)
        assert _queue_length(redis_client) == before

    def test_event_changed_after_construction(
        self, celery_app: Celery, redis_client: redis.Redis
    ) -> None:
        """Properties mutated after ``Event()`` are checked again when published."""
        event = Event("u1", "order_placed", {"ok": 1})
        event.properties["$reserved"] = 1
        with pytest.raises(InvalidEventError, match=r"\$reserved"):
            track_event.delay(event)
        assert _queue_length(redis_client) == 0

    @pytest.mark.parametrize("url", ["/etc/passwd", "file:///etc/passwd", "ftp://x.example/f"])
    def test_bad_attachment(self, celery_app: Celery, redis_client: redis.Redis, url: str) -> None:
        """A local path or a non-http(s) URL is refused before anything is published."""
        event = Event("u1", "order_placed")
        with pytest.raises(InvalidEventError):
            event.add_attachment(url)
        track_event.delay(event)  # the event itself is still fine, without the attachment
        assert _queue_length(redis_client) == 1

    def test_error_names_field_and_value(self, celery_app: Celery) -> None:
        """The message says which field was wrong and what it got."""
        with pytest.raises(InvalidEventError, match="event_name") as info:
            track_event.delay("u1", "$custom")
        assert "'$custom'" in str(info.value)
        assert info.value.field == "event_name"


def _bad_event_name() -> st.SearchStrategy[Any]:
    reserved = st.from_regex(r"\A(\$|[sS][sS]_)[a-z_]{0,8}\Z").filter(
        lambda name: name not in BUILTIN_EVENT_NAMES
    )
    return st.one_of(st.text(max_size=1), reserved, st.integers(), st.none())


@st.composite
def bad_calls(draw: st.DrawFn) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Valid calls with exactly one field made invalid."""
    distinct_id: Any = "u1"
    name: Any = "order_placed"
    properties: Any = {"n": 1}
    extra: dict[str, Any] = {}
    field = draw(
        st.sampled_from(["distinct_id", "event_name", "properties", "key", "tenant", "brand"])
    )
    if field == "distinct_id":
        distinct_id = draw(
            st.one_of(
                st.none(),
                st.booleans(),
                st.floats(),
                st.text(alphabet=" \t\n", max_size=3),
                st.lists(st.integers(), max_size=2),
            )
        )
    elif field == "event_name":
        name = draw(_bad_event_name())
    elif field == "properties":
        properties = draw(
            st.one_of(
                st.lists(st.integers(), max_size=2),
                st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),
                st.from_regex(r"\A(\$|ss_)[a-z]{1,5}\Z").map(lambda k: {k: 1}),
                st.sampled_from([math.nan, math.inf, -math.inf]).map(lambda v: {"v": v}),
                st.just({"v": _NotJson()}),
            )
        )
    elif field == "key":
        extra["idempotency_key"] = draw(
            st.one_of(
                st.text(alphabet=" \t", max_size=3),
                st.text(alphabet="ab", min_size=256, max_size=300),
                st.integers(),
            )
        )
    else:
        extra["tenant_id" if field == "tenant" else "brand_id"] = draw(
            st.one_of(st.text(alphabet="xy", min_size=65, max_size=80), st.integers())
        )
    return (distinct_id, name, properties), extra


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(call=bad_calls())
def test_random_bad_input_never_publishes(
    celery_app: Celery, redis_client: redis.Redis, call: tuple[tuple[Any, ...], dict[str, Any]]
) -> None:
    """Whatever field is wrong, the call raises and the broker queue stays empty."""
    args, kwargs = call
    with pytest.raises(InvalidEventError):
        track_event.delay(*args, **kwargs)
    assert _queue_length(redis_client) == 0


# -- secrets and properties stay out of sight -----------------------------------------

SECRET_MARK = "WSSECRET_Zq9marker_secret_4471"
PROP_MARK = "PROPVAL_Zq9marker_value_9023"
PROP_KEY_MARK = "propkey_zq9marker_5501"


@pytest.fixture(scope="module")
def secret_sandbox() -> Iterator[Sandbox]:
    """A sandbox whose workspace secret is a marker we grep for."""
    with Sandbox(workspace_key=WORKSPACE_KEY, workspace_secret=SECRET_MARK) as sb:
        yield sb


def _scan_for_markers(text: str) -> list[str]:
    return [m for m in (SECRET_MARK, PROP_MARK, PROP_KEY_MARK) if m in text]


@pytest.mark.slow
def test_secrets_and_properties_stay_hidden(
    app_factory: Callable[..., Celery],
    secret_sandbox: Sandbox,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Logs, task events, stored results and exceptions show the event name, distinct_id
    and idempotency key, never the secret or property keys and values."""
    secret_sandbox.reset()
    app = app_factory(
        suprsend_workspace_secret=SECRET_MARK,
        suprsend_base_url=secret_sandbox.url,
        suprsend_max_retries=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        result_extended=True,
    )
    properties = {"note": PROP_MARK, PROP_KEY_MARK: 1, "nested": {"deep": [PROP_MARK]}}
    with TaskEvents(app) as events, in_process_worker(app, close_results_after_tasks=True):
        for name in ("", "celery", "celery.app.trace", "celery.worker", "suprsend_celery"):
            caplog.set_level(logging.DEBUG, logger=name)
        # A retried then successful event...
        secret_sandbox.set_faults({"rules": [{"status": 503, "count": 1}]})
        ok = track_event.delay("u-ok", "order_placed", properties, idempotency_key="k-ok")
        assert ok.get(timeout=30)["attempts"] == 2
        # ...and one that exhausts its retries (the MaxRetriesExceededError path).
        secret_sandbox.set_faults({"rules": [{"status": 503}]})
        bad = finished(
            track_event.apply_async(
                ("u-bad", "order_placed", properties), {"idempotency_key": "k-bad"}
            )
        )
        wait_for(lambda: events.of_type("task-failed", bad.id), 15, message="the task-failed event")
    assert bad.state == "FAILURE"
    assert secret_sandbox.stats()["events_processed"] == 1

    # Task events (what Flower shows): only name, distinct_id and key in the reprs.
    shown = {"task-sent", "task-received"}
    for kind in (*shown, "task-retried", "task-succeeded", "task-failed"):
        assert events.of_type(kind), f"no {kind} event captured"
    for event in events.events:
        assert not _scan_for_markers(json.dumps(event, default=repr)), event
    for event in events.events:
        if event["type"] in shown:
            assert ast.literal_eval(event["args"]) == ()
            meta = ast.literal_eval(event["kwargs"])
            assert set(meta) == {"event", "distinct_id", "idempotency_key"}
            assert meta["event"] == "order_placed"
            assert meta["idempotency_key"] in ("k-ok", "k-bad")
    retried = events.of_type("task-retried", ok.id)[0]
    assert "503" in retried["exception"]
    assert re.search(r" in \d+(\.\d+)?s", retried["exception"])
    failed = events.of_type("task-failed", bad.id)[0]
    assert "k-bad" in failed["exception"]
    assert "MaxRetriesExceededError" not in failed["exception"]

    # Logs, formatted and raw (arguments and extras).
    loggers = {record.name for record in caplog.records}
    # The worker's own logs were captured: ours (retry, give up: a run's attempt) and
    # Celery's task trace.
    assert {"suprsend_celery.tasks.attempt", "celery.app.trace"} <= loggers, loggers
    assert any("k-bad" in record.getMessage() for record in caplog.records)
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + repr(vars(record))
        assert not _scan_for_markers(text), record.getMessage()

    # Stored results, with result_extended: args/kwargs are the redacted meta.
    meta_keys = [k for k in redis_client.scan_iter(match="celery-task-meta-*")]
    assert len(meta_keys) == 2
    for key in meta_keys:
        raw = redis_client.get(key)
        assert raw is not None
        stored = json.loads(raw)
        assert not _scan_for_markers(raw.decode()), stored
        assert stored["args"] in ([], None)
        assert set(stored["kwargs"]) == {"event", "distinct_id", "idempotency_key"}

    # Exceptions, as the caller sees them.
    for text in (str(bad.result), repr(bad.result), bad.traceback or ""):
        assert not _scan_for_markers(text)
    assert "k-bad" in str(bad.result)


# -- Django: publish on commit ---------------------------------------------------------

DJANGO_SCRIPT = r"""
import json, os, sys
import django
from django.conf import settings

settings.configure(
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    INSTALLED_APPS=[],
    USE_TZ=True,
)
django.setup()

import redis
from celery import Celery
from django.db import transaction

from suprsend_celery import InvalidEventError, track_event
from suprsend_celery.contrib.django import track_event_on_commit

url, queue = os.environ["TEST_REDIS_URL"], os.environ["TEST_QUEUE"]
app = Celery("django_on_commit")
app.conf.update(
    broker_url=url,
    result_backend=url,
    task_default_queue=queue,
    suprsend_workspace_key=os.environ["TEST_WORKSPACE_KEY"],
    suprsend_workspace_secret=os.environ["TEST_WORKSPACE_SECRET"],
    suprsend_base_url=os.environ["TEST_BASE_URL"],
    suprsend_flush_interval=0,
)
app.set_current()
app.set_default()
client = redis.Redis.from_url(url)
out = {}

with transaction.atomic():
    out["committed"] = track_event.delay_on_commit("u1", "order_placed", {"n": 1})
    out["inside"] = client.llen(queue)
out["after_commit"] = client.llen(queue)

try:
    with transaction.atomic():
        out["rolled_back"] = track_event.delay_on_commit("u1", "order_placed", {"n": 2})
        raise RuntimeError("roll back")
except RuntimeError:
    pass
out["after_rollback"] = client.llen(queue)

try:
    with transaction.atomic():
        track_event.delay_on_commit("u1", "$reserved")
except InvalidEventError as exc:
    out["bad"] = str(exc)
out["after_bad"] = client.llen(queue)

with transaction.atomic():
    out["helper"] = track_event_on_commit("u2", "order_placed", idempotency_key="helper-1")
out["after_helper"] = client.llen(queue)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_delay_on_commit_with_django(
    app_factory: Callable[..., Celery], redis_url: str, sandbox: Sandbox
) -> None:
    """Committed transactions publish, rolled-back ones do not, bad input raises at once.

    Django is configured in a subprocess so its settings never leak into other tests.
    """
    env = {
        "PATH": "/usr/bin:/bin",
        "TEST_REDIS_URL": redis_url,
        "TEST_QUEUE": QUEUE,
        "TEST_WORKSPACE_KEY": WORKSPACE_KEY,
        "TEST_WORKSPACE_SECRET": WORKSPACE_SECRET,
        "TEST_BASE_URL": sandbox.url,
    }
    done = subprocess.run(
        [sys.executable, "-c", DJANGO_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["inside"] == 0
    assert out["after_commit"] == 1
    assert out["after_rollback"] == 1
    assert "event_name" in out["bad"]
    assert out["after_bad"] == 1
    assert out["helper"] == "helper-1"
    assert out["after_helper"] == 2

    # A worker sends exactly the committed events.
    app = app_factory()
    with in_process_worker(app, close_results_after_tasks=True):
        sandbox.wait_for(2, timeout=30)
    keys = sorted(e["$idempotency_key"] for e in sandbox.events())
    assert keys == sorted([out["committed"], "helper-1"])
    assert out["rolled_back"] not in keys
