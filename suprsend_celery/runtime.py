"""Per-app singletons: the client, the buffer and the flusher, built once from settings.

They hang off the Celery app (like the settings), so two apps in one process, as in
tests, never share connections, and ``reset_settings(app)`` forgets them all.
Connection pools are fork-safe: redis-py checks the pid, the client rebuilds its
session in a child.
"""

from __future__ import annotations

from typing import Any

import redis

from .buffer import RedisBuffer
from .client import SuprsendClient
from .config import cached_on_app, get_settings, mask_url, resolve_app
from .connect import connect
from .exceptions import BufferUnavailableError
from .flusher import Flusher
from .shards import open_buffer, shards_in_use

__all__ = ["built_buffer", "find_buffer", "get_buffer", "get_client", "get_flusher"]

_BUFFER_ATTR = "_suprsend_buffer"


def get_client(app: Any = None) -> SuprsendClient:
    """The app's ``SuprsendClient``."""
    app = resolve_app(app)

    def build() -> SuprsendClient:
        s = get_settings(app)
        return SuprsendClient(
            credentials=s.credentials,
            base_url=s.base_url,
            timeout=s.request_timeout,
            max_event_bytes=s.max_event_bytes,
        )

    return cached_on_app(app, "_suprsend_client", build)


def get_buffer(app: Any = None) -> RedisBuffer:
    """The app's Redis buffer; ``ConfigurationError`` when no Redis is configured."""
    app = resolve_app(app)
    settings = get_settings(app)

    def build() -> RedisBuffer:
        url = settings.require_redis_url()
        where: dict[str, Any] = {"master_name": settings.redis_master_name}
        where["sentinel_kwargs"] = settings.sentinel_kwargs
        # A first look, bounded like any accept: a cluster? which shards were used?
        try:
            probe = connect(url, fail_fast=settings.accept_timeout / 2, **where)
            try:
                used = shards_in_use(probe, settings.key_prefix, settings.buffer_shards)
                cluster = isinstance(probe, redis.RedisCluster)
            finally:
                probe.close()
        except redis.RedisError as exc:
            raise BufferUnavailableError(
                f"the buffer's Redis ({mask_url(url)}) failed ({type(exc).__name__}: {exc}) "
                f"within suprsend_accept_timeout={settings.accept_timeout:g}s"
            ) from exc
        return open_buffer(
            connect(url, cluster=cluster, **where),
            prefix=settings.key_prefix,
            shards=settings.buffer_shards,
            used=used,
            max_length=settings.buffer_max_length,
            accept_timeout=settings.accept_timeout,
            min_replicas=settings.buffer_min_replicas,
        )

    return cached_on_app(app, _BUFFER_ATTR, build)


def built_buffer(app: Any) -> RedisBuffer | None:
    """The app's buffer if it was built already (building it asks Redis whether it runs
    a cluster and which shards were used, so async callers build it in a thread)."""
    buffer: RedisBuffer | None = resolve_app(app).__dict__.get(_BUFFER_ATTR)
    return buffer


def find_buffer(app: Any = None) -> RedisBuffer | None:
    """The app's Redis buffer, or None when no Redis is configured (the direct path's
    journal and dead letters are then best effort)."""
    app = resolve_app(app)
    return get_buffer(app) if get_settings(app).redis_url else None


def get_flusher(app: Any = None) -> Flusher:
    """The app's flusher (buffer plus client plus retry policy)."""
    app = resolve_app(app)

    def build() -> Flusher:
        s = get_settings(app)
        return Flusher(
            get_buffer(app),
            get_client(app),
            batch_size=s.flush_batch_size,
            max_retries=s.max_retries,
            backoff_max=s.retry_backoff_max,
            concurrency=s.flush_concurrency,
        )

    return cached_on_app(app, "_suprsend_flusher", build)
