"""Per-app singletons: the client, the buffer and the flusher, built once from settings.

They hang off the Celery app (like the settings), so two apps in one process, as in
tests, never share connections, and ``reset_settings(app)`` forgets them all.
Connection pools are fork-safe: redis-py checks the pid, the client rebuilds its
session in a child.
"""

from __future__ import annotations

from typing import Any

from .buffer import RedisBuffer
from .client import SuprsendClient
from .config import cached_on_app, get_settings, resolve_app
from .flusher import Flusher

__all__ = ["find_buffer", "get_buffer", "get_client", "get_flusher"]


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
        return RedisBuffer.from_url(
            settings.require_redis_url(),
            prefix=settings.key_prefix,
            max_length=settings.buffer_max_length,
            accept_timeout=settings.accept_timeout,
        )

    return cached_on_app(app, "_suprsend_buffer", build)


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
