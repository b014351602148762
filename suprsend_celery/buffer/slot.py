"""One shard's way to Redis: the client, the server that holds its slot, the producers'
own bounded connections, and the eviction-policy guard. Every part of a shard (queue,
journal, dead letters, breaker, snapshot) talks to Redis through its ``Slot``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from .. import defaults
from .accept_connections import AcceptAttempt, ProducerConnections
from .eviction import (
    PolicyCheck,
    describe_redis,
    info_memory,
    parse_memory_info,
    read_memory_info,
)
from .keys import Keys
from .lean_eval import LeanScript, ScriptConnections

__all__ = ["Slot"]


class Slot:
    """The connections that reach one shard's hash tag."""

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        keys: Keys,
        *,
        accept_timeout: float = defaults.ACCEPT_TIMEOUT,
        policy_recheck: float = defaults.POLICY_RECHECK_SECONDS,
    ) -> None:
        self.client = client
        #: Producers' connections: a call ends within ``accept_timeout`` (``push``, ``journal``).
        self.producers = ProducerConnections(client, keys.pending, accept_timeout)
        #: Refuses accepting into a Redis that may evict our keys (read once a minute).
        self.policy_check = PolicyCheck(interval=policy_recheck)
        #: The connections of the scripts run per batch (none on a cluster).
        self.script_connections = (
            None if isinstance(client, redis.RedisCluster) else ScriptConnections(client)
        )

    def script(self, source: str) -> LeanScript | Callable[..., Any]:
        """A script run per batch (claim, settle...): a ``LeanScript`` on this slot's
        connections, or redis-py's ``Script`` on a cluster."""
        if self.script_connections is None:
            return self.client.register_script(source)
        return LeanScript(self.script_connections, source)

    def node(self) -> Any:
        """The client of the server (or cluster node) holding this slot: pipelines,
        ``TIME`` and scripts go there."""
        return self.producers.node_client()

    def pipeline(self) -> Any:
        """A pipeline (no MULTI) on the server holding this slot: one round trip."""
        return self.node().pipeline(transaction=False)

    def policy_reading(self, attempt: AcceptAttempt | None = None) -> tuple[str, dict[str, Any]]:
        """Which Redis, and its ``INFO memory`` fields, read on the producers' bounded
        connections (within ``attempt``'s bound when given: a push's). An ACL that
        refuses ``INFO`` fails the read like any Redis error there
        (``BufferUnavailableError``); the async push reads it as "cannot tell"."""
        reply = self.producers.run(info_memory, attempt)
        return describe_redis(self.node()), parse_memory_info(reply)

    def refuse_eviction(self) -> None:
        """``ConfigurationError`` when this Redis may evict keys (``eviction``); the
        policy is read when due (``policy_reading``)."""
        if self.policy_check.due():
            self.policy_check.update(*self.policy_reading())
        self.policy_check.refuse()

    def close(self) -> None:
        """Disconnect the producers' and the scripts' own connections (the client is the
        buffer's to close)."""
        self.producers.close()
        if self.script_connections is not None:
            self.script_connections.close()

    def memory_info(self) -> dict[str, Any]:
        """This Redis's ``maxmemory_policy``, ``maxmemory`` and ``used_memory`` (``status``)."""
        return read_memory_info(self.node())
