"""The producers' push on ``redis.asyncio``: the event loop never blocks on Redis.

The push is the sync one's (``PushPlan``: the policy reading, the push script, the
bound, the errors); only the round trips are awaited. It serves a buffer on one server
(``serves_async``); a sharded, Sentinel or cluster buffer, whose failover, routing and
``WAIT`` live in the sync client, pushes in a thread instead (the producers decide),
bounded the same way (``within``).

``redis.asyncio`` connections belong to the loop that opened them, so each event loop
has its own ``AsyncBuffer`` with a pool of at most ``defaults.ASYNC_REDIS_CONNECTIONS``:
more concurrent calls queue for a connection rather than fail.

The bound. A push runs in the caller's own task under ``asyncio.timeout`` until the
attempt's deadline (``suprsend_accept_timeout``). Its connections have no socket
timeout, so redis-py awaits its writes directly: with one, it writes under
``asyncio.wait_for``, which on Python 3.11 returns the inner result when a cancel and
the inner's completion meet (CPython gh-86296), and a push cancelled at the deadline
just as its write completed carried on and succeeded late (3.08 s against a 2 s bound);
it also cost a task and two turns of the loop per push. The cancel now reaches the
push wherever it waits, and the push leaves at once: a connection it held is closed
and returned to the pool in the background (the pool's lock is shared with every
waiting caller), so a call ends at its deadline plus the event loop's own lag. A push
given up on sends nothing more (``AcceptAttempt.abandon``), so an error's ``accepted``
stays true.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, TypeGuard, TypeVar

import redis
from redis.asyncio import BlockingConnectionPool
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.sentinel import SentinelConnectionPool

from .. import defaults
from ..exceptions import BufferUnavailableError
from . import scripts as lua
from .accept_connections import AcceptAttempt
from .eviction import describe_redis, full_error, parse_memory_info
from .lean_eval import pack_command
from .protocol import Buffer
from .push_plan import PushPlan
from .redis_buffer import RedisBuffer

__all__ = ["AsyncBuffer", "serves_async", "within"]

_T = TypeVar("_T")

#: The sync client's option the async pool copies (dead connections noticed).
_HEALTH = "health_check_interval"

#: Errors of a push that the caller reports as ``BufferUnavailableError``.
_UNAVAILABLE = (redis.RedisError, OSError)
#: ... except these, raised as they are (the caller pushes through the sync client).
_PASS = (redis.exceptions.AskError, redis.exceptions.MovedError, BufferUnavailableError)


def serves_async(buffer: Buffer) -> TypeGuard[RedisBuffer]:
    """Whether a ``redis.asyncio`` push does what ``buffer.push`` would: one server (no
    Sentinel, no cluster), one shard, no ``WAIT``."""
    return (
        type(buffer) is RedisBuffer
        and not buffer.min_replicas
        and isinstance(buffer.redis, redis.Redis)
        and not isinstance(buffer.redis.connection_pool, SentinelConnectionPool)
    )


async def within(attempt: AcceptAttempt, work: Awaitable[_T]) -> _T:
    """``await work`` until ``attempt``'s deadline (``asyncio.timeout``, in the caller's
    own task: no task of its own, no turn of the loop more), then
    ``BufferUnavailableError`` with ``accepted`` as of that moment (see the module
    docstring). A Redis failure inside it becomes ``BufferUnavailableError`` too; other
    errors (``BufferFullError``, a cluster's MOVED, ``ConfigurationError``) pass as they
    are. A caller cancelled meanwhile cancels the work (nothing more is sent)."""
    deadline = asyncio.timeout(max(attempt.left(), 0.0))
    try:
        async with deadline:
            return await work
    except BaseException as exc:
        if deadline.expired():
            accepted = attempt.abandon()
            late = TimeoutError(f"no answer within {attempt.seconds:g}s")
            raise _unavailable(late, attempt, accepted) from late
        if isinstance(exc, asyncio.CancelledError):
            attempt.abandon()
            raise
        if isinstance(exc, _PASS) or not isinstance(exc, _UNAVAILABLE):
            raise
        raise _unavailable(exc, attempt, attempt.accepted()) from exc


def _unavailable(
    exc: BaseException, attempt: AcceptAttempt, accepted: bool | None
) -> BufferUnavailableError:
    return BufferUnavailableError.because(
        f"the buffer's Redis failed ({type(exc).__name__}: {exc}) within "
        f"suprsend_accept_timeout={attempt.seconds:g}s",
        accepted=accepted,
    )


class AsyncBuffer:
    """One event loop's ``redis.asyncio`` client for pushes into one-server buffers."""

    def __init__(self, client: AsyncRedis) -> None:
        self.redis = client
        self._push = client.register_script(lua.PUSH.source)  # its sha and body

    @classmethod
    def open(cls, url: str, like: RedisBuffer) -> AsyncBuffer:
        """A client for ``url`` (no I/O yet) whose every wait ends within ``like``'s
        ``accept_timeout``: for a connection from the pool, a connect, a read. Its
        connections serve pushes only, so they need no longer; a push given up on
        holds one at most that long."""
        if not isinstance(like.redis, redis.Redis):
            raise TypeError("a Redis Cluster buffer has no redis.asyncio path")
        options = like.redis.connection_pool.connection_kwargs
        bound = like.accept_timeout
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=defaults.ASYNC_REDIS_CONNECTIONS,
            timeout=bound,
            # No read or write timeout: ``within`` bounds every push, and redis-py
            # writes under ``asyncio.wait_for`` when one is set (a task per write, and
            # on Python 3.11 a cancel it may swallow: CPython gh-86296).
            socket_timeout=None,
            socket_connect_timeout=bound,
            retry=Retry(NoBackoff(), 0),  # one try: the bound is the caller's
            **({_HEALTH: options[_HEALTH]} if _HEALTH in options else {}),
        )
        return cls(AsyncRedis.from_pool(pool))

    async def push(
        self,
        buffer: RedisBuffer,
        records: Sequence[bytes],
        attempt: AcceptAttempt | None = None,
    ) -> int:
        """``buffer.push(records)`` on this loop: ``BufferFullError`` (nothing added) if
        full, ``BufferUnavailableError`` if Redis fails or takes over ``accept_timeout``
        (``accepted`` says whether the records may be stored all the same),
        ``ConfigurationError`` for an evicting Redis. A cluster node's MOVED or ASK
        (``AskError``) is raised as is: the caller pushes through the sync client.
        ``attempt``: the caller's, when the push is one step of its call."""
        if not records:
            return 0
        attempt = attempt or AcceptAttempt(buffer.accept_timeout)
        return await within(attempt, self._run(buffer, records, attempt))

    async def _run(
        self, buffer: RedisBuffer, records: Sequence[bytes], attempt: AcceptAttempt
    ) -> int:
        """The sync push's plan (``Queue.push``), its round trips on one connection of
        this loop's pool, awaited here."""
        plan = PushPlan(buffer.queue, records)
        pool = self.redis.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            if plan.reading_due():
                plan.take_reading(describe_redis(buffer.redis), await _memory_info(conn))
            keys, args = plan.call()
            try:
                reply = await _eval(conn, self._push, keys, args, attempt)
            except redis.exceptions.OutOfMemoryError as exc:
                raise full_error(exc) from exc
        except BaseException:
            _discard(pool, conn)  # a reply may still be on its way: never reuse it
            raise
        await pool.release(conn)
        return plan.pushed(reply)

    async def aclose(self) -> None:
        """Close this client's connections (its pool is its own)."""
        await self.redis.aclose()


#: Connections being closed and returned after a failed or cancelled push.
_DISCARDING: set[asyncio.Task[None]] = set()


def _discard(pool: Any, conn: Any) -> None:
    """Close ``conn`` and return it to ``pool`` in the background: the push that held
    it leaves now, whatever the pool's lock is doing."""

    async def discard() -> None:
        try:
            await conn.disconnect(nowait=True)
        finally:
            await pool.release(conn)

    task = asyncio.ensure_future(discard())
    _DISCARDING.add(task)
    task.add_done_callback(_DISCARDING.discard)


async def _memory_info(conn: Any) -> dict[str, Any]:
    """``INFO memory`` on one connection (empty when an ACL denies it)."""
    await conn.send_command("INFO", "memory")
    try:
        reply = await conn.read_response()
    except redis.exceptions.ResponseError:
        return {}
    return parse_memory_info(reply)


async def _eval(
    conn: Any, script: Any, keys: Sequence[Any], args: Sequence[Any], attempt: AcceptAttempt
) -> Any:
    """The push script on one connection: EVALSHA, or EVAL (caching it again) when Redis
    lost it. The write is noted on ``attempt`` right before it is made (a due health
    check goes first, so it is not counted), and refused once the caller gave up."""
    await conn.check_health()
    for command, body in (("EVALSHA", script.sha), ("EVAL", script.script)):
        packed = pack_command(conn, (command, body, len(keys), *keys, *args))
        attempt.sending()
        await conn.send_packed_command(packed, check_health=False)
        try:
            reply = await conn.read_response()
        except redis.exceptions.ResponseError as exc:
            attempt.answered()  # an error reply: the script did not run
            if command == "EVAL" or not isinstance(exc, redis.exceptions.NoScriptError):
                raise
            continue
        attempt.answered()
        return reply
    raise AssertionError("unreachable")
