"""What the buffer requires of its Redis, checked cheaply where events are accepted.

A Redis whose ``maxmemory-policy`` is ``allkeys-*`` may evict any key when it fills
up: pending records, claims, dead letters. Accepted events would then vanish without
an error, so accepting into such a Redis is refused with ``ConfigurationError``.
The policy is read (``INFO memory``, on the producers' bounded connections) at the
first accept of a process and again at most once per ``POLICY_RECHECK_SECONDS``,
never on every call. A Redis at
``maxmemory`` under ``noeviction`` refuses writes: that reaches the caller as
``BufferFullError`` (``full_error``), not as redis-py's ``OutOfMemoryError``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import redis
from redis.sentinel import SentinelConnectionPool

from .. import defaults
from ..exceptions import BufferFullError, ConfigurationError

__all__ = [
    "PolicyCheck",
    "describe_redis",
    "full_error",
    "info_memory",
    "parse_memory_info",
    "read_memory_info",
    "refusal",
]

logger = logging.getLogger(__name__)


def describe_redis(client: redis.Redis | redis.RedisCluster) -> str:
    """``redis://user:***@host:port/db``: which Redis, never its password (a cluster's
    masters; Sentinel's master name)."""
    if isinstance(client, redis.RedisCluster):
        primaries = client.get_primaries()  # type: ignore[no-untyped-call]
        masters = ", ".join(f"{n.host}:{n.port}" for n in primaries)
        return f"cluster of {masters}"
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    db = kwargs.get("db", 0)
    if isinstance(pool, SentinelConnectionPool):
        return f"sentinel master {pool.service_name} db {db}"
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={db}"
    tls = "SSL" in pool.connection_class.__name__
    scheme = "rediss" if tls else "redis"
    user = kwargs.get("username") or ""
    auth = f"{user}:***@" if kwargs.get("password") else (f"{user}@" if user else "")
    return f"{scheme}://{auth}{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


def read_memory_info(client: redis.Redis) -> dict[str, Any]:
    """``maxmemory_policy``, ``maxmemory`` and ``used_memory`` (empty if Redis refuses INFO)."""
    try:
        info: Mapping[str, Any] = client.info("memory")
    except redis.exceptions.ResponseError:  # INFO denied by an ACL: we cannot tell
        return {}
    return {k: info[k] for k in ("maxmemory_policy", "maxmemory", "used_memory") if k in info}


def info_memory(conn: Any) -> Any:
    """``INFO memory`` on one connection: its raw text."""
    conn.send_command("INFO", "memory")
    return conn.read_response()


def parse_memory_info(reply: bytes | str) -> dict[str, Any]:
    """The fields ``read_memory_info`` returns, from a raw ``INFO memory`` reply."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    found: dict[str, Any] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == "maxmemory_policy":
            found[name] = value.strip()
        elif name in ("maxmemory", "used_memory") and value.strip().isdigit():
            found[name] = int(value)
    return found


def refusal(policy: object, where: str) -> str | None:
    """Why accepting into a Redis with this policy is refused, or None when it is safe."""
    if not isinstance(policy, str) or not policy.startswith("allkeys-"):
        return None
    return (
        f"the Redis of the buffer ({where}) has maxmemory-policy {policy}: when it fills "
        "up it evicts any key, so accepted events and dead letters would be lost "
        "without a trace. Set maxmemory-policy noeviction (CONFIG SET maxmemory-policy "
        "noeviction, and in redis.conf), or give suprsend_redis_url a Redis of its own"
    )


class PolicyCheck:
    """The last reading of one Redis's eviction policy, and when to read it again."""

    def __init__(self, where: str = "", interval: float = defaults.POLICY_RECHECK_SECONDS) -> None:
        self.where = where
        self.interval = interval
        self.policy: str | None = None
        self._refused: str | None = None
        self._due = 0.0  # monotonic time of the next reading
        self._lock = threading.Lock()

    def due(self) -> bool:
        return time.monotonic() >= self._due

    def update(self, where: str, memory_info: Mapping[str, Any]) -> None:
        """Take a reading of the Redis ``where`` names (``parse_memory_info``'s fields,
        empty when ``INFO`` was refused)."""
        policy = memory_info.get("maxmemory_policy")
        with self._lock:
            self.where = where
            self.policy = policy if isinstance(policy, str) else None
            self._refused = refusal(policy, self.where)
            self._due = time.monotonic() + self.interval
        if not memory_info:
            logger.warning(
                "could not read the maxmemory-policy of %s (INFO refused); make sure it is "
                "noeviction, or events may be evicted",
                self.where,
            )

    def refuse(self) -> None:
        """Raise ``ConfigurationError`` if the last reading was an evicting policy."""
        if self._refused is not None:
            raise ConfigurationError(self._refused)


def full_error(exc: redis.exceptions.OutOfMemoryError) -> BufferFullError:
    """``BufferFullError`` for a write Redis refused at ``maxmemory`` (chain ``exc``)."""
    return BufferFullError(
        "the Redis of the buffer is at its maxmemory and refuses writes "
        "(noeviction), so the event(s) were not accepted: let flush_buffer drain it, "
        "purge dead letters or raise maxmemory"
    )
