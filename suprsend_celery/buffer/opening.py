"""Opening a buffer: the one way every caller builds one (the app's runtime, the
health check and the exporter, the command line, the async producers).

A first look at Redis decides its shape: a cluster client or not (``connection``),
and every shard ever used (the registry, ``sharded``). A buffer that only ever used
shard 0 is a plain ``RedisBuffer``; any other is a ``ShardedBuffer`` that drains every
shard ever used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from .. import defaults
from .connection import close_client, connect
from .protocol import Buffer
from .redis_buffer import RedisBuffer
from .sharded import ShardedBuffer, shards_in_use

__all__ = ["BufferConfig", "first_look", "open_buffer"]


@dataclass(frozen=True, slots=True)
class BufferConfig:
    """Where the buffer lives and its limits (an app's settings, in ``pipeline.runtime``)."""

    redis_url: str
    master_name: str | None = None
    sentinel_kwargs: dict[str, Any] | None = None
    prefix: str = defaults.KEY_PREFIX
    shards: int = 1
    max_length: int = defaults.BUFFER_MAX_LENGTH
    accept_timeout: float = defaults.ACCEPT_TIMEOUT
    min_replicas: int = defaults.BUFFER_MIN_REPLICAS

    def connect(self, *, fail_fast: float | None = None, cluster: bool | None = None) -> Any:
        """A client for ``redis_url`` (``connection.connect``)."""
        return connect(
            self.redis_url,
            master_name=self.master_name,
            sentinel_kwargs=self.sentinel_kwargs,
            fail_fast=fail_fast,
            cluster=cluster,
        )


def first_look(config: BufferConfig, timeout: float) -> tuple[bool, set[int]]:
    """Whether Redis runs a cluster, and every shard ever used, on a client that gives
    up within ``timeout`` seconds (closed after). Raises ``RedisError``."""
    probe = config.connect(fail_fast=timeout)
    try:
        used = shards_in_use(probe, config.prefix, config.shards)
        return isinstance(probe, redis.RedisCluster), used
    finally:
        close_client(probe)


def open_buffer(
    config: BufferConfig,
    *,
    fail_fast: float | None = None,
    cluster: bool | None = None,
    used: Iterable[int] | None = None,
) -> Buffer:
    """The buffer ``config`` describes, on a new client.

    ``fail_fast``: the client gives up within that many seconds, without retries
    (health checks, the exporter). ``cluster``: whether Redis runs a cluster, when known
    (else asked). ``used``: the shards ever used, when known (else the registry is
    read, and noted, on the new client). With both known, opening does no I/O.
    """
    client = config.connect(fail_fast=fail_fast, cluster=cluster)
    shards = set(shards_in_use(client, config.prefix, config.shards) if used is None else used)
    if config.shards == 1 and shards <= {0}:
        return RedisBuffer(
            client,
            prefix=config.prefix,
            max_length=config.max_length,
            accept_timeout=config.accept_timeout,
            min_replicas=config.min_replicas,
        )
    return ShardedBuffer(
        client,
        prefix=config.prefix,
        shards=config.shards,
        used=shards,
        max_length=config.max_length,
        accept_timeout=config.accept_timeout,
        min_replicas=config.min_replicas,
    )
