"""``suprsend_before_send``: run once per event at accept time, on every producer path."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import _hooks
import pytest
from celery import Celery
from celery.result import EagerResult
from conftest import in_process_worker, run_async, wait_for

from suprsend_celery import (
    ConfigurationError,
    Event,
    InvalidEventError,
    SuprsendCeleryError,
    abuffer_event,
    abuffer_events,
    atrack_event,
    buffer_event,
    buffer_events,
    track_event,
)
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.pipeline.runtime import get_buffer, get_flusher


@pytest.fixture(autouse=True)
def clear_calls() -> Iterator[None]:
    _hooks.CALLS.clear()
    yield
    _hooks.CALLS.clear()


def pending(app: Celery) -> list[dict[str, object]]:
    buffer = get_buffer(app)
    assert buffer is not None
    return [json.loads(r) for r in buffer.redis.lrange(buffer.keys.pending, 0, -1)]


def queued(app: Celery) -> int:
    buffer = get_buffer(app)
    assert buffer is not None
    return int(buffer.redis.llen("suprsend-tests"))


class TestChanges:
    """A hook that changes the event changes what is stored and sent, once."""

    def test_buffered_record_is_scrubbed_once_and_retries_are_identical(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """The hook runs at accept; a retried bulk request re-sends the same bytes."""
        app = app_factory(suprsend_before_send="_hooks.scrub")
        key = buffer_event("u1", "signed_up", {"ssn": "123-45-6789", "plan": "pro"})
        assert _hooks.CALLS == ["signed_up"]
        (stored,) = pending(app)
        assert stored["properties"] == {  # type: ignore[comparison-overlap]
            "plan": "pro",
            "scrubbed": True,
            "$ss_sdk_version": stored["properties"]["$ss_sdk_version"],  # type: ignore[index]
        }
        sandbox.set_faults([{"status": 503, "count": 1}])
        flusher = get_flusher(app)
        wait_for(lambda: flusher.run(2) and sandbox.events(), 30, message="the retried event")
        (event,) = sandbox.events()
        assert event["$idempotency_key"] == key
        assert "ssn" not in event["properties"]
        first, second = sandbox.requests()[:2]
        assert first.insert_ids == second.insert_ids
        assert _hooks.CALLS == ["signed_up"], "the hook ran once, at accept"

    def test_direct_path_runs_in_the_caller_once(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """``track_event.delay`` runs the hook before publishing; the worker's retry does not."""
        app = app_factory(suprsend_before_send="_hooks.scrub")
        sandbox.set_faults([{"status": 503, "count": 1}])
        with in_process_worker(app, close_results_after_tasks=True):
            result = track_event.delay("u1", "signed_up", {"ssn": "x"}).get(timeout=30)
        assert result["attempts"] == 2
        assert _hooks.CALLS == ["signed_up"]
        (event,) = sandbox.events()
        assert event["properties"]["scrubbed"] is True
        assert "ssn" not in event["properties"]

    def test_a_new_event_may_be_returned(self, app_factory: Callable[..., Celery]) -> None:
        """The hook may return another Event; that one is accepted."""
        app = app_factory(suprsend_before_send="_hooks.replace")
        buffer_event("u1", "original")
        (stored,) = pending(app)
        assert stored["event"] == "replaced_event"

    def test_a_callable_in_conf(self, app_factory: Callable[..., Celery]) -> None:
        """app.conf may hold the callable itself instead of its path."""
        app = app_factory(suprsend_before_send=_hooks.scrub)
        buffer_event("u1", "signed_up", {"ssn": "x"})
        assert pending(app)[0]["properties"]["scrubbed"] is True  # type: ignore[index]


class TestDrop:
    """``None`` drops the event: nothing stored or published, results keep their shape."""

    def test_buffer_event_returns_the_key_it_would_have_had(
        self, app_factory: Callable[..., Celery]
    ) -> None:
        app = app_factory(suprsend_before_send="_hooks.drop_internal")
        assert buffer_event("u1", "internal_ping", idempotency_key="k-dropped") == "k-dropped"
        assert isinstance(buffer_event("u1", "internal_ping"), str)
        assert pending(app) == []

    def test_buffer_events_keeps_positions(self, app_factory: Callable[..., Celery]) -> None:
        """One key per input event, in order; only kept events are buffered."""
        app = app_factory(suprsend_before_send="_hooks.drop_internal")
        events = [
            Event("u1", "kept_a", idempotency_key="a"),
            Event("u1", "internal_b", idempotency_key="b"),
            Event("u1", "kept_c", idempotency_key="c"),
        ]
        assert buffer_events(events) == ["a", "b", "c"]
        assert [r["$idempotency_key"] for r in pending(app)] == ["a", "c"]

    def test_track_event_returns_a_finished_dropped_result(
        self, app_factory: Callable[..., Celery]
    ) -> None:
        """Nothing is published; the result is already done with status ``dropped``."""
        app = app_factory(suprsend_before_send="_hooks.drop_internal")
        result = track_event.delay("u1", "internal_ping", idempotency_key="k-d")
        assert isinstance(result, EagerResult)
        assert result.get(timeout=1) == {
            "status": "dropped",
            "status_code": None,
            "message_id": None,
            "idempotency_key": "k-d",
            "attempts": 0,
        }
        assert queued(app) == 0

    def test_async_producers(self, app_factory: Callable[..., Celery]) -> None:
        """The async producers drop the same way."""
        app = app_factory(suprsend_before_send="_hooks.drop_internal")
        assert run_async(app, lambda: abuffer_event("u1", "internal_x", idempotency_key="x")) == "x"
        keys = run_async(
            app, lambda: abuffer_events([Event("u", "internal_y"), Event("u", "kept_z")])
        )
        assert isinstance(keys, list) and len(keys) == 2
        result = run_async(app, lambda: atrack_event("u1", "internal_t"))
        assert result.get()["status"] == "dropped"  # type: ignore[attr-defined]
        assert [r["event"] for r in pending(app)] == ["kept_z"]
        assert queued(app) == 0


class TestBadHooks:
    """A hook that misbehaves fails the call clearly; nothing is accepted."""

    def test_wrong_return_type(self, app_factory: Callable[..., Celery]) -> None:
        app = app_factory(suprsend_before_send="_hooks.returns_a_dict")
        with pytest.raises(ConfigurationError, match="suprsend_before_send must return an Event"):
            buffer_event("u1", "signed_up")
        assert pending(app) == []

    def test_hook_raises(self, app_factory: Callable[..., Celery]) -> None:
        """The hook's exception is chained to a SuprsendCeleryError naming the key."""
        app = app_factory(suprsend_before_send="_hooks.raises")
        with pytest.raises(SuprsendCeleryError, match="suprsend_before_send raised") as info:
            buffer_event("u1", "signed_up")
        assert isinstance(info.value.__cause__, RuntimeError)
        assert pending(app) == []

    def test_changed_identifiers_are_checked_again(
        self, app_factory: Callable[..., Celery]
    ) -> None:
        app = app_factory(suprsend_before_send="_hooks.bad_identifier")
        with pytest.raises(InvalidEventError, match="distinct_id"):
            buffer_event("u1", "signed_up")
        assert pending(app) == []
