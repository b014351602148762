"""Records the last flat release (a1e3dfe, before the layered layout) left in Redis
still deliver: the key names, the record bytes, the attempt prefix of a retry, the
dead-letter format and the journal are read as that release wrote them.

The bytes below were written by that release itself (its ``buffer_event``, then its
buffer's ``claim``, ``settle`` with a retry and a dead letter, and ``journal``),
copied from ``LRANGE``/``ZRANGE`` of a Redis it used, key names included.
"""

from __future__ import annotations

from collections.abc import Callable

from _buffer_helpers import processed_keys
from celery import Celery
from conftest import WORKSPACE_KEY

from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.pipeline.runtime import get_buffer, get_flusher

_VERSION = b'"$ss_sdk_version": "suprsend-celery/0.1.0 (python/3.11.7; linux)"'

#: ``{suprsend_celery}:pending`` (LIST): a record put back untouched by a settle.
PENDING = (
    b'{"$insert_id": "ee5aac27-4b73-4165-a1d2-7d47888eb63a", "$time": 1796472992665, '
    b'"event": "order_placed", "distinct_id": "user-1", "properties": {"order_id": 1, '
    b'"total": "9.50", ' + _VERSION + b'}, "$idempotency_key": "old-pending-1"}'
)
#: ``{suprsend_celery}:retry`` (ZSET, due at 0): a record with its attempt prefix.
RETRY = (
    b'3|{"$insert_id": "ad467915-df9e-4f80-be7c-921556954dac", "$time": 1796472992671, '
    b'"event": "order_placed", "distinct_id": "user-2", "properties": {"order_id": 2, '
    + _VERSION
    + b'}, "$idempotency_key": "old-retry-1", "tenant_id": "t1"}'
)
#: ``{suprsend_celery}:dead`` (LIST): the JSON header, a newline, the record.
DEAD = (
    b'{"idempotency_key": "old-dead-1", "event": "order_placed", "error": "HTTP 400: bad", '
    b'"status_code": 400, "attempts": 1, "failed_at": 1796472992.676, "source": "buffer"}\n'
    b'{"$insert_id": "ab450013-4a0d-4014-a377-1211e922a70d", "$time": 1796472992671, '
    b'"event": "order_placed", "distinct_id": "user-3", "properties": {"order_id": 3, '
    + _VERSION
    + b'}, "$idempotency_key": "old-dead-1"}'
)
#: ``{suprsend_celery}:journal`` (ZSET, due at 0): a direct-path record whose task
#: went silent.
JOURNAL = (
    b'{"$insert_id": "760c8770-6afe-46d2-b1aa-0b00b63aab89", "$time": 1796472992671, '
    b'"event": "order_placed", "distinct_id": "user-4", "properties": {"order_id": 4, '
    + _VERSION
    + b'}, "$idempotency_key": "old-journal-1"}'
)


def test_records_of_the_flat_release_deliver(
    app_factory: Callable[..., Celery], sandbox: Sandbox
) -> None:
    """Pending, retry and journal records are sent as they were stored (``env`` added at
    send); the dead letter reads as before and, requeued, is sent too."""
    app = app_factory()
    buffer = get_buffer(app)
    client = buffer.redis
    client.rpush("{suprsend_celery}:pending", PENDING)
    client.zadd("{suprsend_celery}:retry", {RETRY: 0})
    client.lpush("{suprsend_celery}:dead", DEAD)
    client.zadd("{suprsend_celery}:journal", {JOURNAL: 0})

    (letter,) = buffer.dead_letters()
    assert (letter.idempotency_key, letter.status_code, letter.attempts, letter.source) == (
        "old-dead-1",
        400,
        1,
        "buffer",
    )
    assert letter.record_json().encode() == DEAD.partition(b"\n")[2]

    report = get_flusher(app).run(10.0)
    assert (report.sent, report.remaining) == (3, 0)
    assert buffer.requeue_dead_letters().moved == 1
    assert get_flusher(app).run(10.0).sent == 1

    assert processed_keys(sandbox) == {
        "old-pending-1": 1,
        "old-retry-1": 1,
        "old-journal-1": 1,
        "old-dead-1": 1,
    }
    by_key = {e["$idempotency_key"]: e for e in sandbox.events()}
    assert by_key["old-retry-1"]["tenant_id"] == "t1"
    assert by_key["old-pending-1"]["properties"]["total"] == "9.50"
    assert by_key["old-pending-1"]["$insert_id"] == "ee5aac27-4b73-4165-a1d2-7d47888eb63a"
    assert by_key["old-pending-1"]["$time"] == 1796472992665
    assert {e["env"] for e in by_key.values()} == {WORKSPACE_KEY}  # the settings in force
    assert buffer.stats()["dead"] == 0
