"""Closing a buffer: every connection it opened, the producers' own included.

A buffer holds two kinds of connections: its client's pool (the flusher, stats,
scripts) and the idle connections ``ProducerLane`` keeps outside that pool for
``buffer_event`` (one lane per single-slot part). Closing the client alone would leave
the lanes' sockets to the garbage collector.
"""

from __future__ import annotations

from typing import Any

from .redis_buffer import RedisBuffer

__all__ = ["close_buffer"]


def close_buffer(buffer: RedisBuffer) -> None:
    """Disconnect the producers' idle connections of every part, then close the client
    (its pool; a Sentinel client's sentinels too). The buffer stays usable: the next
    call connects again. Safe in a forked child (redis-py leaves a parent's sockets)."""
    for part in {id(p): p for p in (buffer, *buffer.parts())}.values():
        idle = part._lane._idle  # no RedisBuffer.close() yet: the lane is this room's
        while idle:
            try:
                idle.pop().disconnect()
            except IndexError:  # another thread took it meanwhile
                break
    client: Any = buffer.redis
    pool = getattr(client, "connection_pool", None)  # a cluster client has none
    manager = getattr(pool, "sentinel_manager", None)
    client.close()
    for sentinel in getattr(manager, "sentinels", ()):
        sentinel.close()
