"""``suprsend_dry_run``: validate and accept as usual, count what would be sent, send nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from celery import Celery
from conftest import in_process_worker

from suprsend_celery import InvalidEventError, buffer_event, buffer_stats, flush_buffer, track_event
from suprsend_celery.dev.sandbox import Sandbox

SECRET_PROPERTY = "dry-run-secret-7731"


def test_buffered_path_counts_and_sends_nothing(
    app_factory: Callable[..., Celery], sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """Records are accepted and drained; the flush counts them; no request leaves."""
    app_factory(suprsend_dry_run=True)
    caplog.set_level(logging.DEBUG, logger="suprsend_celery")
    for i in range(5):
        buffer_event(f"u{i}", "dry_event", {"secret": SECRET_PROPERTY})
    with pytest.raises(InvalidEventError):
        buffer_event("u1", "$bad_name")  # validation is unchanged
    result = flush_buffer.apply(kwargs={"time_budget": 5}).get()
    assert (result["sent"], result["dry_run"], result["remaining"]) == (5, True, 0)
    assert buffer_stats()["pending"] == 0
    assert sandbox.stats()["requests"] == 0
    assert "dry run: bulk request of 5 record(s) not sent" in caplog.text
    assert SECRET_PROPERTY not in caplog.text


def test_direct_path_result_says_dry_run(
    app_factory: Callable[..., Celery], sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """The task succeeds with status ``dry_run``; the sandbox hears nothing."""
    app = app_factory(suprsend_dry_run=True)
    caplog.set_level(logging.DEBUG, logger="suprsend_celery")
    with in_process_worker(app, close_results_after_tasks=True):
        result = track_event.delay("u1", "dry_direct", {"secret": SECRET_PROPERTY}).get(timeout=15)
    assert result["status"] == "dry_run"
    assert (result["status_code"], result["message_id"], result["attempts"]) == (None, None, 1)
    assert sandbox.stats()["requests"] == 0
    assert f"dry run: event {result['idempotency_key']} not sent" in caplog.text
    assert SECRET_PROPERTY not in caplog.text


def test_off_by_default(app_factory: Callable[..., Celery], sandbox: Sandbox) -> None:
    """Without the setting events are sent and the flush result has no ``dry_run`` key."""
    app_factory()
    buffer_event("u1", "wet_event")
    result = flush_buffer.apply(kwargs={"time_budget": 5}).get()
    assert result["sent"] == 1
    assert "dry_run" not in result
    assert len(sandbox.events()) == 1
