"""OpenTelemetry traces and structured log fields: one event followed from the view.

The traced tests use the OpenTelemetry SDK (a test dependency) with its in-memory
exporter, a real Redis, the sandbox and a real in-process worker. The SDK's provider is
process-wide and can be set only once, so one provider is set for the session and a
``spans`` fixture records what each test's code ends, nothing more. What happens when
OpenTelemetry is absent or not configured runs in subprocesses, where nothing was set.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from conftest import WORKSPACE_KEY, in_process_worker, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suprsend_celery import buffer_event, buffer_events, track_event
from suprsend_celery.buffer.redis_buffer import RedisBuffer
from suprsend_celery.delivery.dead_letters import parse_dead_letter
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.events.model import Event
from suprsend_celery.events.records import (
    StoredItem,
    env_field,
    join_item,
    parse_item,
    read_item,
    split_item,
    with_env,
)
from suprsend_celery.pipeline.runtime import get_buffer, get_flusher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
RECORD = b'{"$insert_id": "x", "$time": 1, "event": "e", "distinct_id": "d"}'


# -- the stored item format (no OpenTelemetry needed) ----------------------------------


class TestItemFormat:
    """The trace context rides in a prefix beside the record, like the attempt count."""

    def test_every_layout_reads_back(self) -> None:
        """Fresh, retried, traced and both: each is read back to its parts."""
        assert parse_item(RECORD) == StoredItem(0, RECORD, None)
        assert parse_item(b"3|" + RECORD) == StoredItem(3, RECORD, None)
        traced = TRACEPARENT + b"|" + RECORD
        assert parse_item(traced) == StoredItem(0, RECORD, TRACEPARENT)
        both = b"3|" + traced
        assert parse_item(both) == StoredItem(3, RECORD, TRACEPARENT)
        assert join_item(0, RECORD, TRACEPARENT) == traced
        assert join_item(3, RECORD, TRACEPARENT) == both
        # The older readers' view: attempts and record, the trace context stripped.
        assert read_item(both) == (3, RECORD)
        assert split_item(traced) == (0, RECORD)

    def test_items_of_the_previous_release_are_unchanged(self) -> None:
        """An untraced record is stored exactly as before: bare, or ``N|`` prefixed."""
        assert join_item(0, RECORD) == RECORD
        assert join_item(0, RECORD, None) == RECORD
        assert join_item(7, RECORD) == b"7|" + RECORD

    @pytest.mark.parametrize(
        "junk",
        [
            TRACEPARENT,  # no record
            TRACEPARENT + b"|",
            TRACEPARENT + b"|garbage",
            TRACEPARENT + b"|3|" + RECORD,  # the attempt count comes first
            b"00-XYZ|" + RECORD,
            TRACEPARENT.upper() + b"|" + RECORD,
            TRACEPARENT[:-1] + b"|" + RECORD,
            b"3|" + TRACEPARENT + b"|" + TRACEPARENT + b"|" + RECORD,
            b"3|4|" + RECORD,
        ],
    )
    def test_lookalikes_stay_unreadable(self, junk: bytes) -> None:
        """Anything else is not ours, and is dead-lettered as before (test_poison)."""
        assert parse_item(junk) is None

    @given(
        attempts=st.integers(0, 10**9 - 1),
        traced=st.booleans(),
        body=st.binary(max_size=50),
    )
    def test_join_then_parse(self, attempts: int, traced: bool, body: bytes) -> None:
        record = b"{" + body
        traceparent = TRACEPARENT if traced else None
        assert parse_item(join_item(attempts, record, traceparent)) == (
            attempts,
            record,
            traceparent,
        )


# -- OpenTelemetry, configured ---------------------------------------------------------


class _Recorder:
    """Where the session's span processor sends spans: a test's exporter, or nowhere."""

    exporter: Any = None


@pytest.fixture(scope="session")
def tracer() -> Any:
    """The session's tracer (the SDK's global provider, set once)."""
    pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Switch(SpanExporter):  # type: ignore[misc]
        def export(self, spans: Any) -> SpanExportResult:
            exporter = _Recorder.exporter
            return exporter.export(spans) if exporter else SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Switch()))
    trace.set_tracer_provider(provider)
    return trace.get_tracer("tests.view")


@pytest.fixture
def spans(tracer: Any) -> Iterator[Any]:
    """The in-memory exporter of the spans this test ends."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    _Recorder.exporter = exporter
    try:
        yield exporter
    finally:
        _Recorder.exporter = None


def named(exporter: Any, name: str) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def make_due(buffer: RedisBuffer) -> list[bytes]:
    """Make every scheduled retry due now; returns the retry set's items."""
    items: list[bytes] = buffer.redis.zrange(buffer.keys.retry, 0, -1)
    for item in items:
        buffer.redis.zadd(buffer.keys.retry, {item: 0})
    return items


def ids(context: Any) -> tuple[int, int]:
    return context.trace_id, context.span_id


def linked(span: Any) -> list[tuple[int, int]]:
    """The (trace id, span id) each of ``span``'s links points to."""
    return [ids(link.context) for link in span.links]


def view_traceparent(view: Any) -> bytes:
    context = view.get_span_context()
    return b"00-%032x-%016x-%02x" % (context.trace_id, context.span_id, context.trace_flags)


class TestBufferedPath:
    """A view's span → ``buffer_event`` → a flush span whose bulk request links to it."""

    def test_flush_links_to_the_view(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox, spans: Any, tracer: Any
    ) -> None:
        app = app_factory()
        untraced = buffer_event("u-0", "order_placed", {"n": 0}, app=app)
        with tracer.start_as_current_span("POST /orders") as view:
            keys = buffer_events([Event(f"u-{i}", "order_placed", {"n": i}) for i in (1, 2)])
        buffer = get_buffer(app)
        assert isinstance(buffer, RedisBuffer)
        stored = [parse_item(i) for i in buffer.redis.lrange(buffer.keys.pending, 0, -1)]
        assert [s.traceparent if s else None for s in stored] == [
            None,
            view_traceparent(view),
            view_traceparent(view),
        ]

        report = get_flusher(app).run(10)
        assert report.sent == 3
        assert {e["$idempotency_key"] for e in sandbox.events()} == {untraced, *keys}

        (run,) = named(spans, "suprsend.flush")
        (request,) = named(spans, "suprsend.send_bulk")
        assert request.parent.span_id == run.context.span_id
        assert request.context.trace_id == run.context.trace_id != view.get_span_context().trace_id
        # One link per trace the records were accepted in (two records, one view).
        assert linked(request) == [ids(view.get_span_context())]
        assert request.attributes["suprsend.records"] == 3
        assert request.attributes["suprsend.accepted"] == 3
        assert request.attributes["suprsend.attempt"] == 1
        assert request.attributes["http.response.status_code"] == 207
        assert run.attributes["suprsend.sent"] == 3
        assert run.attributes["suprsend.remaining"] == 0

    def test_retry_and_dead_letter_keep_the_context(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox, spans: Any, tracer: Any
    ) -> None:
        """A retried record keeps its trace context (``1|traceparent|{...}``) and its next
        request links to the view again; retries and dead letters are span events."""
        app = app_factory()
        buffer = get_buffer(app)
        assert isinstance(buffer, RedisBuffer)
        with tracer.start_as_current_span("POST /orders") as view:
            retried = buffer_event("u-1", "order_placed", {"n": 1}, idempotency_key="k-retry")
            dead = buffer_event("u-2", "order_placed", {"n": 2}, idempotency_key="k-dead")
        sandbox.set_faults(
            {
                "rules": [
                    {
                        "count": 1,
                        "record_errors": [
                            {"index": 0, "status": 500},
                            {"index": 1, "status": 400, "message": "bad"},
                        ],
                    }
                ]
            }
        )
        first = get_flusher(app).run(10)
        assert (first.retry_scheduled, first.dead_lettered) == (1, 1)
        (item,) = make_due(buffer)
        assert parse_item(item) == (1, split_item(item)[1], view_traceparent(view))
        (letter,) = [parse_dead_letter(x) for x in buffer.redis.lrange(buffer.keys.dead, 0, -1)]
        assert letter.idempotency_key == dead
        assert letter.record.startswith(b"{")  # dead letters hold the record alone

        second = get_flusher(app).run(10)
        assert second.sent == 1
        assert [e["$idempotency_key"] for e in sandbox.events()] == [retried]

        requests = named(spans, "suprsend.send_bulk")
        assert [r.attributes["suprsend.attempt"] for r in requests] == [1, 2]
        for request in requests:
            assert linked(request) == [ids(view.get_span_context())]
        events = {e.name: e.attributes for e in requests[0].events}
        assert events["retry"]["suprsend.idempotency_key"] == retried
        assert events["retry"]["http.response.status_code"] == 500
        assert events["dead_letter"]["suprsend.idempotency_key"] == dead
        assert events["dead_letter"]["http.response.status_code"] == 400
        assert requests[0].attributes["suprsend.retry_scheduled"] == 1
        assert requests[0].attributes["suprsend.dead_lettered"] == 1
        assert requests[0].attributes["suprsend.accepted"] == 0
        assert requests[1].attributes["suprsend.accepted"] == 1

    def test_the_wire_bytes_carry_no_trace(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox, spans: Any, tracer: Any
    ) -> None:
        """The bulk body is the stored record with ``env`` spliced in, byte for byte:
        the trace context stays in Redis."""
        from test_direct import RecordingProxy

        with RecordingProxy(sandbox.url) as proxy:
            app = app_factory(suprsend_base_url=proxy.url)
            with tracer.start_as_current_span("POST /orders") as view:
                buffer_event("u-1", "order_placed", {"note": "héllo"}, app=app)
            buffer = get_buffer(app)
            assert isinstance(buffer, RedisBuffer)
            (item,) = buffer.redis.lrange(buffer.keys.pending, 0, -1)
            assert get_flusher(app).run(10).sent == 1
        record = split_item(item)[1]
        assert proxy.bodies == [b"[" + with_env(record, env_field(WORKSPACE_KEY)) + b"]"]
        trace_id = b"%032x" % view.get_span_context().trace_id
        assert trace_id in item
        assert trace_id not in proxy.bodies[0]

    def test_an_untraced_flush_run_is_a_root_span(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox, spans: Any
    ) -> None:
        """Records accepted outside any span: the request span has no links."""
        app = app_factory()
        buffer_event("u-1", "order_placed", app=app)
        get_flusher(app).run(10)
        (request,) = named(spans, "suprsend.send_bulk")
        assert list(request.links) == []
        (run,) = named(spans, "suprsend.flush")
        assert run.parent is None


class TestDirectPath:
    """``track_event.delay`` in a span → the worker's send spans in that trace."""

    @pytest.mark.slow
    def test_send_span_in_the_callers_trace_across_a_retry(
        self,
        app_factory: Callable[..., Celery],
        sandbox: Sandbox,
        spans: Any,
        tracer: Any,
    ) -> None:
        from test_direct import RecordingProxy

        sandbox.set_faults({"rules": [{"status": 503, "count": 1}]})
        with RecordingProxy(sandbox.url) as proxy:
            app = app_factory(suprsend_base_url=proxy.url, suprsend_retry_backoff_max=1)
            with in_process_worker(app, close_results_after_tasks=True):
                with tracer.start_as_current_span("POST /orders") as view:
                    result = track_event.delay("u-1", "order_placed", {"n": 1})
                value = result.get(timeout=30)
        assert value["attempts"] == 2

        sends = sorted(named(spans, "suprsend.send_event"), key=lambda s: s.start_time)
        assert [s.attributes["suprsend.attempt"] for s in sends] == [1, 2]
        trace_id = view.get_span_context().trace_id
        assert all(s.context.trace_id == trace_id for s in sends)
        assert sends[0].parent.span_id == view.get_span_context().span_id
        assert sends[1].parent.span_id == sends[0].context.span_id  # published inside it
        first, second = (dict(s.attributes) for s in sends)
        assert first["suprsend.outcome"] == "retry"
        assert first["http.response.status_code"] == 503
        assert [e.name for e in sends[0].events] == ["retry"]
        assert second["suprsend.outcome"] == "sent"
        assert second["http.response.status_code"] == 202
        for attributes in (first, second):
            assert attributes["suprsend.idempotency_key"] == value["idempotency_key"]
            assert attributes["suprsend.event_name"] == "order_placed"
            assert attributes["celery.task_id"] == result.id
        # The trace context went in the message headers, not in the record.
        assert proxy.bodies[0] == proxy.bodies[1]
        assert b"%032x" % trace_id not in proxy.bodies[0]

    def test_dead_letter_is_an_event_and_an_error(
        self,
        app_factory: Callable[..., Celery],
        sandbox: Sandbox,
        spans: Any,
        tracer: Any,
    ) -> None:
        sandbox.set_faults({"rules": [{"status": 400, "count": 1}]})
        app = app_factory()
        with in_process_worker(app, close_results_after_tasks=True):
            with tracer.start_as_current_span("POST /orders") as view:
                result = track_event.delay("u-1", "order_placed", {"n": 1})
            wait_for(result.ready, 30, message="the task to fail")
        assert result.state == "FAILURE"
        (send,) = named(spans, "suprsend.send_event")
        assert send.context.trace_id == view.get_span_context().trace_id
        assert send.attributes["suprsend.outcome"] == "dead_lettered"
        assert send.attributes["http.response.status_code"] == 400
        assert send.status.status_code.name == "ERROR"
        assert [e.name for e in send.events] == ["dead_letter"]


# -- nothing but keys, names and counts ------------------------------------------------

SECRET = "WSSECRET_tracing_marker_7731"
#: Property keys and values: letters the trace and span ids (hex) and keys never hold.
_WORDS = st.text(alphabet="ghijklmnopqrstuvwxyz", min_size=10, max_size=20)


@st.composite
def secret_properties(draw: st.DrawFn) -> dict[str, Any]:
    values = st.one_of(_WORDS, st.lists(_WORDS, min_size=1, max_size=2))
    return {
        "pv" + k: v
        for k, v in draw(st.dictionaries(_WORDS, values, min_size=1, max_size=3)).items()
    }


def _strings(properties: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for key, value in properties.items():
        found.add(key)
        found.update(value if isinstance(value, list) else [value])
    return found


def _span_texts(span: Any) -> list[str]:
    texts = [span.name, span.status.description or "", repr(dict(span.attributes or {}))]
    texts += [e.name + repr(dict(e.attributes or {})) for e in span.events]
    texts += [repr(dict(link.attributes or {})) for link in span.links]
    return texts


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def secret_sandbox() -> Iterator[Sandbox]:
    with Sandbox(workspace_key=WORKSPACE_KEY, workspace_secret=SECRET) as sb:
        yield sb


@pytest.mark.slow
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(properties=secret_properties())
def test_no_property_or_secret_in_spans_or_logs(
    app_factory: Callable[..., Celery],
    secret_sandbox: Sandbox,
    redis_client: redis.Redis,
    spans: Any,
    tracer: Any,
    properties: dict[str, Any],
) -> None:
    """Sent, retried and dead-lettered on both paths: spans, span events and log records
    (message, arguments, extra fields) hold keys, names and counts, never a property
    key or value, nor the secret."""
    secret_sandbox.reset()
    spans.clear()
    app = app_factory(
        suprsend_workspace_secret=SECRET,
        suprsend_base_url=secret_sandbox.url,
        suprsend_retry_backoff_max=1,
        suprsend_max_retries=1,
    )
    capture = _Capture()
    root = logging.getLogger()
    old_level = root.level
    ours = logging.getLogger("suprsend_celery")
    old_ours = ours.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    ours.setLevel(logging.DEBUG)  # the worker sets WARNING: every line of ours is checked
    try:
        secret_sandbox.set_faults(
            {
                "rules": [
                    {"paths": ["/v2/event/"], "status": 503, "count": 1},
                    {
                        "paths": ["/v2/bulk/event/"],
                        "count": 1,
                        "record_errors": [
                            {"index": 0, "status": 500},
                            {"index": 1, "status": 400, "message": "bad"},
                        ],
                    },
                ]
            }
        )
        with in_process_worker(app, close_results_after_tasks=True):
            with tracer.start_as_current_span("POST /orders"):
                buffer_events([Event(f"u-{i}", "order_placed", properties) for i in range(3)])
                result = track_event.delay("u-d", "order_placed", properties)
            assert result.get(timeout=30)["attempts"] == 2
        flusher = get_flusher(app)
        flusher.run(10)
        buffer = get_buffer(app)
        assert isinstance(buffer, RedisBuffer)
        make_due(buffer)
        flusher.run(10)
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
        ours.setLevel(old_ours)

    assert secret_sandbox.stats()["events_processed"] == 3  # two buffered, one direct
    finished = spans.get_finished_spans()
    assert {s.name for s in finished} >= {
        "suprsend.flush",
        "suprsend.send_bulk",
        "suprsend.send_event",
    }
    assert any(e.name == "dead_letter" for s in finished for e in s.events)
    assert sum(e.name == "retry" for s in finished for e in s.events) >= 2
    assert capture.records
    assert any(getattr(r, "outcome", None) == "retry" for r in capture.records)
    assert any(getattr(r, "outcome", None) == "flushed" for r in capture.records)  # INFO
    hidden = _strings(properties) | {SECRET}
    for span in finished:
        for text in _span_texts(span):
            assert not [h for h in hidden if h in text], (span.name, text)
    for record in capture.records:
        text = record.getMessage() + repr(record.args) + repr(vars(record))
        assert not [h for h in hidden if h in text], record.getMessage()


# -- structured log fields -------------------------------------------------------------


class TestLogFields:
    """Delivery log lines carry ``extra=`` fields a JSON pipeline can index."""

    def test_flusher_retry_and_dead_letter_fields(
        self,
        app_factory: Callable[..., Celery],
        sandbox: Sandbox,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        app = app_factory()
        retried = buffer_event("u-1", "order_placed", idempotency_key="k-retry", app=app)
        dead = buffer_event("u-2", "order_placed", idempotency_key="k-dead", app=app)
        sandbox.set_faults(
            {
                "rules": [
                    {
                        "count": 1,
                        "record_errors": [
                            {"index": 0, "status": 503},
                            {"index": 1, "status": 400},
                        ],
                    }
                ]
            }
        )
        caplog.set_level(logging.INFO, logger="suprsend_celery")
        get_flusher(app).run(10)
        by_key = {getattr(r, "idempotency_key", None): r for r in caplog.records}
        retry, letter = by_key[retried], by_key[dead]
        assert (retry.outcome, retry.attempt, retry.status_code) == ("retry", 1, 503)  # type: ignore[attr-defined]
        assert (letter.outcome, letter.attempt, letter.status_code) == ("dead_lettered", 1, 400)  # type: ignore[attr-defined]
        assert retry.claim == letter.claim  # type: ignore[attr-defined]
        assert "will be retried" in retry.getMessage()  # the prose is kept for humans
        (summary,) = [r for r in caplog.records if getattr(r, "outcome", None) == "flushed"]
        assert (summary.retry_scheduled, summary.dead_lettered) == (1, 1)  # type: ignore[attr-defined]

    @pytest.mark.slow
    def test_direct_retry_fields(
        self,
        app_factory: Callable[..., Celery],
        sandbox: Sandbox,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        sandbox.set_faults({"rules": [{"status": 503, "count": 1}]})
        app = app_factory(suprsend_retry_backoff_max=1)
        caplog.set_level(logging.INFO, logger="suprsend_celery")
        with in_process_worker(app, close_results_after_tasks=True):
            result = track_event.delay("u-1", "order_placed", idempotency_key="k-direct")
            assert result.get(timeout=30)["attempts"] == 2
        (retry,) = [r for r in caplog.records if getattr(r, "outcome", None) == "retry"]
        fields = {
            k: getattr(retry, k) for k in ("idempotency_key", "task_id", "attempt", "status_code")
        }
        assert fields == {
            "idempotency_key": "k-direct",
            "task_id": result.id,
            "attempt": 1,
            "status_code": 503,
        }

    def test_the_readme_json_recipe(self) -> None:
        """The documented ``LOGGING`` (python-json-logger, docs/tracing.md), applied as
        written in a fresh process, turns a retry line into JSON with the fields as keys."""
        pytest.importorskip("pythonjsonlogger.json")
        readme = Path(REPO, "docs", "tracing.md").read_text(encoding="utf-8")
        block = readme[readme.index("LOGGING = {") :]
        block = block[: block.index("```")]
        script = textwrap.dedent(
            f"""
            import logging.config, sys
            sys.path.insert(0, {os.path.join(REPO, "tests")!r})
            """
        )
        script += block + textwrap.dedent(
            """
            logging.config.dictConfig(LOGGING)
            from conftest import WORKSPACE_KEY, WORKSPACE_SECRET, make_app
            from suprsend_celery import buffer_event
            from suprsend_celery.dev.redis_server import RedisServer
            from suprsend_celery.dev.sandbox import Sandbox
            from suprsend_celery.pipeline.runtime import get_flusher

            with RedisServer(appendonly=False) as server, Sandbox(
                workspace_key=WORKSPACE_KEY, workspace_secret=WORKSPACE_SECRET
            ) as sandbox:
                app = make_app(server.url, sandbox.url)
                buffer_event("u-1", "order_placed", idempotency_key="k-json", app=app)
                sandbox.set_faults({"rules": [{"count": 1, "record_errors": [{"status": 503}]}]})
                get_flusher(app).run(10)
                app.close()
            """
        )
        env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
        (retry,) = [line for line in lines if line.get("outcome") == "retry"]
        assert retry["idempotency_key"] == "k-json"
        assert retry["attempt"] == 1
        assert retry["status_code"] == 503
        assert retry["levelname"] == "WARNING"
        assert retry["name"] == "suprsend_celery.pipeline.flusher"
        assert "will be retried" in retry["message"]
        (summary,) = [line for line in lines if line.get("outcome") == "flushed"]
        assert summary["retry_scheduled"] == 1


# -- no cost when absent or not configured ---------------------------------------------

_SCRIPT = """
import sys
{setup}
sys.path.insert(0, {tests!r})
from conftest import WORKSPACE_KEY, WORKSPACE_SECRET, make_app
from suprsend_celery import buffer_event
from suprsend_celery.dev.redis_server import RedisServer
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.pipeline.runtime import get_buffer, get_flusher

with RedisServer(appendonly=False) as server, Sandbox(
    workspace_key=WORKSPACE_KEY, workspace_secret=WORKSPACE_SECRET
) as sandbox:
    app = make_app(server.url, sandbox.url)
    {accept}
    buffer = get_buffer(app)
    (item,) = buffer.redis.lrange(buffer.keys.pending, 0, -1)
    assert item.startswith(b"{{"), item[:60]
    assert get_flusher(app).run(10).sent == 1
    assert len(sandbox.events()) == 1
    app.close()
print("loaded:", sys.modules.get("opentelemetry.trace") is not None)
"""


def _run(setup: str, accept: str) -> str:
    script = _SCRIPT.format(setup=setup, tests=os.path.join(REPO, "tests"), accept=accept)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


class TestNoCost:
    """Absent or unconfigured, OpenTelemetry changes nothing: records are stored as
    before, and without the API nothing of ours imports it."""

    def test_absent(self) -> None:
        """The extra is not installed: the package works as before."""
        out = _run(
            'sys.modules["opentelemetry"] = None  # as if not installed',
            "buffer_event('u-1', 'order_placed', app=app)",
        )
        assert "loaded: False" in out

    def test_installed_but_not_configured(self) -> None:
        """The API installed (redis-py imports it when it is) but no SDK set: the current
        span is invalid even inside a "span", nothing is stored beside the record."""
        pytest.importorskip("opentelemetry.trace")
        accept = textwrap.dedent(
            """\
            from opentelemetry import trace
            with trace.get_tracer("view").start_as_current_span("POST /orders"):
                    buffer_event("u-1", "order_placed", app=app)"""
        )
        out = _run("from opentelemetry import trace", accept.replace("\n", "\n    "))
        assert "loaded: True" in out
