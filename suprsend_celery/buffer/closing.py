"""Closing a buffer: every connection it opened, the producers' own included.

A buffer holds two kinds of connections: its client's pool (the flusher, stats,
scripts) and the idle connections ``ProducerConnections`` keeps outside that pool for
``buffer_event`` (one per shard's ``Slot``). Closing the client alone would leave
their sockets to the garbage collector.
"""

from __future__ import annotations

from typing import Any

from .protocol import Buffer

__all__ = ["close_buffer"]


def close_buffer(buffer: Buffer) -> None:
    """Disconnect the producers' idle connections of every part, then close the client
    (its pool; a Sentinel client's sentinels too). The buffer stays usable: the next
    call connects again. Safe in a forked child (redis-py leaves a parent's sockets)."""
    shards: Any = getattr(buffer, "shards", {0: buffer})  # no Buffer.close() yet
    for shard in shards.values():
        shard.slot.producers.close()
    client: Any = buffer.redis
    pool = getattr(client, "connection_pool", None)  # a cluster client has none
    manager = getattr(pool, "sentinel_manager", None)
    client.close()
    for sentinel in getattr(manager, "sentinels", ()):
        sentinel.close()
