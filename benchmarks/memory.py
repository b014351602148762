"""Scenario 3: the flusher's memory while it drains a backlog of a million records.

The backlog is written straight into the buffer's pending list with pipelined
``RPUSH`` of prebuilt records (each one what ``buffer_event`` would have stored, with
a unique ``$insert_id`` and idempotency key), which takes seconds instead of minutes.
A flusher process then drains it while we sample its RSS every 0.1 s; the growth is
its peak RSS (sampled, or ``ru_maxrss``, whichever is higher) minus its RSS when warm.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import PREFIX, SandboxProcess, log, properties, run_id
from benchmarks.throughput import clear_buffer, flushers
from suprsend_celery.delivery.client import USER_AGENT
from suprsend_celery.events.model import Event, accept

_PLACEHOLDER_ID = "00000000-0000-4000-8000-000000000000"


def prefill_pending(redis_url: str, records: int, tag: str) -> int:
    """RPUSH ``records`` ready-to-send records; returns their total size in bytes."""
    template = accept(
        Event("user-00000", "order_placed", properties(1), idempotency_key="KEY-PLACEHOLDER"),
        sdk_version=USER_AGENT,
    ).payload
    template = template.replace(
        template[template.index(b'"$insert_id": "') + 15 :][:36], _PLACEHOLDER_ID.encode()
    )
    head, _, rest = template.partition(_PLACEHOLDER_ID.encode())
    middle, _, tail = rest.partition(b"KEY-PLACEHOLDER")
    prefix = uuid.uuid4().hex
    id_head = f"{prefix[:8]}-{prefix[8:12]}-4{prefix[13:16]}-a{prefix[17:20]}-".encode()
    client = redis.Redis.from_url(redis_url)
    pending = "{" + PREFIX + "}:pending"
    total = 0
    chunk = 10_000
    try:
        for start in range(0, records, chunk):
            batch = [
                b"%s%s%012x%s%s-%d%s" % (head, id_head, i, middle, tag.encode(), i, tail)
                for i in range(start, min(records, start + chunk))
            ]
            total += sum(len(b) for b in batch)
            pipe = client.pipeline(transaction=False)
            for offset in range(0, len(batch), 1000):
                pipe.rpush(pending, *batch[offset : offset + 1000])
            pipe.execute()
    finally:
        client.close()
    return total


def run(redis_url: str, sandbox: SandboxProcess, records: int, logdir: Path) -> dict[str, Any]:
    clear_buffer(redis_url)
    tag = run_id()
    log(f"memory: pre-filling {records} records")
    size = prefill_pending(redis_url, records, tag)
    log(f"memory: {size / 1e6:.0f} MB buffered; draining")
    result = flushers(redis_url, sandbox, records, 1, logdir, prefilled=True, sample_rss=True)
    result["name"] = f"flusher draining {records:,}"
    result["record_bytes"] = size / records
    return result
