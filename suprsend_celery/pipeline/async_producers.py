"""Async producers for FastAPI, Starlette and async Django views; the event loop never blocks.

- ``await abuffer_event(...)`` / ``await abuffer_events(...)``: the buffered path on
  ``redis.asyncio``. Validation, record bytes, the push script, the bound and the
  errors are the sync calls' own (``accept_call``, ``PUSH_LUA``, ``BufferFullError``):
  only the round trip is awaited instead of waited for.
- ``await atrack_event(...)`` (in ``tasks.direct``): the direct path. The event is
  validated and serialised in the caller (bad input raises at once, nothing is
  published) and the publish runs
  in a worker thread (``asyncio.to_thread``). Celery has no asyncio publisher, and
  kombu's own async layer is a callback hub for the worker, not an asyncio client; a
  publish is a few broker round trips on kombu's thread-safe producer pool, so a
  thread keeps the loop free at the cost of one thread hop (see BENCHMARKS.md).

``redis.asyncio`` connections belong to the loop that opened them, so each event loop
gets its own pool (cached on the app per loop) of at most
``defaults.ASYNC_REDIS_CONNECTIONS``: more concurrent calls queue for a connection
rather than fail. ``await aclose()`` in an ASGI lifespan shutdown closes the current
loop's.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable
from typing import Any, TypeGuard

import redis
from redis.asyncio import BlockingConnectionPool
from redis.asyncio import Redis as AsyncRedis
from redis.sentinel import SentinelConnectionPool

from .. import defaults
from ..buffer import scripts as lua
from ..buffer.connection import SENTINEL_SCHEME
from ..buffer.eviction import full_error
from ..buffer.opening import open_buffer
from ..buffer.protocol import Buffer
from ..buffer.queue import check_push
from ..buffer.redis_buffer import RedisBuffer
from ..delivery.tracing import with_trace_context
from ..events.model import AcceptedRecord, Event
from ..exceptions import BufferUnavailableError
from .producers import accept_call, accept_events, naming_keys
from .runtime import buffer_config, built_buffer, get_buffer
from .settings import Settings, cached_on_app, get_settings, resolve_app

__all__ = ["abuffer_event", "abuffer_events", "aclose"]

_CACHE_ATTR = "_suprsend_async_buffers"
_TIMEOUTS = ("socket_timeout", "socket_connect_timeout", "health_check_interval")


class AsyncBuffer:
    """The producer side of ``RedisBuffer`` on ``redis.asyncio``: push only."""

    def __init__(self, buffer: RedisBuffer, client: AsyncRedis) -> None:
        self.buffer = buffer  # key names and bound, shared with the sync buffer
        self.redis = client
        self._push = client.register_script(lua.PUSH.source)

    async def push(self, records: list[bytes]) -> int:
        """Append records in one atomic step; ``BufferFullError`` (nothing added) if full,
        ``BufferUnavailableError`` if Redis fails or takes over ``accept_timeout``."""
        if not records:
            return 0
        timeout = self.buffer.accept_timeout
        try:
            return await asyncio.wait_for(self._checked_push(records), timeout)
        except (redis.exceptions.AskError, redis.exceptions.MovedError):
            raise  # a cluster after all: the caller takes the thread path
        except (redis.RedisError, OSError, asyncio.TimeoutError) as exc:
            raise BufferUnavailableError(
                f"the buffer's Redis failed ({type(exc).__name__}: {exc}) within "
                f"suprsend_accept_timeout={timeout:g}s; the event was not accepted"
            ) from exc

    async def _checked_push(self, records: list[bytes]) -> int:
        check = self.buffer.policy_check  # an evicting Redis is refused, as by the sync push
        if check.due():
            try:
                info = await self.redis.info("memory")
            except redis.exceptions.ResponseError:  # INFO denied by an ACL
                info = {}
            check.update(info)
        check.refuse()
        keys, args = lua.push_call(self.buffer.keys, self.buffer.max_length, records)
        try:
            result = await self._push(keys=keys, args=args)
        except redis.exceptions.OutOfMemoryError as exc:
            raise full_error(exc) from exc
        return check_push(result, self.buffer.max_length, len(records))


def _async_buffer(app: Any, buffer: RedisBuffer) -> AsyncBuffer:
    """This loop's async buffer for the app, built on first use with the sync one's options."""
    loop = asyncio.get_running_loop()
    per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncBuffer] = (
        app.__dict__.setdefault(_CACHE_ATTR, weakref.WeakKeyDictionary())
    )
    found = per_loop.get(loop)
    if found is None or found.buffer is not buffer:
        client = buffer.redis
        if not isinstance(client, redis.Redis):  # _push sends those through a thread
            raise TypeError("a Redis Cluster buffer has no redis.asyncio path")
        options = client.connection_pool.connection_kwargs
        pool = BlockingConnectionPool.from_url(
            get_settings(app).require_redis_url(),
            max_connections=defaults.ASYNC_REDIS_CONNECTIONS,
            timeout=options.get("socket_timeout"),
            **{name: options[name] for name in _TIMEOUTS if name in options},
        )
        found = per_loop[loop] = AsyncBuffer(buffer, AsyncRedis.from_pool(pool))
    return found


def _on_one_server(buffer: Buffer) -> TypeGuard[RedisBuffer]:
    """Whether a ``redis.asyncio`` push does what the sync one would: one server (no
    Sentinel, no cluster), one shard, no ``WAIT``."""
    return (
        type(buffer) is RedisBuffer
        and not buffer.min_replicas
        and isinstance(buffer.redis, redis.Redis)
        and not isinstance(buffer.redis.connection_pool, SentinelConnectionPool)
    )


async def _push(app: Any, records: list[AcceptedRecord]) -> None:
    with naming_keys(records):
        await _push_payloads(app, records)


async def _push_payloads(app: Any, records: list[AcceptedRecord]) -> None:
    """Push on this loop's async client; a sharded, Sentinel or cluster buffer (whose
    failover, routing and ``WAIT`` live in the sync client) pushes in a thread.

    Until the sync buffer has had its first look at Redis (a cluster?), settings that
    name one plain server and one shard push on the async client at once; a cluster
    node answers MOVED if the slot is elsewhere, and the call then takes the thread.
    """
    payloads = with_trace_context([r.payload for r in records])  # the caller's, never sent
    buffer = built_buffer(app)
    if buffer is None and _one_server_by_settings(get_settings(app)):
        try:
            await _async_buffer(app, _key_names(app)).push(payloads)
            return
        except redis.exceptions.AskError:  # and MovedError: a cluster after all
            pass
    if buffer is None:
        buffer = await asyncio.to_thread(get_buffer, app)
    if _on_one_server(buffer):
        await _async_buffer(app, buffer).push(payloads)
        return
    await asyncio.to_thread(buffer.push, payloads)


def _one_server_by_settings(settings: Settings) -> bool:
    url = settings.require_redis_url()
    return (
        not url.startswith(SENTINEL_SCHEME)
        and settings.buffer_shards == 1
        and not settings.buffer_min_replicas
    )


def _key_names(app: Any) -> RedisBuffer:
    """A buffer for its key names and bound only (no I/O): the async client does the I/O."""
    settings = get_settings(app)

    def build() -> RedisBuffer:
        buffer = open_buffer(buffer_config(settings), cluster=False, used={0})  # no I/O yet
        if not isinstance(buffer, RedisBuffer):  # one shard, by _one_server_by_settings
            raise TypeError("the async key names are those of one shard")
        return buffer

    return cached_on_app(app, "_suprsend_async_key_names", build)


async def abuffer_event(*args: Any, app: Any = None, **kwargs: Any) -> str:
    """``buffer_event`` for async code: same arguments, checks, bytes, errors and result."""
    app = resolve_app(app)
    record = accept_call(app, args, kwargs)
    if isinstance(record, AcceptedRecord):
        await _push(app, [record])
    return record.idempotency_key


async def abuffer_events(events: Iterable[Event], *, app: Any = None) -> list[str]:
    """``buffer_events`` for async code: all are buffered in one round trip, or none."""
    app = resolve_app(app)
    records = accept_events(app, events)
    accepted = [r for r in records if isinstance(r, AcceptedRecord)]
    if accepted:
        await _push(app, accepted)
    return [r.idempotency_key for r in records]


async def aclose(app: Any = None) -> None:
    """Close the current event loop's Redis connections (e.g. in a lifespan shutdown)."""
    app = resolve_app(app)
    per_loop = app.__dict__.get(_CACHE_ATTR)
    if per_loop is not None:
        found = per_loop.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found.redis.aclose()
