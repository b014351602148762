"""Async producers for FastAPI, Starlette and async Django views; the event loop never blocks.

- ``await abuffer_event(...)`` / ``await abuffer_events(...)``: the buffered path on
  ``redis.asyncio``. The accept step (validation, hook, record bytes) is the sync
  calls' own (``producers``), and so is the push (``buffer.push_plan``: the policy
  check, the script, the bound, the errors): only the round trip is awaited.
- ``await atrack_event(...)`` (in ``tasks.direct``): the direct path. The event is
  validated and serialised in the caller (bad input raises at once, nothing is
  published) and the publish runs in a worker thread (``asyncio.to_thread``). Celery
  has no asyncio publisher, and kombu's own async layer is a callback hub for the
  worker, not an asyncio client; a publish is a few broker round trips on kombu's
  thread-safe producer pool, so a thread keeps the loop free at the cost of one
  thread hop (see BENCHMARKS.md).

Each event loop gets its own ``redis.asyncio`` pool (``buffer.async_push``), kept by
the app's runtime; ``await aclose()`` in an ASGI lifespan shutdown closes the current
loop's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, overload

import redis

from ..buffer.accept_connections import AcceptAttempt, current_attempt
from ..buffer.async_push import serves_async, within
from ..buffer.connection import SENTINEL_SCHEME
from ..delivery.tracing import with_trace_context
from ..events.model import Event
from .producers import (
    Accepted,
    DistinctId,
    accept_batch,
    accept_one,
    async_event_call,
    event_of,
    naming_keys,
)
from .runtime import Runtime, runtime_of
from .settings import Settings

__all__ = ["abuffer_event", "abuffer_events", "aclose"]


async def _push(runtime: Runtime, accepted: Accepted) -> None:
    if accepted.records:
        with naming_keys(accepted.records):
            await _push_payloads(runtime, accepted.payloads)


async def _push_payloads(runtime: Runtime, payloads: list[bytes]) -> None:
    """Push on this loop's async client; a sharded, Sentinel or cluster buffer (whose
    failover, routing and ``WAIT`` live in the sync client) pushes in a thread.

    Until the sync buffer has had its first look at Redis (a cluster?), settings that
    name one plain server and one shard push on the async client at once; a cluster
    node answers MOVED if the slot is elsewhere, and the call then takes the thread.
    One ``AcceptAttempt`` bounds the whole call, the thread's push included (it runs
    under the attempt: ``current_attempt``), so the call ends within
    ``suprsend_accept_timeout`` even when the thread pool is busy.
    """
    payloads = with_trace_context(payloads)  # the caller's trace context, never sent
    attempt = AcceptAttempt(runtime.settings.accept_timeout)
    buffer = runtime.built_buffer
    if buffer is None and _one_server_by_settings(runtime.settings):
        try:
            await runtime.async_buffer().push(runtime.key_names(), payloads, attempt)
            return
        except redis.exceptions.AskError:  # and MovedError: a cluster after all
            pass
    if buffer is None:
        buffer = await within(attempt, asyncio.to_thread(runtime.buffer))
    if serves_async(buffer):
        await runtime.async_buffer().push(buffer, payloads, attempt)
        return
    token = current_attempt.set(attempt)  # the thread's context is copied from here
    try:
        await within(attempt, asyncio.to_thread(buffer.push, payloads))
    finally:
        current_attempt.reset(token)


def _one_server_by_settings(settings: Settings) -> bool:
    url = settings.require_redis_url()
    return (
        not url.startswith(SENTINEL_SCHEME)
        and settings.buffer_shards == 1
        and not settings.buffer_min_replicas
    )


@overload
async def abuffer_event(
    distinct_id: DistinctId,
    event_name: str,
    properties: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    tenant_id: str | None = None,
    brand_id: str | None = None,
    app: Any = None,
) -> str: ...
@overload
async def abuffer_event(event: Event, /, *, app: Any = None) -> str: ...
@async_event_call
async def abuffer_event(
    distinct_id: DistinctId | Event,
    event_name: str | None = None,
    properties: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    tenant_id: str | None = None,
    brand_id: str | None = None,
    app: Any = None,
) -> str:
    """``buffer_event`` for async code: same arguments, checks, bytes, errors and result."""
    runtime = runtime_of(app)
    settings = runtime.settings
    event = event_of(distinct_id, event_name, properties, idempotency_key, tenant_id, brand_id)
    accepted = accept_one(settings, event, built=event is not distinct_id)
    await _push(runtime, accepted)
    return accepted.keys[0]


async def abuffer_events(events: Iterable[Event], *, app: Any = None) -> list[str]:
    """``buffer_events`` for async code: all are buffered in one round trip, or none."""
    runtime = runtime_of(app)
    accepted = accept_batch(runtime.settings, events)
    await _push(runtime, accepted)
    return accepted.keys


async def aclose(app: Any = None) -> None:
    """Close the current event loop's Redis connections (e.g. in a lifespan shutdown)."""
    await runtime_of(app).aclose_loop()
