"""The producers' fast path: connections of their own to the server that holds one slot.

``buffer_event`` runs in the caller's request, where redis-py's per-command machinery
(pool checkout, retry and observability wrappers) costs about as much as the round trip
itself, so ``ProducerConnections.call`` sends a script on a connection it keeps for
itself: to the server, to Sentinel's current master (a Sentinel connection asks the
sentinels when it connects), or to the cluster node that owns the slot.

Each call is an ``AcceptAttempt``: one deadline (``suprsend_accept_timeout``) for all
its round trips, and a record of whether a request that stores records went out
without its answer. That record is what an accept error's ``accepted`` reports:
``False`` only when no such request was written (a refused or failed connect, a
policy reading that failed first), ``None`` when one was written and its answer never
came (Redis may run it when it resumes). The async push (``async_push``) shares it,
also across the thread a sharded, Sentinel or cluster push from async code runs in
(``current_attempt``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from .. import defaults
from ..exceptions import Accepted, BufferUnavailableError
from .eviction import full_error
from .lean_eval import IdleConnections, pack_commands
from .scripts import Call

__all__ = ["AcceptAttempt", "ProducerConnections", "current_attempt"]


#: A cluster node answering for a slot it no longer owns (resharding, a failover):
#: ``MovedError`` and ``AskError``. A demoted Sentinel master's ``READONLY`` becomes a
#: ``ConnectionError`` in redis-py's Sentinel connection (it reconnects to the new one).
_MOVED = (redis.exceptions.AskError, redis.exceptions.ReadOnlyError)

#: Failures after which a stale idempotent connection gets one try on a fresh one.
_RETRY_FRESH = (redis.ConnectionError, redis.TimeoutError, OSError, *_MOVED)

#: Seconds between two refreshes of a cluster's slot map after failed calls.
SLOTS_REFRESH_INTERVAL = 0.5

#: The shortest read timeout a call gives a round trip (a socket timeout of 0 would
#: make it non-blocking).
_MIN_WAIT = 0.001


class AcceptAttempt:
    """One accept call: its deadline, and whether a request that stores records went
    out without its answer. Thread-safe: the async push may give up on a call (``abandon``)
    while a thread still runs it, and from then on nothing more is sent."""

    __slots__ = ("_abandoned", "_lock", "_maybe_ran", "_unanswered", "deadline", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._unanswered = False  # the request in flight was written, its answer not read
        self._maybe_ran = False  # an earlier try's request was written and never answered
        self._abandoned = False

    def left(self) -> float:
        """Seconds until the deadline (negative once it passed)."""
        return self.deadline - time.monotonic()

    def wait(self) -> float:
        """A read timeout that ends at the deadline."""
        return max(self.left(), _MIN_WAIT)

    def sending(self) -> None:
        """Note that a request that stores records is about to be written; a
        ``redis.TimeoutError`` instead (nothing written) once the deadline passed or the
        caller gave up. Called right before the write, with no I/O in between."""
        with self._lock:
            if self._abandoned or self.left() <= 0:
                raise redis.exceptions.TimeoutError(
                    f"no time left of suprsend_accept_timeout={self.seconds:g}s to send"
                )
            self._unanswered = True

    def answered(self) -> None:
        """Redis answered the request written last (a reply or an error reply)."""
        with self._lock:
            self._unanswered = False

    @property
    def unanswered(self) -> bool:
        return self._unanswered

    def next_try(self) -> None:
        """The try ended in a failure: a request it left unanswered may still run."""
        with self._lock:
            self._maybe_ran = self._maybe_ran or self._unanswered
            self._unanswered = False

    def accepted(self) -> Accepted:
        """``False`` when no request that stores records went out unanswered, else
        ``None`` (the caller knows when one was answered with success)."""
        with self._lock:
            return None if self._unanswered or self._maybe_ran else False

    def abandon(self) -> Accepted:
        """The caller gives up: nothing more is sent; returns ``accepted()`` as of now."""
        with self._lock:
            self._abandoned = True
            return None if self._unanswered or self._maybe_ran else False


#: The attempt an accept call runs under, when the caller made one (the async
#: producers, across ``asyncio.to_thread``); else each call makes its own.
current_attempt: ContextVar[AcceptAttempt | None] = ContextVar(
    "suprsend_accept_attempt", default=None
)


def _read(conn: Any, attempt: AcceptAttempt) -> Any:
    """One reply, by the attempt's deadline: the connection's own socket timeout when
    that ends sooner (no timeout to set and restore: the common case, a few µs)."""
    wait = attempt.wait()
    if conn.socket_timeout is not None and conn.socket_timeout <= wait:
        return conn.read_response()
    return conn.read_response(timeout=wait)


def _eval(
    conn: Any,
    script: Script,
    keys: Sequence[Any],
    args: Sequence[Any],
    wait: list[Any],
    attempt: AcceptAttempt,
) -> tuple[Any, int]:
    """EVALSHA on one connection, then ``wait`` (a ``WAIT`` command) in the same round
    trip when given; EVAL (which caches the script again) if Redis lost it. Returns the script's
    reply and how many replicas confirmed: 0 when the connection failed after the
    script's reply (the records are stored; the replicas' answer was lost)."""
    conn.check_health()  # a due PING goes before the request, so it is not counted as sent
    for command, body in (("EVALSHA", script.sha), ("EVAL", script.script)):
        packed = pack_commands(conn, [(command, body, len(keys), *keys, *args), *wait])
        attempt.sending()
        conn.send_packed_command(packed, check_health=False)
        try:
            result = _read(conn, attempt)
        except redis.exceptions.ResponseError as exc:
            attempt.answered()  # an error reply: the script did not run
            if command == "EVAL" or not isinstance(exc, redis.exceptions.NoScriptError):
                raise  # the connection is dropped (WAIT's reply unread)
            if wait:
                _read(conn, attempt)  # WAIT's, to stay in step
            continue
        attempt.answered()
        if not wait:
            return result, 0
        try:
            return result, int(_read(conn, attempt))
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()  # its WAIT reply may still come: never reuse it
            return result, 0
    raise AssertionError("unreachable")


class ProducerConnections:
    """Idle connections (a deque: thread-safe pop/append, rebuilt after a fork) to the
    server, or the cluster node, that holds ``key``'s slot."""

    def __init__(
        self, client: redis.Redis | redis.RedisCluster, key: str, accept_timeout: float
    ) -> None:
        self.redis = client
        self.key = key
        self.accept_timeout = accept_timeout
        #: How long a push waits for replicas: a share of the bound, so the answer comes in it.
        self.wait_seconds = accept_timeout * defaults.MIN_REPLICAS_WAIT_SHARE
        self._idle = IdleConnections()
        self._refreshing = threading.Lock()
        self._refreshing_pid = os.getpid()
        self._refreshed = 0.0

    def attempt(self) -> AcceptAttempt:
        """The attempt a call runs under: the caller's (``current_attempt``), else a new
        one of ``accept_timeout``. One attempt bounds every round trip of a push (the
        policy reading and the push itself)."""
        return current_attempt.get() or AcceptAttempt(self.accept_timeout)

    def call(
        self,
        script: Script,
        call: Call,
        *,
        replicas: int = 0,
        attempt: AcceptAttempt | None = None,
    ) -> tuple[Any, int]:
        """Run a script that stores records on a connection of our own, bounded in time.

        Every round trip ends by the attempt's deadline (``accept_timeout`` from its
        start), so a view never hangs. Idle connections are dropped on any error. An
        idle connection that fails (stale after a Redis restart or a failover, or on a
        node that no longer owns the slot) gets one more try on a fresh one while time
        is left; not after a timeout with the script written (Redis is slow or frozen:
        a second copy would only queue behind the first). Any Redis failure raises
        ``BufferUnavailableError`` with the cause chained and ``accepted`` set from the
        attempt (``None`` when a written script was never answered: Redis may still run
        it). Returns the script's reply and the replicas that confirmed it (``WAIT``,
        when ``replicas`` asks for some).
        """
        keys, args = call
        wait = [("WAIT", replicas, int(self.wait_seconds * 1000))] if replicas else []
        attempt = attempt or self.attempt()
        result: tuple[Any, int] = self.run(
            lambda conn: _eval(conn, script, keys, args, wait, attempt), attempt
        )
        return result

    def run(self, command: Callable[[Any], Any], attempt: AcceptAttempt | None = None) -> Any:
        """``command(connection)`` on one of our connections, bounded as ``call`` says;
        ``BufferFullError`` (cause chained) when Redis is at its maxmemory. A command that
        stores records notes its write on ``attempt`` (``AcceptAttempt.sending``)."""
        attempt = attempt or self.attempt()
        conn = self._idle.take()
        fresh = conn is None
        if conn is None:
            conn = self._connection(attempt)
        while True:
            try:
                # connect() itself, before anything is noted as sent: a Sentinel connection
                # asks the sentinels for the master there (sending on an unconnected one
                # would not); an idle one still connected returns at once.
                conn.connect()
                reply = command(conn)
            except _RETRY_FRESH as exc:
                conn.disconnect()
                if isinstance(exc, _MOVED) and isinstance(self.redis, redis.RedisCluster):
                    self.redis.nodes_manager.initialize()  # learn who owns the slot now
                frozen = attempt.unanswered and isinstance(exc, redis.TimeoutError)
                attempt.next_try()
                if not fresh and not frozen and attempt.left() > 0:
                    conn, fresh = self._connection(attempt), True
                    continue
                self._refresh_slots()
                raise self._unavailable(exc, attempt) from exc
            except redis.exceptions.OutOfMemoryError as exc:
                conn.disconnect()
                raise full_error(exc) from exc
            except redis.RedisError as exc:
                conn.disconnect()  # a reply may still be on its way: never reuse it
                attempt.next_try()
                raise self._unavailable(exc, attempt) from exc
            except BaseException:
                conn.disconnect()
                raise
            self._idle.checkin(conn)
            return reply

    def close(self) -> None:
        """Disconnect the idle connections (a later call opens a fresh one). One in use
        by another thread meanwhile returns to the idle set after its call. In a forked
        child this closes the parent's sockets' copies only (redis-py shuts a socket
        down only in the process that opened it)."""
        self._idle.close()

    def _refresh_slots(self) -> None:
        """On a cluster, learn the slot's owner again in a thread of its own: a replica
        promoted in place of a dead master is news only a cluster command would bring,
        and a process that only produces sends none. In the background, so the call
        keeps its bound; one at a time, at most once per ``SLOTS_REFRESH_INTERVAL``."""
        if not isinstance(self.redis, redis.RedisCluster):
            return
        if time.monotonic() - self._refreshed < SLOTS_REFRESH_INTERVAL:
            return
        if self._refreshing_pid != os.getpid():  # a forked child: no refresh thread came along
            self._refreshing, self._refreshing_pid = threading.Lock(), os.getpid()
        if not self._refreshing.acquire(blocking=False):
            return
        self._refreshed = time.monotonic()
        nodes, done = self.redis.nodes_manager, self._refreshing

        def refresh() -> None:
            try:
                nodes.initialize()
            except (redis.RedisError, redis.exceptions.RedisClusterException, OSError):
                pass  # no node answered: the next failed call tries again
            finally:
                done.release()

        threading.Thread(target=refresh, name="suprsend-cluster-slots", daemon=True).start()

    def node_client(self) -> Any:
        """The client for this slot: the client itself, or a cluster node's (a cluster
        client refuses pipelines of scripts and keyless commands such as TIME; all our
        keys are in one slot, so its node takes them all)."""
        if isinstance(self.redis, redis.RedisCluster):
            node = self.redis.get_node_from_key(self.key)  # type: ignore[no-untyped-call]
            return node.redis_connection
        return self.redis

    def _connection(self, attempt: AcceptAttempt) -> Any:
        """A new connection whose connect and handshake end by the attempt's deadline
        (its later reads are each given the time their own attempt has left)."""
        pool = self.node_client().connection_pool
        left = attempt.wait()
        options = {**pool.connection_kwargs, "socket_timeout": left}
        options["socket_connect_timeout"] = left
        options["retry"] = Retry(NoBackoff(), 0)  # not Sentinel's 15 s: the bound is ours
        return pool.connection_class(**options)

    def _unavailable(self, exc: Exception, attempt: AcceptAttempt) -> BufferUnavailableError:
        return BufferUnavailableError.because(
            f"the buffer's Redis failed ({type(exc).__name__}: {exc}) within "
            f"suprsend_accept_timeout={self.accept_timeout:g}s",
            accepted=attempt.accepted(),
        )
