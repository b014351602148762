"""One app's runtime: its settings and everything built from them, owned and closed in one place.

A ``Runtime`` holds what this package builds for one Celery app, on first use: the
settings, the HTTP client, the Redis buffer (with a stand-in while Redis does not
answer), the flusher, and each event loop's async client. It hangs off the app as one
attribute, so two apps in one process (as in tests) never share connections.
``close()`` releases everything it opened; ``reset_settings(app)`` closes the app's
runtime and forgets it, so the next call reads ``app.conf`` again.

``get_settings``, ``get_client``, ``get_buffer``, ``built_buffer``, ``find_buffer`` and
``get_flusher`` are the accessors the rest of the package uses. Connection pools are
fork-safe: redis-py checks the pid, the client rebuilds its session in a child.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from typing import Any

import redis

from ..buffer.async_push import AsyncBuffer
from ..buffer.opening import BufferConfig, first_look, open_buffer
from ..buffer.protocol import Buffer
from ..buffer.redis_buffer import RedisBuffer
from ..delivery.client import SuprsendClient
from .flusher import Flusher
from .settings import Settings, load_settings, resolve_app

__all__ = [
    "Runtime",
    "buffer_config",
    "built_buffer",
    "close_runtime",
    "find_buffer",
    "get_buffer",
    "get_client",
    "get_flusher",
    "runtime_of",
]

PROBE_AGAIN = 1.0
"""Seconds a stand-in buffer serves (Redis did not answer the first look) before the
next call looks again."""

#: The one attribute this package sets on a Celery app.
_ATTR = "_suprsend_runtime"
_attach_lock = threading.Lock()


class Runtime:
    """What this package built for one Celery app, each part on first use.

    Thread-safe; a part is built once. ``close()`` is idempotent and leaves the runtime
    usable: a later call builds what it needs again (like redis-py's client after
    ``close()``).
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        #: ``track_event`` warned that the app has no broker (once per runtime).
        self.warned_no_broker = False
        #: When moving a Django outbox's rows after commit last failed (``time.monotonic``;
        #: None: it did not), so commits skip the eager move for a while
        #: (``contrib.django.outbox.EAGER_BACKOFF``).
        self.outbox_failed_at: float | None = None
        self._lock = threading.RLock()  # builds and close
        self._probe_lock = threading.Lock()  # the buffer's first look at Redis; taken first
        self._settings: Settings | None = None
        self._redis_settings: Settings | None = None
        self._client: SuprsendClient | None = None
        self._buffer: Buffer | None = None
        self._stand_in: tuple[Buffer, float] | None = None
        self._flusher: Flusher | None = None
        self._key_names: RedisBuffer | None = None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncBuffer] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def settings(self) -> Settings:
        """The app's validated ``suprsend_*`` settings, read once."""
        settings = self._settings
        if settings is None:
            with self._lock:
                if self._settings is None:
                    self._settings = load_settings(self.app.conf)
                settings = self._settings
        return settings

    @property
    def redis_settings(self) -> Settings:
        """The Redis-only view of the settings (no workspace credentials needed), for
        operations that only read or move records; the full settings once loaded."""
        if self._settings is not None:
            return self._settings
        with self._lock:
            if self._redis_settings is None:
                self._redis_settings = load_settings(self.app.conf, require_credentials=False)
            return self._redis_settings

    def client(self) -> SuprsendClient:
        """The ``SuprsendClient`` for the app's workspace."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    s = self.settings
                    self._client = SuprsendClient(
                        credentials=s.credentials,
                        base_url=s.base_url,
                        timeout=s.request_timeout,
                        max_event_bytes=s.max_event_bytes,
                        proxy_url=s.proxy_url,
                        ca_bundle=s.ca_bundle,
                        dry_run=s.dry_run,
                    )
                client = self._client
        return client

    @property
    def built_buffer(self) -> Buffer | None:
        """The buffer if it was built already (building it asks Redis whether it runs a
        cluster and which shards were used, so async callers build it in a thread)."""
        return self._buffer

    def buffer(self) -> Buffer:
        """The app's Redis buffer; ``ConfigurationError`` when no Redis is configured.

        Built on first use, after a first look at Redis (bounded like any accept): is it
        a cluster, and which shards were ever used? If Redis does not answer, a buffer
        for one plain server stands in: its calls fail as usual (``BufferUnavailableError``
        for producers) or reach Redis once it is back, and the first call at least
        ``PROBE_AGAIN`` seconds later looks again (one caller at a time).
        """
        built = self._buffer
        if built is not None:
            return built
        with self._probe_lock:
            if self._buffer is not None:
                return self._buffer
            stand_in = self._stand_in
            if stand_in is not None and time.monotonic() - stand_in[1] < PROBE_AGAIN:
                return stand_in[0]
            settings = self.settings
            config = buffer_config(settings)
            try:
                cluster, used = first_look(config, settings.accept_timeout / 4)
            except redis.RedisError:
                # An earlier stand-in is dropped, not closed: a caller may still use it.
                buffer = open_buffer(config, cluster=False, used={0})
                with self._lock:
                    self._stand_in = (buffer, time.monotonic())
                return buffer
            buffer = open_buffer(config, cluster=cluster, used=used)
            with self._lock:
                self._buffer, self._stand_in = buffer, None
            return buffer

    def find_buffer(self) -> Buffer | None:
        """The buffer, or None when no Redis is configured."""
        return self.buffer() if self.settings.redis_url else None

    def flusher(self) -> Flusher:
        """The flusher (buffer plus client plus retry policy); while a stand-in buffer
        serves, a flusher of its own that is not kept."""
        buffer = self.buffer()
        flusher = self._flusher
        if flusher is not None and flusher.buffer is buffer:
            return flusher
        with self._lock:
            if self._buffer is not buffer:  # Redis did not answer: keep neither
                return self._build_flusher(buffer)
            if self._flusher is None:
                self._flusher = self._build_flusher(buffer)
            return self._flusher

    def _build_flusher(self, buffer: Buffer) -> Flusher:
        s = self.settings
        return Flusher(
            buffer,
            self.client(),
            batch_size=s.flush_batch_size,
            max_retries=s.max_retries,
            backoff_max=s.retry_backoff_max,
            concurrency=s.flush_concurrency,
            concurrency_max=s.flush_concurrency_max if s.flush_concurrency_adaptive else None,
        )

    def key_names(self) -> RedisBuffer:
        """A one-server buffer for its key names, bound and policy check only, opened with
        no I/O: the async client pushes with it before the buffer had its first look.
        Only asked for when the settings name one shard (``open_buffer`` then gives a
        ``RedisBuffer``)."""
        names = self._key_names
        if names is None:
            with self._lock:
                if self._key_names is None:
                    opened = open_buffer(buffer_config(self.settings), cluster=False, used={0})
                    if not isinstance(opened, RedisBuffer):
                        raise TypeError("the async key names are those of one shard")
                    self._key_names = opened
                names = self._key_names
        return names

    def async_buffer(self) -> AsyncBuffer:
        """The running event loop's async client, opened on first use in that loop."""
        loop = asyncio.get_running_loop()
        found = self._async.get(loop)
        if found is None:
            with self._lock:
                found = self._async.get(loop)
                if found is None:
                    url = self.settings.require_redis_url()
                    found = self._async[loop] = AsyncBuffer.open(url, like=self.key_names())
        return found

    async def aclose_loop(self) -> None:
        """Close the running event loop's async client (e.g. in a lifespan shutdown)."""
        with self._lock:
            found = self._async.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found.aclose()

    def close(self) -> None:
        """Release everything this runtime opened and forget it (settings included):
        HTTP sessions, the flusher's threads, Redis pools and the producers'
        connections, and the async clients of loops still running (closed on their
        loop; a stopped loop's client is left to that loop's ``aclose``)."""
        with self._probe_lock, self._lock:
            client, self._client = self._client, None
            flusher, self._flusher = self._flusher, None
            stand_in, self._stand_in = self._stand_in, None
            buffers = [self._buffer, self._key_names, stand_in[0] if stand_in else None]
            self._buffer = self._key_names = None
            loops = list(self._async.items())
            self._async.clear()
            self._settings = self._redis_settings = None
        if flusher is not None:
            flusher.close()
        if client is not None:
            client.close_all()
        for buffer in buffers:
            if buffer is not None:
                buffer.close()
        for loop, async_buffer in loops:
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(async_buffer.aclose(), loop)


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


def runtime_of(app: Any = None) -> Runtime:
    """The app's runtime (Celery's current app by default), made on first use."""
    app = resolve_app(app)
    runtime: Runtime | None = app.__dict__.get(_ATTR)
    if runtime is None:
        with _attach_lock:
            runtime = app.__dict__.get(_ATTR)
            if runtime is None:
                runtime = app.__dict__[_ATTR] = Runtime(app)
    return runtime


def close_runtime(app: Any = None) -> None:
    """Close the app's runtime, if it has one, and forget it."""
    app = resolve_app(app)
    with _attach_lock:
        runtime: Runtime | None = app.__dict__.pop(_ATTR, None)
    if runtime is not None:
        runtime.close()


def get_client(app: Any = None) -> SuprsendClient:
    """The app's ``SuprsendClient``."""
    return runtime_of(app).client()


def get_buffer(app: Any = None) -> Buffer:
    """The app's Redis buffer (see ``Runtime.buffer``)."""
    return runtime_of(app).buffer()


def built_buffer(app: Any) -> Buffer | None:
    """The app's buffer if it was built already (see ``Runtime.built_buffer``)."""
    return runtime_of(app).built_buffer


def find_buffer(app: Any = None) -> Buffer | None:
    """The app's Redis buffer, or None when no Redis is configured (the direct path's
    journal and dead letters are then best effort)."""
    return runtime_of(app).find_buffer()


def get_flusher(app: Any = None) -> Flusher:
    """The app's flusher (buffer plus client plus retry policy)."""
    return runtime_of(app).flusher()
