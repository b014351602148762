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

from ..buffer.opening import BufferConfig, first_look, open_buffer
from ..buffer.protocol import Buffer
from ..delivery.client import SuprsendClient
from .flusher import Flusher
from .settings import Settings, cached_on_app, get_settings, resolve_app

__all__ = [
    "buffer_config",
    "built_buffer",
    "find_buffer",
    "get_buffer",
    "get_client",
    "get_flusher",
]

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


def buffer_config(settings: Settings) -> BufferConfig:
    """What ``open_buffer`` needs from the app's settings (``ConfigurationError``
    when no Redis is configured)."""
    return BufferConfig(
        redis_url=settings.require_redis_url(),
        master_name=settings.redis_master_name,
        sentinel_kwargs=settings.sentinel_kwargs,
        prefix=settings.key_prefix,
        shards=settings.buffer_shards,
        max_length=settings.buffer_max_length,
        accept_timeout=settings.accept_timeout,
        min_replicas=settings.buffer_min_replicas,
    )


def get_buffer(app: Any = None) -> Buffer:
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
            buffer: Buffer = stand_in[0]
            return buffer
        settings = get_settings(app)
        config = buffer_config(settings)
        try:
            cluster, used = first_look(config, settings.accept_timeout / 4)
        except redis.RedisError:
            buffer = open_buffer(config, cluster=False, used={0})
            app.__dict__[_STAND_IN_ATTR] = (buffer, time.monotonic())
            return buffer
        app.__dict__.pop(_STAND_IN_ATTR, None)
        return cached_on_app(
            app, _BUFFER_ATTR, lambda: open_buffer(config, cluster=cluster, used=used)
        )


def built_buffer(app: Any) -> Buffer | None:
    """The app's buffer if it was built already (building it asks Redis whether it runs
    a cluster and which shards were used, so async callers build it in a thread)."""
    buffer: Buffer | None = resolve_app(app).__dict__.get(_BUFFER_ATTR)
    return buffer


def find_buffer(app: Any = None) -> Buffer | None:
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
