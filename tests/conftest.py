"""Shared fixtures: a private Redis, the sandbox, and a Celery app wired to both.

Redis: ``SUPRSEND_TEST_REDIS_URL`` when set, else a ``redis-server`` (or the embedded
Valkey) started on a free port for the session and flushed before each test. Tests
that kill or restart Redis start their own ``RedisServer``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun

from suprsend_celery.dev.redis_server import RedisServer
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.pipeline.settings import reset_settings

#: For tests that SIGKILL a Redis server under open client connections: redis-py and
#: kombu can drop such a socket without closing it, and the GC then reports it. Only
#: that report is ignored; every other warning still fails the test.
REDIS_KILLED = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)

WORKSPACE_KEY = "WSKEY_test_0123456789abcdef"
WORKSPACE_SECRET = "WSSECRET_test_0123456789"


def wait_for(
    condition: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02, message: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or condition}")
        time.sleep(interval)


def close_result_consumer(app: Celery) -> None:
    """Close this thread's result-backend pubsub connection (opened by a publish), and
    forget its subscriptions, so an AsyncResult collected later does not reopen it."""
    consumer = getattr(app.backend, "result_consumer", None)
    if consumer is not None:
        consumer.subscribed_to.clear()
        consumer.stop()


def run_async(app: Celery, coroutine: Callable[[], Any]) -> Any:
    """Run ``coroutine()`` in a fresh event loop, then close what the loop opened: its
    Redis client (``aclose``) and the result connection a publish made in its worker
    thread (``atrack_event`` publishes through ``asyncio.to_thread``)."""
    from suprsend_celery.pipeline.async_producers import aclose

    async def main() -> Any:
        try:
            return await coroutine()
        finally:
            await aclose(app)
            await asyncio.to_thread(close_result_consumer, app)

    return asyncio.run(main())


@contextmanager
def in_process_worker(
    app: Celery,
    concurrency: int = 2,
    *,
    shutdown_timeout: float = 30,
    close_results_after_tasks: bool = False,
) -> Iterator[Any]:
    """An in-process Celery worker (threads pool) on the app's default queue.

    ``close_results_after_tasks``: a retry publishes from a pool thread, which (unlike a
    prefork child) subscribes to the new task's result; closing that connection as each
    task ends keeps any socket from outliving the worker's threads.
    """

    def after_task(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            close_result_consumer(app)

    if close_results_after_tasks:
        task_postrun.connect(after_task, weak=False)
    try:
        with start_worker(
            app,
            pool="threads",
            concurrency=concurrency,
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=shutdown_timeout,
        ) as worker:
            yield worker
    finally:
        if close_results_after_tasks:
            task_postrun.disconnect(after_task)


@pytest.fixture(scope="session")
def redis_session_url() -> Iterator[str]:
    url = os.environ.get("SUPRSEND_TEST_REDIS_URL")
    if url:
        yield url
        return
    with RedisServer(appendonly=False) as server:
        yield server.url


@pytest.fixture
def redis_url(redis_session_url: str) -> Iterator[str]:
    client = redis.Redis.from_url(redis_session_url)
    client.flushdb()
    client.close()
    yield redis_session_url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def sandbox_session() -> Iterator[Sandbox]:
    with Sandbox(workspace_key=WORKSPACE_KEY, workspace_secret=WORKSPACE_SECRET) as sb:
        yield sb


@pytest.fixture
def sandbox(sandbox_session: Sandbox) -> Sandbox:
    sandbox_session.reset()
    return sandbox_session


def make_app(redis_url: str, sandbox_url: str, **conf: Any) -> Celery:
    """A Celery app on the test Redis (broker and results) sending to the sandbox."""
    app = Celery("suprsend_celery_tests", set_as_current=False)
    app.conf.update(
        broker_url=redis_url,
        result_backend=redis_url,
        broker_connection_retry_on_startup=True,
        task_default_queue="suprsend-tests",
        worker_hijack_root_logger=False,
        suprsend_workspace_key=WORKSPACE_KEY,
        suprsend_workspace_secret=WORKSPACE_SECRET,
        suprsend_base_url=sandbox_url,
        suprsend_redis_url=redis_url,
        suprsend_request_timeout=5,
        suprsend_flush_interval=0,
    )
    app.conf.update(conf)
    return app


@contextmanager
def current_app(redis_url: str, sandbox_url: str, **conf: Any) -> Iterator[Celery]:
    """``make_app``, made the current app, and closed at the end (its settings, its
    result-backend connection, its pools)."""
    app = make_app(redis_url, sandbox_url, **conf)
    app.set_current()
    app.set_default()
    try:
        yield app
    finally:
        reset_settings(app)
        close_result_consumer(app)
        app.close()


@pytest.fixture
def app_factory(redis_url: str, sandbox: Sandbox) -> Iterator[Callable[..., Celery]]:
    apps: list[Celery] = []

    def factory(**conf: Any) -> Celery:
        app = make_app(redis_url, sandbox.url, **conf)
        app.set_current()
        app.set_default()
        apps.append(app)
        return app

    yield factory
    for app in apps:
        # Closes what the app's runtime opened: HTTP sessions of flush threads, the
        # flusher's threads, Redis pools and the producers' own connections.
        reset_settings(app)
        # The Redis result backend keeps a pubsub connection for .get(); close it, or a
        # later GC reports the socket as an unraisable ResourceWarning in another test.
        close_result_consumer(app)
        app.close()


@pytest.fixture
def celery_app(app_factory: Callable[..., Celery]) -> Celery:
    return app_factory()


@pytest.fixture
def worker(celery_app: Celery) -> Iterator[Any]:
    """An in-process worker (threads pool) consuming the test queue."""
    with in_process_worker(celery_app, concurrency=4, shutdown_timeout=10) as w:
        yield w


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung Redis)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]
