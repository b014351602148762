"""SuprSend deduplicates a key for 24 hours only (issue 11 item 10).

A record first accepted more than 24 h before it is sent (a long outage, a late
requeue, journal recovery) is no longer protected: such sends are counted in Redis
(``buffer_stats()["sent_past_dedup_window"]``, ``status``), logged, and ``dead-letters
requeue`` says how many of the entries it moves are past the window.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from _buffer_helpers import buffer_of
from _metrics_helpers import parse, value
from celery import Celery
from click.testing import CliRunner
from conftest import WORKSPACE_KEY, WORKSPACE_SECRET, in_process_worker
from prometheus_client import CollectorRegistry, generate_latest

from suprsend_celery import Event
from suprsend_celery.buffer.redis_buffer import RedisBuffer
from suprsend_celery.defaults import TRACK_TASK
from suprsend_celery.delivery.client import SuprsendClient
from suprsend_celery.delivery.dead_letters import dead_letter_entry
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.events.records import accepted_before, record_time
from suprsend_celery.ops.cli import cli
from suprsend_celery.ops.exporter import BufferCollector
from suprsend_celery.pipeline.flusher import Flusher

DAY_MS = 24 * 3600 * 1000


def aged(record: bytes, hours: float) -> bytes:
    """The record as if it had been accepted ``hours`` ago."""
    then = record_time(record)
    assert then is not None
    return record.replace(b'"$time": %d' % then, b'"$time": %d' % (then - hours * 3600 * 1000))


def records(client: SuprsendClient, count: int, hours: float = 0) -> list[bytes]:
    made = [client.accept(Event(f"u{i}", "order_placed", {"n": i})).payload for i in range(count)]
    return [aged(r, hours) for r in made] if hours else made


@pytest.fixture
def client(sandbox: Sandbox) -> Any:
    c = SuprsendClient(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=sandbox.url)
    yield c
    c.close()


def test_accepted_before_reads_time_at_its_offset_or_by_search() -> None:
    now = int(time.time() * 1000)
    fresh = b'{"$insert_id": "' + b"0" * 36 + b'", "$time": %d, "event": "e"}' % now
    old = b'{"$insert_id": "' + b"0" * 36 + b'", "$time": %d, "event": "e"}' % (now - DAY_MS - 1)
    odd = b'{"event": "e", "$time": %d}' % (now - DAY_MS - 1)
    assert accepted_before([fresh, old, odd, b"{}"], now - DAY_MS) == [1, 2]


class TestFlusher:
    def test_sends_past_the_window_are_counted_and_logged(
        self,
        redis_client: Any,
        sandbox: Sandbox,
        client: SuprsendClient,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        buffer = RedisBuffer(redis_client, prefix="window")
        late = records(client, 3, hours=25)
        buffer.push([*late, *records(client, 5)])
        with caplog.at_level(logging.WARNING, logger="suprsend_celery"):
            report = Flusher(buffer, client, batch_size=8).run(5)
        assert report.sent == 8
        assert buffer.stats()["sent_past_dedup_window"] == 3
        [line] = [r.getMessage() for r in caplog.records if "24 h" in r.getMessage()]
        assert line.startswith("3 record(s) sent more than 24 h after they were accepted (e.g. ")
        assert json.loads(late[0])["$idempotency_key"] in line
        # Within the window nothing is counted.
        buffer.push(records(client, 4, hours=23))
        Flusher(buffer, client).run(5)
        assert buffer.stats()["sent_past_dedup_window"] == 3
        # The exporter serves the same count.
        registry = CollectorRegistry()
        registry.register(BufferCollector(buffer))
        samples = parse(generate_latest(registry).decode())
        assert value(samples, "suprsend_celery_records_sent_past_dedup_window_total") == 3


class TestDirect:
    def test_a_late_track_event_is_counted_and_logged(
        self,
        celery_app: Celery,
        client: SuprsendClient,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A ``track_event`` message sent over 24 h after its accept (a long broker
        outage) is counted like a buffered one; a fresh one is not."""
        late, fresh = records(client, 1, hours=25)[0], records(client, 1)[0]
        with (
            caplog.at_level(logging.WARNING, logger="suprsend_celery"),
            in_process_worker(celery_app, close_results_after_tasks=True),
        ):
            for record in (late, fresh):
                result = celery_app.send_task(TRACK_TASK, kwargs={"record": record.decode()})
                assert result.get(timeout=30)["status"] == "success"
        assert buffer_of(celery_app).stats()["sent_past_dedup_window"] == 1
        [line] = [r.getMessage() for r in caplog.records if "24 h" in r.getMessage()]
        assert json.loads(late)["$idempotency_key"] in line


class TestCli:
    def test_status_and_requeue_say_so(self, celery_app: Celery, client: SuprsendClient) -> None:
        buffer = buffer_of(celery_app)
        for record, hours in zip(records(client, 4), (30, 48, 1, 0), strict=True):
            entry = dead_letter_entry(
                aged(record, hours) if hours else record,
                error="HTTP 400: nope",
                status_code=400,
                attempts=1,
                source="buffer",
            )
            buffer.dead_letter(entry)
        status = CliRunner().invoke(cli, ["status"], obj=celery_app)
        assert "sent past 24 h" in status.stdout
        result = CliRunner().invoke(cli, ["dead-letters", "requeue", "--all"], obj=celery_app)
        assert result.exit_code == 0, result.output
        assert "requeued 4 dead letter(s)" in result.stdout
        assert "2 of them were first accepted more than 24 h ago" in result.stdout

    def test_status_of_a_sharded_buffer(self, app_factory: Any) -> None:
        """A buffer sharded over hash tags adds the count up like the other figures."""
        app = app_factory(suprsend_buffer_shards=2)
        result = CliRunner().invoke(cli, ["status", "--json"], obj=app)
        assert result.exit_code == 0, result.output
        figures = json.loads(result.stdout)
        assert figures["sent_past_dedup_window"] == 0
        assert figures["maxmemory_policy"] == "noeviction"
