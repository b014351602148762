"""Per-app singletons: the client, the buffer and the flusher, built once from settings.

They hang off the Celery app (like the settings), so two apps in one process, as in
tests, never share connections, and ``reset_settings(app)`` forgets them all.
Connection pools are fork-safe: redis-py checks the pid, the client rebuilds its
session in a child.
"""

from __future__ import annotations

import threading
from typing import Any

from .buffer import RedisBuffer
from .client import SuprsendClient
from .config import get_settings
from .flusher import Flusher

__all__ = ["get_buffer", "get_client", "get_flusher", "resolve_app"]

_lock = threading.RLock()  # builders nest: the flusher builds the buffer and client


def resolve_app(app: Any = None) -> Any:
    if app is None:
        from celery import current_app

        return current_app._get_current_object()
    return app


def _cached(app: Any, attr: str, build: Any) -> Any:
    value = app.__dict__.get(attr)
    if value is None:
        with _lock:
            value = app.__dict__.get(attr)
            if value is None:
                value = build()
                app.__dict__[attr] = value
    return value


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

    client: SuprsendClient = _cached(app, "_suprsend_client", build)
    return client


def get_buffer(app: Any = None, *, required: bool = True) -> RedisBuffer | None:
    """The app's Redis buffer; None when no Redis is configured and ``required`` is False."""
    app = resolve_app(app)
    settings = get_settings(app)
    if not settings.redis_url and not required:
        return None

    def build() -> RedisBuffer:
        return RedisBuffer.from_url(
            settings.require_redis_url(),
            prefix=settings.key_prefix,
            max_length=settings.buffer_max_length,
        )

    buffer: RedisBuffer = _cached(app, "_suprsend_buffer", build)
    return buffer


def get_flusher(app: Any = None) -> Flusher:
    """The app's flusher (buffer plus client plus retry policy)."""
    app = resolve_app(app)

    def build() -> Flusher:
        s = get_settings(app)
        buffer = get_buffer(app)
        assert buffer is not None
        return Flusher(
            buffer,
            get_client(app),
            batch_size=s.flush_batch_size,
            max_retries=s.max_retries,
            backoff_max=s.retry_backoff_max,
            concurrency=s.flush_concurrency,
        )

    flusher: Flusher = _cached(app, "_suprsend_flusher", build)
    return flusher
