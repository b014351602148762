"""The direct path's journal: a published record whose broker message is lost still arrives.

Celery's Redis transport pops a message before it notes it as unacknowledged, so a
worker or Redis killed in between loses it. ``track_event.delay`` therefore notes the
record in the buffer's journal until a worker settles it; once the broker's visibility
timeout has passed, the flusher sends what is still there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from celery import Celery
from celery.signals import task_revoked
from conftest import in_process_worker, wait_for

from suprsend_celery import track_event
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.pipeline.runtime import get_buffer, get_flusher

QUEUE = "suprsend-tests"


def journal_size(app: Celery) -> int:
    buffer = get_buffer(app)
    assert buffer is not None
    return int(buffer.redis.zcard(buffer.keys.journal))


class TestJournal:
    """``track_event`` records are journaled until settled, and recovered when lost."""

    def test_lost_message_is_sent_by_the_flusher(
        self,
        app_factory: Callable[..., Celery],
        sandbox: Sandbox,
        redis_client: redis.Redis,
    ) -> None:
        """A message that vanished from the broker is delivered once its journal entry is due."""
        app = app_factory(broker_transport_options={"visibility_timeout": 1})
        track_event.delay("u1", "order_placed", {"n": 1}, idempotency_key="lost-1")
        assert journal_size(app) == 1
        redis_client.delete(QUEUE)  # the broker lost the message
        flusher = get_flusher(app)
        wait_for(
            lambda: flusher.run(time_budget=5).sent == 1,
            timeout=15,
            interval=0.2,
            message="the journaled record to be flushed",
        )
        assert [e["$idempotency_key"] for e in sandbox.events()] == ["lost-1"]
        assert journal_size(app) == 0

    def test_entry_is_not_due_before_the_visibility_timeout(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """A task still queued is left to its worker: the flusher does not send it early."""
        app = app_factory(broker_transport_options={"visibility_timeout": 600})
        track_event.delay("u1", "order_placed", idempotency_key="queued-1")
        report = get_flusher(app).run(time_budget=5)
        assert (report.sent, journal_size(app), sandbox.stats()["requests"]) == (0, 1, 0)

    def test_worker_settles_sent_and_dead_lettered_records(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """A delivered event and a dead-lettered one both leave the journal empty."""
        app = app_factory()
        sandbox.set_faults({"rules": [{"status": 400, "count": 1, "paths": ["/v2/event/"]}]})
        with in_process_worker(app, concurrency=1):
            track_event.delay("u1", "order_placed", idempotency_key="refused-1")
            track_event.delay("u2", "order_placed", idempotency_key="sent-1")
            buffer = get_buffer(app)
            assert buffer is not None
            wait_for(
                lambda: len(buffer.dead_letters()) == 1 and sandbox.stats()["events_processed"],
                timeout=20,
                message="one event delivered and one dead-lettered",
            )
            wait_for(lambda: journal_size(app) == 0, timeout=10, message="an empty journal")
        assert [e["$idempotency_key"] for e in sandbox.events()] == ["sent-1"]
        assert buffer.dead_letters()[0].idempotency_key == "refused-1"


@contextmanager
def discarded() -> Iterator[list[str]]:
    """The ids of the tasks the worker discards (Celery's ``task_revoked`` signal)."""
    ids: list[str] = []

    def on_revoked(request: Any = None, **_: Any) -> None:
        ids.append(request.id)

    task_revoked.connect(on_revoked, weak=False)
    try:
        yield ids
    finally:
        task_revoked.disconnect(on_revoked)


class TestDiscarded:
    """Issue 10 item 7: a task Celery discards (revoked, expired) is not sent later."""

    def _nothing_sent(self, app: Celery, sandbox: Sandbox) -> None:
        """Once every journal entry is due, the flusher finds nothing to send."""
        flusher = get_flusher(app)
        deadline = time.monotonic() + 1.5  # the visibility timeout (1 s) has passed
        wait_for(lambda: time.monotonic() > deadline, 5, message="the entry to be due")
        assert flusher.run(time_budget=2).sent == 0
        assert journal_size(app) == 0
        assert sandbox.stats()["requests"] == 0

    def test_revoked_before_it_ran(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """Revoked while waiting for its countdown: the worker discards it, and the
        journal entry goes with it."""
        app = app_factory(broker_transport_options={"visibility_timeout": 1})
        with discarded() as revoked, in_process_worker(app, concurrency=1):
            result = track_event.apply_async(("u1", "order_placed"), countdown=2)
            app.control.revoke(result.id)
            wait_for(lambda: result.id in revoked, 20, message="the worker to discard it")
        self._nothing_sent(app, sandbox)

    def test_expired_when_a_worker_takes_it(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """Expired before any worker ran: the worker discards it, its entry is settled."""
        app = app_factory(broker_transport_options={"visibility_timeout": 1})
        result = track_event.apply_async(("u1", "order_placed"), expires=0.5)
        expired = time.monotonic() + 0.6
        wait_for(lambda: time.monotonic() > expired, 5, message="the task to expire")
        with discarded() as revoked, in_process_worker(app, concurrency=1):
            wait_for(lambda: result.id in revoked, 20, message="the worker to discard it")
        self._nothing_sent(app, sandbox)

    def test_expired_and_never_taken(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox, redis_client: redis.Redis
    ) -> None:
        """No worker ever saw the expired message: the journal drops it when it comes
        due rather than send an event its caller said was worthless by then. An entry
        due before its expiry is still sent."""
        app = app_factory(broker_transport_options={"visibility_timeout": 1})
        track_event.apply_async(("u1", "order_placed"), expires=0.5)
        track_event.apply_async(("u2", "order_placed"), {"idempotency_key": "live"}, expires=600)
        redis_client.delete(QUEUE)  # no worker will ever take them
        deadline = time.monotonic() + 1.5
        wait_for(lambda: time.monotonic() > deadline, 5, message="the entries to be due")
        assert get_flusher(app).run(time_budget=2).sent == 1
        assert [e["$idempotency_key"] for e in sandbox.events()] == ["live"]
        assert journal_size(app) == 0
        buffer = get_buffer(app)
        assert buffer.redis.zcard(buffer.keys.journal_expires) == 0
