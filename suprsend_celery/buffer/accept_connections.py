"""The producers' fast path: connections of their own to the server that holds one slot.

``buffer_event`` runs in the caller's request, where redis-py's per-command machinery
(pool checkout, retry and observability wrappers) costs about as much as the round trip
itself, so ``ProducerConnections.call`` sends a script on a connection it keeps for
itself: to the server, to Sentinel's current master (a Sentinel connection asks the
sentinels when it connects), or to the cluster node that owns the slot.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from .. import defaults
from ..exceptions import BufferUnavailableError
from .eviction import full_error
from .scripts import Call

__all__ = ["ProducerConnections"]


#: A cluster node answering for a slot it no longer owns (resharding, a failover):
#: ``MovedError`` and ``AskError``. A demoted Sentinel master's ``READONLY`` becomes a
#: ``ConnectionError`` in redis-py's Sentinel connection (it reconnects to the new one).
_MOVED = (redis.exceptions.AskError, redis.exceptions.ReadOnlyError)

#: Failures after which a stale idempotent connection gets one try on a fresh one.
_RETRY_FRESH = (redis.ConnectionError, redis.TimeoutError, OSError, *_MOVED)

#: Seconds between two refreshes of a cluster's slot map after failed calls.
SLOTS_REFRESH_INTERVAL = 0.5


def _eval(
    conn: Any, script: Script, keys: Sequence[Any], args: Sequence[Any], wait: list[Any]
) -> tuple[Any, int]:
    """EVALSHA on one connection, then ``wait`` (a ``WAIT`` command) in the same round
    trip when given; EVAL (which caches the script again) if Redis lost it. Returns the script's
    reply and how many replicas confirmed."""
    for command, body in (("EVALSHA", script.sha), ("EVAL", script.script)):
        conn.send_packed_command(
            conn.pack_commands([(command, body, len(keys), *keys, *args), *wait])
        )
        try:
            result = conn.read_response()
        except redis.exceptions.NoScriptError:
            if wait:
                conn.read_response()  # WAIT's reply, so the connection stays in step
            if command == "EVAL":
                raise
            continue
        return result, int(conn.read_response()) if wait else 0
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
        #: How long a push waits for replicas: less than a read may take (half the bound).
        self.wait_seconds = accept_timeout * defaults.MIN_REPLICAS_WAIT_SHARE
        self._idle: deque[Any] = deque()
        self._idle_pid = os.getpid()
        self._refreshing = threading.Lock()
        self._refreshed = 0.0

    def call(self, script: Script, call: Call, *, replicas: int = 0) -> tuple[Any, int]:
        """Run a script on a connection of our own, bounded in time.

        Idle connections are dropped on any error. An idle connection that fails
        (stale after a Redis restart or a failover, or on a node that no longer owns
        the slot) gets one more try on a fresh one; a fresh one connects and reads
        within half of ``accept_timeout`` each, so a call ends within about
        ``accept_timeout`` and a view never hangs. Any Redis failure raises
        ``BufferUnavailableError`` with the cause chained. A try whose reply was lost
        may still have appended its records; the copy carries the same idempotency key
        and SuprSend skips it. Returns the script's reply and the replicas that
        confirmed it (``WAIT``, when ``replicas`` asks for some).
        """
        keys, args = call
        wait = [("WAIT", replicas, int(self.wait_seconds * 1000))] if replicas else []
        result: tuple[Any, int] = self.run(lambda conn: _eval(conn, script, keys, args, wait))
        return result

    def run(self, command: Callable[[Any], Any]) -> Any:
        """``command(connection)`` on one of our connections, bounded as ``call`` says;
        ``BufferFullError`` (cause chained) when Redis is at its maxmemory."""
        if self._idle_pid != os.getpid():
            self._idle, self._idle_pid = deque(), os.getpid()
            self._refreshing = threading.Lock()  # a refresh thread did not come along
        try:
            conn, fresh = self._idle.pop(), False
        except IndexError:
            conn, fresh = self._connection(), True
        while True:
            try:
                if fresh:
                    # connect() itself: a Sentinel connection asks the sentinels for the
                    # master there (sending on an unconnected one would not).
                    conn.connect()
                reply = command(conn)
            except _RETRY_FRESH as exc:
                conn.disconnect()
                if isinstance(exc, _MOVED) and isinstance(self.redis, redis.RedisCluster):
                    self.redis.nodes_manager.initialize()  # learn who owns the slot now
                if not fresh:
                    conn, fresh = self._connection(), True
                    continue
                self._refresh_slots()
                raise self._unavailable(exc) from exc
            except redis.exceptions.OutOfMemoryError as exc:
                conn.disconnect()
                raise full_error(exc) from exc
            except redis.RedisError as exc:
                conn.disconnect()  # a reply may still be on its way: never reuse it
                raise self._unavailable(exc) from exc
            except BaseException:
                conn.disconnect()
                raise
            self._idle.append(conn)
            return reply

    def close(self) -> None:
        """Disconnect the idle connections (a later call opens a fresh one). One in use
        by another thread meanwhile returns to the idle set after its call. In a forked
        child this closes the parent's sockets' copies only (redis-py shuts a socket
        down only in the process that opened it)."""
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:  # none left (another thread may have taken the last)
                return
            conn.disconnect()

    def _refresh_slots(self) -> None:
        """On a cluster, learn the slot's owner again in a thread of its own: a replica
        promoted in place of a dead master is news only a cluster command would bring,
        and a process that only produces sends none. In the background, so the call
        keeps its bound; one at a time, at most once per ``SLOTS_REFRESH_INTERVAL``."""
        if not isinstance(self.redis, redis.RedisCluster):
            return
        if time.monotonic() - self._refreshed < SLOTS_REFRESH_INTERVAL:
            return
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

    def _connection(self) -> Any:
        pool = self.node_client().connection_pool
        half = self.accept_timeout / 2
        options = {**pool.connection_kwargs, "socket_timeout": half}
        options["socket_connect_timeout"] = half
        options["retry"] = Retry(NoBackoff(), 0)  # not Sentinel's 15 s: the bound is ours
        return pool.connection_class(**options)

    def _unavailable(self, exc: Exception) -> BufferUnavailableError:
        return BufferUnavailableError(
            f"the buffer's Redis failed ({type(exc).__name__}: {exc}) within "
            f"suprsend_accept_timeout={self.accept_timeout:g}s; the event was not accepted"
        )
