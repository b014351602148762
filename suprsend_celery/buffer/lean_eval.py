"""EVALSHA without redis-py's per-command layers, for the scripts run per batch.

A flusher runs two scripts per 100 records (CLAIM and SETTLE). Through
``Script.__call__`` each goes through ``execute_command``'s pool checkout, retry and
observability wrappers and redis-py's Python packer: measured on a 2-core VM, 106 µs of
CPU for a claim of 100 records and 114 µs for a settle's 25 arguments, against 56 and
39 µs for the same EVALSHA sent this way, more than the Redis work itself. So
``LeanScript`` sends it on one of the client's pool connections with redis-py's public
connection API (``send_packed_command``, ``read_response``), packed by hiredis when it
is installed (the ``hiredis`` extra), under the connection's own ``Retry`` (none for one
server; Sentinel's failover retry), and sends EVAL when Redis lost the script (a restart
or ``SCRIPT FLUSH``), as ``Script`` does. A cluster client keeps redis-py's ``Script``:
its node routing is the client's job.

Not seen by instrumentation that wraps ``Redis.execute_command`` (redis-py's own
metrics, OpenTelemetry's redis instrumentation): the flush run's spans say what ran.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import redis

__all__ = ["LeanScript", "lean_script", "pack_command", "pack_commands"]

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


class LeanScript:
    """One Lua script, called as ``script(keys=[...], args=[...])`` like redis-py's
    ``Script``, on a plain or Sentinel ``redis.Redis``."""

    __slots__ = ("client", "script", "sha")

    def __init__(self, client: redis.Redis, source: str) -> None:
        self.client = client
        self.script = source
        self.sha = hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        pool = self.client.connection_pool
        conn: Any = pool.get_connection()
        try:
            return conn.retry.call_with_retry(
                lambda: self._run(conn, keys, args), lambda _error: conn.disconnect()
            )
        finally:
            pool.release(conn)

    def _run(self, conn: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
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


def lean_script(
    client: redis.Redis | redis.RedisCluster, source: str
) -> LeanScript | Callable[..., Any]:
    """A ``LeanScript`` for a plain or Sentinel client; redis-py's ``Script`` on a cluster."""
    if isinstance(client, redis.RedisCluster):
        return client.register_script(source)
    return LeanScript(client, source)
