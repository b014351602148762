"""The producers' push on ``redis.asyncio``: the event loop never blocks on Redis.

The push is the sync one's (``PushPlan``: the policy reading, the push script, the
bound, the errors); only the round trips are awaited. It serves a buffer on one server
(``serves_async``); a sharded, Sentinel or cluster buffer, whose failover, routing and
``WAIT`` live in the sync client, pushes in a thread instead (the producers decide).

``redis.asyncio`` connections belong to the loop that opened them, so each event loop
has its own ``AsyncBuffer`` with a pool of at most ``defaults.ASYNC_REDIS_CONNECTIONS``:
more concurrent calls queue for a connection rather than fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, TypeGuard

import redis
from redis.asyncio import BlockingConnectionPool
from redis.asyncio import Redis as AsyncRedis
from redis.sentinel import SentinelConnectionPool

from .. import defaults
from ..exceptions import BufferUnavailableError
from . import scripts as lua
from .eviction import describe_redis, full_error
from .protocol import Buffer
from .push_plan import PushPlan
from .redis_buffer import RedisBuffer

__all__ = ["AsyncBuffer", "serves_async"]

#: The sync client's options the async pool copies (bounded calls, dead connections noticed).
_TIMEOUTS = ("socket_timeout", "socket_connect_timeout", "health_check_interval")


def serves_async(buffer: Buffer) -> TypeGuard[RedisBuffer]:
    """Whether a ``redis.asyncio`` push does what ``buffer.push`` would: one server (no
    Sentinel, no cluster), one shard, no ``WAIT``."""
    return (
        type(buffer) is RedisBuffer
        and not buffer.min_replicas
        and isinstance(buffer.redis, redis.Redis)
        and not isinstance(buffer.redis.connection_pool, SentinelConnectionPool)
    )


class AsyncBuffer:
    """One event loop's ``redis.asyncio`` client for pushes into one-server buffers."""

    def __init__(self, client: AsyncRedis) -> None:
        self.redis = client
        self._push = client.register_script(lua.PUSH.source)

    @classmethod
    def open(cls, url: str, like: RedisBuffer) -> AsyncBuffer:
        """A client for ``url`` with the timeouts of ``like``'s sync client (no I/O yet)."""
        if not isinstance(like.redis, redis.Redis):
            raise TypeError("a Redis Cluster buffer has no redis.asyncio path")
        options = like.redis.connection_pool.connection_kwargs
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=defaults.ASYNC_REDIS_CONNECTIONS,
            timeout=options.get("socket_timeout"),
            **{name: options[name] for name in _TIMEOUTS if name in options},
        )
        return cls(AsyncRedis.from_pool(pool))

    async def push(self, buffer: RedisBuffer, records: Sequence[bytes]) -> int:
        """``buffer.push(records)`` on this loop: ``BufferFullError`` (nothing added) if
        full, ``BufferUnavailableError`` if Redis fails or takes over ``accept_timeout``,
        ``ConfigurationError`` for an evicting Redis. A cluster node's MOVED or ASK
        (``AskError``) is raised as is: the caller pushes through the sync client."""
        if not records:
            return 0
        timeout = buffer.accept_timeout
        try:
            return await asyncio.wait_for(self._run(buffer, records), timeout)
        except (redis.exceptions.AskError, redis.exceptions.MovedError):
            raise
        except (redis.RedisError, OSError, asyncio.TimeoutError) as exc:
            raise BufferUnavailableError(
                f"the buffer's Redis failed ({type(exc).__name__}: {exc}) within "
                f"suprsend_accept_timeout={timeout:g}s; the event was not accepted"
            ) from exc

    async def _run(self, buffer: RedisBuffer, records: Sequence[bytes]) -> int:
        """The sync push's plan (``Queue.push``), its round trips awaited here."""
        plan = PushPlan(buffer.queue, records)
        if plan.reading_due():
            plan.take_reading(describe_redis(buffer.redis), await self._memory_info())
        keys, args = plan.call()
        try:
            reply = await self._push(keys=keys, args=args)
        except redis.exceptions.OutOfMemoryError as exc:
            raise full_error(exc) from exc
        return plan.pushed(reply)

    async def _memory_info(self) -> dict[str, Any]:
        """``INFO memory`` on this loop (empty when an ACL denies it)."""
        try:
            info: dict[str, Any] = await self.redis.info("memory")
        except redis.exceptions.ResponseError:
            return {}
        return info

    async def aclose(self) -> None:
        """Close this client's connections (its pool is its own)."""
        await self.redis.aclose()
