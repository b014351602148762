"""EVALSHA without redis-py's per-command layers, for the scripts run per batch.

A flusher runs two scripts per 100 records (CLAIM and SETTLE). Through
``Script.__call__`` each goes through ``execute_command``'s pool checkout (which polls
the socket), its retry and observability wrappers and redis-py's Python packer:
measured on a 2-core VM, 106 µs of CPU for a claim of 100 records and 114 µs for a
settle's 25 arguments, against 56 and 39 µs for the same EVALSHA on a pool connection
with redis-py's public connection API (``send_packed_command``, ``read_response``),
less again on connections kept idle between calls (``ScriptConnections``). Packed by
hiredis when it is installed (the ``hiredis`` extra), under the connection's own
``Retry`` (none for one server; Sentinel's failover retry); EVAL when Redis lost the
script (a restart or ``SCRIPT FLUSH``), as ``Script`` does. A cluster client keeps
redis-py's ``Script``: its node routing is the client's job.

Not seen by instrumentation that wraps ``Redis.execute_command`` (redis-py's own
metrics, OpenTelemetry's redis instrumentation): the flush run's spans say what ran.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import redis

__all__ = [
    "IdleConnections",
    "LeanScript",
    "ScriptConnections",
    "pack_command",
    "pack_commands",
]

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:  # the hiredis extra: 0.8 µs for a push's EVALSHA against redis-py's 6.2
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - exercised where hiredis is not installed
    _hiredis_pack = None


def pack_command(conn: Any, command: tuple[Any, ...]) -> list[bytes]:
    """``command`` as the bytes ``send_packed_command`` takes: hiredis's packer when
    installed (same bytes as redis-py's: floats as ``repr``, text as UTF-8), else the
    connection's own."""
    if _hiredis_pack is not None:
        return [_hiredis_pack(command)]
    packed: list[bytes] = conn.pack_command(*command)
    return packed


def pack_commands(conn: Any, commands: Sequence[tuple[Any, ...]]) -> list[bytes]:
    """Several commands for one write (a pipeline without MULTI), packed as
    ``pack_command`` packs one."""
    if _hiredis_pack is not None:
        return [b"".join([_hiredis_pack(command) for command in commands])]
    packed: list[bytes] = conn.pack_commands(commands)
    return packed


class IdleConnections:
    """Connections kept between calls: a deque (thread-safe pop and append, so as many
    as calls run at once), emptied in a forked child, which opens its own sockets. The
    producers' connections (``accept_connections``) and the scripts' keep theirs here."""

    def __init__(self) -> None:
        self._idle: deque[Any] = deque()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._idle)

    def take(self) -> Any | None:
        """The connection checked in last (its socket the warmest), or None when none is."""
        if self._pid != os.getpid():
            self._idle, self._pid = deque(), os.getpid()
            return None
        try:
            return self._idle.pop()
        except IndexError:
            return None

    def checkin(self, conn: Any) -> None:
        """Keep ``conn`` for the next call (it is connected and in step)."""
        self._idle.append(conn)

    def close(self) -> None:
        """Disconnect the idle connections (one in use returns after its call)."""
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return
            conn.disconnect()


class ScriptConnections(IdleConnections):
    """The connections a slot's ``LeanScript``s run on: the client's connection class and
    options (timeouts, Sentinel's master lookup, TLS).

    Not the client's pool: its checkout polls the socket for stale data before every
    command and its release takes a lock, a fifth of a claim's CPU. A connection that
    went stale while idle (Redis restarted, an idle timeout) fails at once, before the
    script could run, and the call gets one more try on a fresh connection."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__()
        self.client = client

    def checkout(self) -> tuple[Any, bool]:
        """An idle connection, or a new one: ``(connection, whether it is new)``."""
        conn = self.take()
        return (self.new(), True) if conn is None else (conn, False)

    def new(self) -> Any:
        """A new connection, made as the client's pool makes one (connected on first use)."""
        pool = self.client.connection_pool
        return pool.connection_class(**pool.connection_kwargs)


#: How an idle connection that went stale fails (a timeout is not one: the script
#: may have run, so it is never sent again).
_STALE = (redis.ConnectionError, OSError)


class LeanScript:
    """One Lua script, called as ``script(keys=[...], args=[...])`` like redis-py's
    ``Script``, on a plain or Sentinel ``redis.Redis``'s ``ScriptConnections``."""

    __slots__ = ("connections", "script", "sha")

    def __init__(self, connections: ScriptConnections, source: str) -> None:
        self.connections = connections
        self.script = source
        self.sha = hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        connections = self.connections
        conn, fresh = connections.checkout()
        while True:
            try:
                reply = self._attempt(conn, keys, args)
            except redis.ResponseError:
                connections.checkin(conn)  # an error reply: the connection is in step
                raise
            except _STALE as exc:
                conn.disconnect()
                if fresh or isinstance(exc, TimeoutError):
                    raise  # a new connection failed, or the script may have run
                conn, fresh = connections.new(), True
                continue
            except BaseException:
                conn.disconnect()  # a reply may still be on its way: never reuse it
                raise
            connections.checkin(conn)
            return reply

    def _attempt(self, conn: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """One call under the connection's own ``Retry`` (none for one server; Sentinel's
        failover retry, reconnecting to the new master), as redis-py's commands run."""
        return conn.retry.call_with_retry(
            lambda: self._run(conn, keys, args), lambda _error: conn.disconnect()
        )

    def _run(self, conn: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        # connect() itself: a Sentinel connection asks the sentinels for the master
        # there; sending on an unconnected one would connect to its default address.
        # A connected one returns at once.
        conn.connect()
        conn.send_packed_command(
            pack_command(conn, ("EVALSHA", self.sha, len(keys), *keys, *args)), check_health=True
        )
        try:
            return conn.read_response()
        except redis.exceptions.NoScriptError:
            # Redis lost its script cache: EVAL caches the script again.
            conn.send_packed_command(
                pack_command(conn, ("EVAL", self.script, len(keys), *keys, *args)),
                check_health=False,
            )
            return conn.read_response()
