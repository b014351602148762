"""Outcome signals fire where the outcomes happen, once, and carry no properties."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _buffer_helpers import make_events
from celery import Celery
from celery.utils.dispatch import Signal
from conftest import in_process_worker, wait_for

from suprsend_celery import PermanentDeliveryError, buffer_event, buffer_events, track_event
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.pipeline.runtime import get_flusher
from suprsend_celery.pipeline.signals import (
    breaker_closed,
    breaker_opened,
    event_dead_lettered,
    flush_completed,
)

SECRET_PROPERTY = "do-not-leak-4242"


class Recorder:
    """Connects to a signal for one test and keeps every call's kwargs."""

    def __init__(self, signal: Signal) -> None:
        self.signal = signal
        self.calls: list[dict[str, Any]] = []

    def __call__(self, sender: Any = None, signal: Any = None, **kwargs: Any) -> None:
        assert signal is self.signal
        self.calls.append({"sender": sender, **kwargs})


@pytest.fixture
def record() -> Iterator[Callable[[Signal], Recorder]]:
    recorders: list[Recorder] = []

    def connect(signal: Signal) -> Recorder:
        recorder = Recorder(signal)
        signal.connect(recorder, weak=False)
        recorders.append(recorder)
        return recorder

    yield connect
    for recorder in recorders:
        recorder.signal.disconnect(recorder)


def no_properties(call: dict[str, Any]) -> None:
    """Nothing a receiver would log by default shows a property."""
    assert SECRET_PROPERTY not in repr(call)


class TestDeadLettered:
    def test_buffered_path(
        self,
        celery_app: Celery,
        sandbox: Sandbox,
        record: Callable[[Signal], Recorder],
    ) -> None:
        """A record refused for good by the bulk API is announced once, as ``buffer``."""
        dead = record(event_dead_lettered)
        completed = record(flush_completed)
        keys = buffer_events(make_events(3, "evt_ok"))
        bad = buffer_event("u-bad", "evt_broken", {"secret": SECRET_PROPERTY})
        sandbox.set_faults(
            [{"record_errors": [{"event": "evt_broken", "status": 422, "message": "blocked"}]}]
        )
        report = get_flusher(celery_app).run(5)
        assert report.dead_lettered == 1
        (call,) = dead.calls
        assert call["sender"] == "buffer"
        assert call["stored"] is True
        letter = call["dead_letter"]
        assert (letter.idempotency_key, letter.event, letter.status_code) == (
            bad,
            "evt_broken",
            422,
        )
        assert letter.record_dict()["properties"]["secret"] == SECRET_PROPERTY  # on request
        no_properties(call)
        (done,) = completed.calls
        assert done == {"sender": "suprsend_celery", **report.as_result()}
        assert (done["sent"], done["dead_lettered"]) == (len(keys), 1)

    def test_direct_path(
        self, celery_app: Celery, sandbox: Sandbox, record: Callable[[Signal], Recorder]
    ) -> None:
        """A direct-path event refused for good is announced by the worker, as ``direct``."""
        dead = record(event_dead_lettered)
        sandbox.set_faults([{"status": 400, "count": 1}])
        with in_process_worker(celery_app, close_results_after_tasks=True):
            result = track_event.delay("u1", "evt_direct", {"secret": SECRET_PROPERTY})
            with pytest.raises(PermanentDeliveryError):
                result.get(timeout=15)
            wait_for(lambda: dead.calls, message="the signal")
        (call,) = dead.calls
        assert call["sender"] == "direct"
        assert call["dead_letter"].event == "evt_direct"
        assert call["dead_letter"].status_code == 400
        no_properties(call)

    def test_a_failing_receiver_does_not_disturb_delivery(
        self, celery_app: Celery, sandbox: Sandbox
    ) -> None:
        """Celery logs a receiver's exception; the flush still settles everything."""

        def broken(sender: Any = None, **kwargs: Any) -> None:
            raise RuntimeError("receiver bug")

        flush_completed.connect(broken, weak=False)
        try:
            buffer_events(make_events(2, "evt_fine"))
            assert get_flusher(celery_app).run(5).sent == 2
        finally:
            flush_completed.disconnect(broken)
        assert len(sandbox.events()) == 2


class TestBreaker:
    def test_opened_then_closed_once_each(
        self, celery_app: Celery, sandbox: Sandbox, record: Callable[[Signal], Recorder]
    ) -> None:
        """A Retry-After opens the breaker (one ``breaker_opened``); the first good answer
        after it closes it (one ``breaker_closed``)."""
        opened, closed = record(breaker_opened), record(breaker_closed)
        flusher = get_flusher(celery_app)
        buffer_events(make_events(3, "evt_outage"))
        sandbox.set_faults([{"status": 503, "retry_after": "1", "count": 1}])
        flusher.run(5)
        assert [c["sender"] for c in opened.calls] == ["suprsend_celery"]
        assert "503" in opened.calls[0]["reason"]
        assert closed.calls == []
        wait_for(lambda: flusher.run(2) and len(sandbox.events()) == 3, 30, message="delivery")
        assert len(opened.calls) == 1
        assert [c["sender"] for c in closed.calls] == ["suprsend_celery"]
