"""A whole request refused with 404, 405 or a redirect is a configuration fault (issue 10 item 4).

A wrong path in ``suprsend_base_url`` used to make the flusher bisect every batch down
to single records and dead-letter the whole backlog (300 records: 597 requests). Such
a refusal cannot be about one record's content: like a 401, the records are kept, the
breaker opens, and the log and the breaker's reason say what is wrong.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

import pytest
from _buffer_helpers import buffer_of, make_events, processed_keys, redis_state
from celery import Celery
from conftest import WORKSPACE_KEY, WORKSPACE_SECRET

from suprsend_celery import ConfigurationError, Event, track_event
from suprsend_celery.buffer.redis_buffer import RedisBuffer
from suprsend_celery.delivery.client import SuprsendClient
from suprsend_celery.delivery.responses import bulk_response, error_for_response
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.exceptions import PermanentDeliveryError
from suprsend_celery.pipeline.flusher import Flusher
from suprsend_celery.pipeline.settings import reset_settings


def fill(buffer: RedisBuffer, client: SuprsendClient, count: int) -> list[bytes]:
    records = [client.accept(e).payload for e in make_events(count)]
    buffer.push(records)
    return records


class TestFlusher:
    def test_wrong_path_keeps_the_backlog_and_opens_the_breaker(
        self, redis_client: Any, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
    ) -> None:
        """300 records sent to a path that is not the API: none dead-lettered, few requests."""
        buffer = RedisBuffer(redis_client, prefix="wrongpath")
        client = SuprsendClient(
            WORKSPACE_KEY, WORKSPACE_SECRET, base_url=sandbox.url + "api/v1/"
        )  # the API is at the root: /v2/bulk/event/
        fill(buffer, client, 300)
        with caplog.at_level(logging.ERROR, logger="suprsend_celery"):
            report = Flusher(buffer, client).run(5)
        assert report.dead_lettered == 0
        assert report.requests <= 8  # the claims already in flight, then it stops
        assert redis_state(buffer)["dead"] == 0
        assert buffer.remaining() == 300
        breaker = buffer.breaker()
        assert breaker["state"] == "open"
        assert "HTTP 404" in breaker["reason"] and "suprsend_base_url" in breaker["reason"]
        assert "api/v1/v2/bulk/event/" in breaker["reason"]
        assert any(
            "suprsend_base_url" in r.getMessage() and "stay buffered" in r.getMessage()
            for r in caplog.records
        )
        assert sandbox.events() == []

    @pytest.mark.parametrize("status", [405, 301, 302, 307, 308])
    def test_405_and_redirects_keep_the_records(
        self, redis_client: Any, sandbox: Sandbox, status: int
    ) -> None:
        buffer = RedisBuffer(redis_client, prefix=f"refused{status}")
        client = SuprsendClient(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=sandbox.url)
        fill(buffer, client, 50)
        sandbox.set_faults([{"status": status, "count": 1}])
        report = Flusher(buffer, client, batch_size=25, concurrency=1).run(5)
        assert (report.dead_lettered, report.requests, report.breaker) == (0, 1, "open")
        assert buffer.remaining() == 50
        assert f"HTTP {status}" in buffer.breaker()["reason"]

    def test_dead_letter_log_names_the_record_key(
        self, redis_client: Any, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A record refused by bisection is logged with its key (it was ``record None``)."""
        buffer = RedisBuffer(redis_client, prefix="namedkey")
        client = SuprsendClient(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=sandbox.url)
        poison = client.accept(Event("user-5", "poison", {"n": 5}))
        buffer.push([*(client.accept(e).payload for e in make_events(3)), poison.payload])
        sandbox.set_faults([{"status": 400, "containing_event": "poison"}])
        with caplog.at_level(logging.ERROR, logger="suprsend_celery"):
            report = Flusher(buffer, client, batch_size=4).run(5)
        assert report.dead_lettered == 1
        lines = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
        reason = "HTTP 400: sandbox fault: 400 Bad Request"
        assert lines == [f"record {poison.idempotency_key} dead-lettered: {reason}"]
        assert len(processed_keys(sandbox)) == 3


class TestDirect:
    def test_wrong_path_keeps_the_event(self, celery_app: Celery, worker: Any) -> None:
        """A direct-path 404 moves the event to the buffer instead of dead-lettering it."""
        celery_app.conf.suprsend_base_url = celery_app.conf.suprsend_base_url + "wrong/"
        reset_settings(celery_app)
        result = track_event.delay("u1", "signed_up")
        with pytest.raises(ConfigurationError, match="suprsend_base_url"):
            result.get(timeout=30)
        buffer = buffer_of(celery_app)
        assert buffer.stats()["dead"] == 0
        assert buffer.stats()["pending"] == 1


def test_a_record_level_404_is_not_a_configuration_fault() -> None:
    """Only a whole request's 404 is about the URL; the flag survives pickling."""
    whole = error_for_response(404, None, {}, url="http://x/v2/event/")
    assert whole.is_config_error and pickle.loads(pickle.dumps(whole)).is_config_error
    record = b'{"$idempotency_key": "k"}'
    [(_, error)] = (
        bulk_response(
            207, {"records": [{"status": "error", "status_code": 404}]}, [record]
        ).failures
        or []
    )
    assert isinstance(error, PermanentDeliveryError) and not error.is_config_error
