"""The app's runtime: one owner of what the package opens for an app, released by one call."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import psutil
from celery import Celery
from conftest import wait_for

from suprsend_celery import abuffer_event, buffer_event, buffer_stats
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.pipeline.runtime import get_client, get_flusher, runtime_of
from suprsend_celery.pipeline.settings import reset_settings
from suprsend_celery.tasks.redaction import warn_if_no_broker


def sockets_to(url: str) -> int:
    """This process's established TCP connections to ``url``'s port (client side)."""
    port = urlsplit(url).port
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def settled_sockets(url: str) -> int:
    """``sockets_to(url)`` once connections other tests left unreferenced are closed (a
    collection closes them, maybe in the middle of a test's count otherwise)."""
    gc.collect()
    count = sockets_to(url)
    for _ in range(50):
        time.sleep(0.05)
        now, count = count, sockets_to(url)
        if now == count:
            break
    return count


def flush_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("suprsend-flush")}


class TestOwner:
    """Everything the package keeps for an app hangs off one runtime."""

    def test_one_attribute_on_the_app(self, celery_app: Celery) -> None:
        """Settings, buffer, client, flusher and flags: one attribute, whatever was used."""
        before = set(vars(celery_app))
        buffer_event("u1", "runtime_event", app=celery_app)
        get_flusher(celery_app)
        get_client(celery_app)
        warn_if_no_broker(celery_app)
        ours = [name for name in set(vars(celery_app)) - before if "suprsend" in name]
        assert len(ours) == 1

    def test_reset_forgets_the_runtime(self, celery_app: Celery) -> None:
        """``reset_settings`` closes the runtime and the next call builds a new one."""
        runtime = runtime_of(celery_app)
        buffer_event("u1", "runtime_event", app=celery_app)
        reset_settings(celery_app)
        reset_settings(celery_app)  # nothing left to close: a no-op
        assert runtime_of(celery_app) is not runtime
        assert buffer_stats(app=celery_app)["pending"] == 1


class TestClose:
    """``close()`` releases what the runtime opened, once, and the app keeps working."""

    def test_releases_connections_and_threads(
        self, celery_app: Celery, redis_url: str, sandbox: Sandbox
    ) -> None:
        """Redis pools, the producers' own connections, the flusher's threads and their
        HTTP sessions are all closed by ``reset_settings``."""
        redis_before, http_before = settled_sockets(redis_url), settled_sockets(sandbox.url)
        threads_before = flush_threads()
        for i in range(300):
            buffer_event(f"u{i}", "runtime_event", app=celery_app)
        buffer_stats(app=celery_app)
        assert get_flusher(celery_app).run(time_budget=10).sent == 300
        assert sockets_to(redis_url) > redis_before
        assert sockets_to(sandbox.url) > http_before
        assert flush_threads() - threads_before

        reset_settings(celery_app)
        assert flush_threads() <= threads_before  # shut down, not left to the GC
        wait_for(lambda: sockets_to(redis_url) <= redis_before, message="Redis closed")
        wait_for(lambda: sockets_to(sandbox.url) <= http_before, message="HTTP closed")

    def test_idempotent_and_usable_after(self, celery_app: Celery) -> None:
        """Closing twice is fine; a call after ``close()`` opens what it needs again."""
        runtime = runtime_of(celery_app)
        buffer_event("u1", "runtime_event", app=celery_app)
        runtime.close()
        runtime.close()
        buffer_event("u2", "runtime_event", app=celery_app)
        assert runtime_of(celery_app) is runtime
        assert buffer_stats(app=celery_app)["pending"] == 2

    def test_closes_a_running_loops_async_client(self, celery_app: Celery, redis_url: str) -> None:
        """Called from inside an event loop, ``close()`` closes that loop's client on it."""
        baseline = sockets_to(redis_url)

        async def main() -> None:
            await abuffer_event("u1", "runtime_event", app=celery_app)
            assert sockets_to(redis_url) > baseline
            reset_settings(celery_app)
            deadline = time.monotonic() + 10
            while sockets_to(redis_url) > baseline:
                assert time.monotonic() < deadline, "the async client was not closed"
                await asyncio.sleep(0.01)

        asyncio.run(main())


def test_async_pools_are_per_loop(app_factory: Callable[..., Celery]) -> None:
    """Each event loop gets its own client; ``aclose`` closes the current loop's only."""
    app = app_factory()
    seen = []

    async def push() -> None:
        await abuffer_event("u1", "runtime_event", app=app)
        seen.append(runtime_of(app).async_buffer())
        await runtime_of(app).aclose_loop()

    asyncio.run(push())
    asyncio.run(push())
    assert len(seen) == 2 and seen[0] is not seen[1]
