"""Per-app singletons: the client, the buffer and the flusher, built once from settings.

They hang off the Celery app (like the settings), so two apps in one process, as in
tests, never share connections, and ``reset_settings(app)`` forgets them all.
Connection pools are fork-safe: redis-py checks the pid, the client rebuilds its
session in a child.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from ..buffer.connection import connect
from ..buffer.redis_buffer import RedisBuffer
from ..buffer.sharded import open_buffer, shards_in_use
from ..delivery.client import SuprsendClient
from .flusher import Flusher
from .settings import Settings, cached_on_app, get_settings, resolve_app

__all__ = ["built_buffer", "find_buffer", "get_buffer", "get_client", "get_flusher"]

_BUFFER_ATTR = "_suprsend_buffer"
_STAND_IN_ATTR = "_suprsend_buffer_stand_in"
_probe_lock = threading.Lock()

PROBE_AGAIN = 1.0
"""Seconds a stand-in buffer serves (Redis did not answer the first look) before the
next call looks again."""


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
            proxy_url=s.proxy_url,
            ca_bundle=s.ca_bundle,
            dry_run=s.dry_run,
        )

    return cached_on_app(app, "_suprsend_client", build)


def get_buffer(app: Any = None) -> RedisBuffer:
    """The app's Redis buffer; ``ConfigurationError`` when no Redis is configured.

    Built on first use, after a first look at Redis (bounded like any accept): is it a
    cluster, and which shards were ever used? If Redis does not answer, a buffer for
    one plain server stands in: its calls fail as usual (``BufferUnavailableError``
    for producers) or reach Redis once it is back, and the first call at least
    ``PROBE_AGAIN`` seconds later looks again (one caller at a time).
    """
    app = resolve_app(app)
    built = built_buffer(app)
    if built is not None:
        return built
    with _probe_lock:
        built = built_buffer(app)
        stand_in = app.__dict__.get(_STAND_IN_ATTR)
        if built is not None:
            return built
        if stand_in is not None and time.monotonic() - stand_in[1] < PROBE_AGAIN:
            buffer: RedisBuffer = stand_in[0]
            return buffer
        settings = get_settings(app)
        url = settings.require_redis_url()
        where: dict[str, Any] = {"master_name": settings.redis_master_name}
        where["sentinel_kwargs"] = settings.sentinel_kwargs
        try:
            probe = connect(url, fail_fast=settings.accept_timeout / 4, **where)
            try:
                used = shards_in_use(probe, settings.key_prefix, settings.buffer_shards)
                cluster = isinstance(probe, redis.RedisCluster)
            finally:
                probe.close()
        except redis.RedisError:
            buffer = _open(settings, connect(url, cluster=False, **where), {0})
            app.__dict__[_STAND_IN_ATTR] = (buffer, time.monotonic())
            return buffer
        app.__dict__.pop(_STAND_IN_ATTR, None)
        return cached_on_app(
            app, _BUFFER_ATTR, lambda: _open(settings, connect(url, cluster=cluster, **where), used)
        )


def _open(settings: Settings, client: Any, used: set[int]) -> RedisBuffer:
    return open_buffer(
        client,
        prefix=settings.key_prefix,
        shards=settings.buffer_shards,
        used=used,
        max_length=settings.buffer_max_length,
        accept_timeout=settings.accept_timeout,
        min_replicas=settings.buffer_min_replicas,
    )


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

    buffer = get_buffer(app)

    def build() -> Flusher:
        s = get_settings(app)
        return Flusher(
            buffer,
            get_client(app),
            batch_size=s.flush_batch_size,
            max_retries=s.max_retries,
            backoff_max=s.retry_backoff_max,
            concurrency=s.flush_concurrency,
        )

    if built_buffer(app) is not buffer:  # Redis did not answer: keep neither
        return build()
    return cached_on_app(app, "_suprsend_flusher", build)
