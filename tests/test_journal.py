"""The direct path's journal: a published record whose broker message is lost still arrives.

Celery's Redis transport pops a message before it notes it as unacknowledged, so a
worker or Redis killed in between loses it. ``track_event.delay`` therefore notes the
record in the buffer's journal until a worker settles it; once the task's next attempt
time plus the grace (``suprsend_journal_grace``) has passed, the flusher sends what is
still there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from celery import Celery
from celery.signals import task_revoked
from conftest import in_process_worker, wait_for

from suprsend_celery import track_event
from suprsend_celery.buffer.protocol import Buffer
from suprsend_celery.delivery.tally import Tally
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.pipeline.runtime import get_buffer, get_flusher
from suprsend_celery.tasks.attempt import TAKEN_STATUS

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
        app = app_factory(suprsend_journal_grace=1)
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

    def test_entry_is_not_due_before_its_grace(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """A task still queued is left to its worker: the flusher does not send it early."""
        app = app_factory(suprsend_journal_grace=600)
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
        deadline = time.monotonic() + 1.5  # the grace (1 s) has passed
        wait_for(lambda: time.monotonic() > deadline, 5, message="the entry to be due")
        assert flusher.run(time_budget=2).sent == 0
        assert journal_size(app) == 0
        assert sandbox.stats()["requests"] == 0

    def test_revoked_before_it_ran(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """Revoked while waiting for its countdown: the worker discards it, and the
        journal entry goes with it."""
        app = app_factory(suprsend_journal_grace=1)
        with discarded() as revoked, in_process_worker(app, concurrency=1):
            result = track_event.apply_async(("u1", "order_placed"), countdown=2)
            app.control.revoke(result.id)
            wait_for(lambda: result.id in revoked, 20, message="the worker to discard it")
        self._nothing_sent(app, sandbox)

    def test_expired_when_a_worker_takes_it(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """Expired before any worker ran: the worker discards it, its entry is settled."""
        app = app_factory(suprsend_journal_grace=1)
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
        app = app_factory(suprsend_journal_grace=1)
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


def _record(key: str) -> bytes:
    return json.dumps(
        {"$insert_id": key, "$time": int(time.time() * 1000), "event": "order_placed",
         "distinct_id": "u1", "properties": {}, "$idempotency_key": key}
    ).encode()  # fmt: skip


def _counters(buffer: Buffer) -> dict[str, float]:
    return buffer.snapshot().counters


class TestNextAttemptTime:
    """An entry follows its task's next attempt time, not the broker's visibility timeout:
    a worker that dies holding the task delays the event by the grace, not by an hour."""

    def test_entry_is_due_after_countdown_plus_grace(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """Published with a countdown of 30 s and a grace of 5 s, under a visibility timeout
        of an hour: the entry is due in 35 s."""
        app = app_factory(suprsend_journal_grace=5)
        track_event.apply_async(("u1", "order_placed"), countdown=30)
        buffer = get_buffer(app)
        assert buffer is not None
        ((_, due),) = buffer.redis.zrange(buffer.keys.journal, 0, -1, withscores=True)
        assert 33 < due - buffer.snapshot().now < 36

    def test_an_attempt_holds_its_entry(self, app_factory: Callable[..., Celery]) -> None:
        """``hold`` pushes a live entry's due time on (never back), and says when there is
        none."""
        buffer = get_buffer(app_factory())
        assert buffer is not None
        record = _record("held-1")
        buffer.journal(record, 1)
        assert buffer.hold_journal(record, 100) == "held"
        due = buffer.redis.zscore(buffer.keys.journal, record)
        assert due is not None and due - buffer.snapshot().now > 98
        assert buffer.hold_journal(record, 10) == "held"  # an earlier time is not taken
        assert buffer.redis.zscore(buffer.keys.journal, record) == due
        assert buffer.hold_journal(_record("never-journaled"), 10) == "absent"
        assert buffer.recover_journal() == 0

    def test_a_slow_request_is_not_sent_twice(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """With a grace of 1 s and SuprSend taking 3 s to answer, the flusher running all
        along leaves the event to the worker that holds it: one request, counted once."""
        app = app_factory(suprsend_journal_grace=1)
        sandbox.set_faults({"paths": ["/v2/event/"], "rules": [{"delay": 3, "count": 1}]})
        flusher = get_flusher(app)
        with in_process_worker(app, concurrency=1):
            result = track_event.delay("u1", "order_placed", idempotency_key="slow-1")
            wait_for(
                lambda: sandbox.faults()["rules"][0]["applied"] >= 1,
                20,
                message="the request to be in flight",
            )

            def flushed_nothing_until_done() -> bool:
                assert flusher.run(time_budget=0.5).sent == 0
                return bool(result.ready())

            wait_for(flushed_nothing_until_done, 20, 0.1, "the task to finish")
            assert result.get(timeout=10)["status_code"] == 202
        assert sandbox.stats()["events_received"] == 1
        buffer = get_buffer(app)
        assert buffer is not None
        counters = _counters(buffer)
        assert (counters["direct:sent"], counters.get("records:sent", 0)) == (1, 0)
        assert journal_size(app) == 0

    def test_recovery_leaves_a_tombstone(self, app_factory: Callable[..., Celery]) -> None:
        """A record the flusher takes over is remembered by its SHA1: a later hold answers
        ``taken``, a retry's journal entry is not written again, and a late settle counts
        the attempt's requests but not its outcome (the buffer counts the event)."""
        buffer = get_buffer(app_factory())
        assert buffer is not None
        record = _record("taken-1")
        buffer.journal(record, 0)
        assert buffer.recover_journal() == 1
        digest = hashlib.sha1(record).hexdigest().encode()
        assert buffer.redis.zscore(buffer.keys.journal_taken, digest) is not None
        assert _counters(buffer)["direct:taken_over"] == 1
        assert buffer.hold_journal(record, 10) == "taken"
        buffer.journal(record, 0)
        assert buffer.redis.zcard(buffer.keys.journal) == 0
        tally = Tally()
        tally.add("direct:sent")
        tally.add("requests:direct:2xx")
        assert buffer.settle_journal(record, tally) is False
        counters = _counters(buffer)
        assert "direct:sent" not in counters
        assert counters["requests:direct:2xx"] == 1
        assert buffer.settle_journal(_record("settled-1"), tally) is True

    def test_tombstones_are_pruned(self, app_factory: Callable[..., Celery]) -> None:
        """Tombstones older than ``keep_seconds`` go at the next recovery."""
        buffer = get_buffer(app_factory())
        assert buffer is not None
        buffer.journal(_record("old-1"), 0)
        assert buffer.recover_journal() == 1
        assert buffer.redis.zcard(buffer.keys.journal_taken) == 1
        deadline = time.monotonic() + 0.05
        wait_for(lambda: time.monotonic() > deadline, 5, message="a tombstone to age")
        assert buffer.direct_journal.recover(keep_seconds=0.01) == 0  # type: ignore[attr-defined]
        assert buffer.redis.zcard(buffer.keys.journal_taken) == 0

    def test_task_run_after_the_flusher_took_over_sends_nothing(
        self,
        app_factory: Callable[..., Celery],
        sandbox: Sandbox,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The message waited past its grace (a dead worker held it); the flusher sent the
        event; the task, run at last, reports it sent from the journal and neither sends
        nor counts it again."""
        app = app_factory(suprsend_journal_grace=1)
        result = track_event.delay("u1", "order_placed", idempotency_key="late-1")
        flusher = get_flusher(app)
        wait_for(
            lambda: flusher.run(time_budget=2).sent == 1,
            timeout=15,
            interval=0.2,
            message="the flusher to take the event over",
        )
        caplog.set_level(logging.INFO, logger="suprsend_celery")
        with in_process_worker(app, concurrency=1):
            outcome = result.get(timeout=20)
        assert outcome["status"] == TAKEN_STATUS
        assert outcome["idempotency_key"] == "late-1"
        (line,) = [r for r in caplog.records if getattr(r, "outcome", None) == "taken_over"]
        assert (line.idempotency_key, line.task_id) == ("late-1", result.id)  # type: ignore[attr-defined]
        assert sandbox.stats()["requests"] == 1  # the flusher's bulk request only
        assert [e["$idempotency_key"] for e in sandbox.events()] == ["late-1"]
        buffer = get_buffer(app)
        assert buffer is not None
        counters = _counters(buffer)
        assert counters.get("direct:sent", 0) == 0
        assert (counters["records:sent"], counters["direct:taken_over"]) == (1, 1)
        assert journal_size(app) == 0
