"""Async producers: the sync calls' checks, bytes, bound and errors, without blocking the loop.

The last class serves a tiny ASGI app with uvicorn and sends it 200 concurrent
requests while Redis is paused: the requests wait, the event loop does not.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import uvicorn
from celery import Celery
from conftest import in_process_worker, run_async, wait_for

from suprsend_celery import (
    BufferFullError,
    BufferUnavailableError,
    Event,
    InvalidEventError,
    abuffer_event,
    abuffer_events,
    atrack_event,
    buffer_event,
)
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.pipeline.async_producers import aclose
from suprsend_celery.pipeline.runtime import get_buffer


def pending(app: Celery) -> list[bytes]:
    buffer = get_buffer(app)
    assert buffer is not None
    return list(buffer.redis.lrange(buffer.keys.pending, 0, -1))


def without_ids(record: bytes) -> dict[str, Any]:
    """A record minus what differs per acceptance ($insert_id, $time)."""
    parsed = json.loads(record)
    del parsed["$insert_id"], parsed["$time"]
    return parsed


class TestSameAsSync:
    """The async calls behave exactly like ``buffer_event``/``buffer_events``."""

    def test_same_record_layout(self, celery_app: Celery) -> None:
        """An awaited push stores the record the sync push stores (same fields, same order)."""
        call = ("u1", "order_placed", {"total": 12.5, "city": "Zürich"})
        scope = {"idempotency_key": "k-1", "tenant_id": "acme"}
        sync_key = buffer_event(*call, **scope)
        async_key = run_async(celery_app, lambda: abuffer_event(*call, **scope))
        assert sync_key == async_key == "k-1"
        sync_record, async_record = pending(celery_app)
        assert list(json.loads(async_record)) == list(json.loads(sync_record))
        assert without_ids(async_record) == without_ids(sync_record)

    def test_many_in_order(self, celery_app: Celery) -> None:
        """``abuffer_events`` pushes every event in order and returns their keys."""
        events = [Event(f"u{i}", "bulk_ev", {"i": i}) for i in range(5)]
        keys = run_async(celery_app, lambda: abuffer_events(events))
        stored = [json.loads(r) for r in pending(celery_app)]
        assert [r["$idempotency_key"] for r in stored] == keys
        assert [r["properties"]["i"] for r in stored] == list(range(5))

    def test_empty_batch(self, celery_app: Celery) -> None:
        """No events: no round trip, an empty list."""
        assert run_async(celery_app, lambda: abuffer_events([])) == []

    @pytest.mark.parametrize(
        ("args", "kwargs", "field"),
        [
            (("", "order_placed"), {}, "distinct_id"),
            (("u1", "$reserved"), {}, "event_name"),
            (("u1", "ev", {"$x": 1}), {}, "properties"),
            (("u1", "ev"), {"tenant_id": "t" * 65}, "tenant_id"),
        ],
    )
    def test_same_validation(
        self, celery_app: Celery, args: tuple[Any, ...], kwargs: dict[str, Any], field: str
    ) -> None:
        """Bad input raises the sync call's InvalidEventError and buffers nothing."""
        with pytest.raises(InvalidEventError) as sync_error:
            buffer_event(*args, **kwargs)
        with pytest.raises(InvalidEventError) as async_error:
            run_async(celery_app, lambda: abuffer_event(*args, **kwargs))
        assert str(async_error.value) == str(sync_error.value)
        assert async_error.value.field == field
        assert pending(celery_app) == []

    def test_batch_is_all_or_nothing(self, celery_app: Celery) -> None:
        """One bad item refuses the whole batch before any round trip."""
        events: list[Any] = [Event("u1", "ok_event"), "not an event"]
        with pytest.raises(InvalidEventError, match="item 1"):
            run_async(celery_app, lambda: abuffer_events(events))
        assert pending(celery_app) == []

    def test_same_bound(self, app_factory: Callable[..., Celery]) -> None:
        """Over ``suprsend_buffer_max_length`` nothing is added and BufferFullError says why."""
        app = app_factory(suprsend_buffer_max_length=3)
        run_async(app, lambda: abuffer_events([Event("u", "ev_a"), Event("u", "ev_b")]))
        with pytest.raises(BufferFullError, match="suprsend_buffer_max_length=3") as info:
            run_async(app, lambda: abuffer_events([Event("u", "ev_c"), Event("u", "ev_d")]))
        assert "2 event(s) were not accepted" in str(info.value)
        assert len(pending(app)) == 2
        run_async(app, lambda: abuffer_event("u", "ev_e"))
        with pytest.raises(BufferFullError):
            run_async(app, lambda: abuffer_event("u", "ev_f"))
        assert len(pending(app)) == 3

    def test_same_error_when_redis_is_down(self, app_factory: Callable[..., Celery]) -> None:
        """Nobody listening: BufferUnavailableError naming the key, within the timeout."""
        app = app_factory(suprsend_redis_url="redis://127.0.0.1:1/0", suprsend_accept_timeout=1)
        with pytest.raises(BufferUnavailableError) as sync_error:
            buffer_event("u1", "ev_down", idempotency_key="k-sync", app=app)
        started = time.monotonic()
        with pytest.raises(BufferUnavailableError) as async_error:
            run_async(
                app, lambda: abuffer_event("u1", "ev_down", idempotency_key="k-async", app=app)
            )
        assert time.monotonic() - started < 3
        assert async_error.value.idempotency_keys == ("k-async",)
        assert sync_error.value.idempotency_keys == ("k-sync",)
        assert isinstance(async_error.value.__cause__, (redis.RedisError, OSError))

    def test_each_loop_gets_its_own_connection(self, celery_app: Celery) -> None:
        """Successive ``asyncio.run`` loops (as in a test suite) each work."""
        for i in range(3):
            run_async(celery_app, lambda i=i: abuffer_event("u", f"loop_{i}"))
        assert len(pending(celery_app)) == 3


class TestAtrackEvent:
    """``await atrack_event(...)``: validated in the caller, published off the loop."""

    def test_delivers(self, celery_app: Celery, sandbox: Sandbox) -> None:
        """The event is published and a worker sends it."""

        async def publish_and_wait() -> Any:
            result = await atrack_event("u1", "signed_up", idempotency_key="a1")
            # The result belongs to the publishing thread's backend: wait there, so the
            # connection it subscribes on is the one run_async closes.
            return await asyncio.to_thread(result.get, timeout=15)

        with in_process_worker(celery_app):
            assert run_async(celery_app, publish_and_wait)["idempotency_key"] == "a1"
        (stored,) = sandbox.events()
        assert stored["event"] == "signed_up"

    def test_bad_input_raises_before_publishing(self, celery_app: Celery) -> None:
        """InvalidEventError comes from the caller; the broker queue stays empty."""
        with pytest.raises(InvalidEventError, match="event_name"):
            run_async(celery_app, lambda: atrack_event("u1", "x"))
        client = redis.Redis.from_url(celery_app.conf.broker_url)
        assert client.llen("suprsend-tests") == 0
        client.close()


# -- a real ASGI server --------------------------------------------------------------------


class _App:
    """A tiny ASGI app: GET /buffer, /track and /sync produce an event each; a heartbeat
    coroutine (started with the server) records when each of its 5 ms sleeps began and
    ended, so a test can see every stall of the event loop."""

    TICK = 0.005

    def __init__(self, celery_app: Celery) -> None:
        self.celery_app = celery_app
        self.beats: list[tuple[float, float]] = []  # (asleep at, awake at), monotonic
        self.entered: list[float] = []  # when each request reached its view
        self._heart: asyncio.Task[None] | None = None

    async def _heartbeat(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(self.TICK)
            self.beats.append((started, time.monotonic()))

    def max_stall(self, since: float, until: float) -> float:
        """The loop's longest stall between two instants (beyond the heartbeat's own sleep)."""
        return max(
            (min(end, until) - max(start, since) - self.TICK for start, end in self.beats),
            default=float("inf"),
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self._heart = asyncio.create_task(self._heartbeat())
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    assert self._heart is not None
                    self._heart.cancel()
                    await aclose(self.celery_app)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        app = self.celery_app
        path = scope["path"]
        self.entered.append(time.monotonic())
        if path == "/buffer":
            answer = {"key": await abuffer_event("u1", "asgi_buffered", app=app)}
        elif path == "/track":
            answer = {"id": (await atrack_event("u1", "asgi_tracked", app=app)).id}
        elif path == "/sync":  # the control: a blocking call in an async view
            answer = {"key": buffer_event("u1", "asgi_sync", app=app)}
        else:
            raise AssertionError(path)
        body = json.dumps(answer).encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def asgi_server(celery_app: Celery) -> Iterator[tuple[_App, tuple[str, int]]]:
    """uvicorn serving ``_App`` on a free loopback port, in a thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = _App(celery_app)
    config = uvicorn.Config(app, lifespan="on", log_level="warning", backlog=512)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, message="uvicorn to start")
    yield app, ("127.0.0.1", port)
    server.should_exit = True
    thread.join(15)
    sock.close()


async def _get(host: str, port: int, path: str) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:80]
    result: dict[str, Any] = json.loads(body)
    return result


def _concurrently(address: tuple[str, int], path: str, count: int) -> list[dict[str, Any]]:
    async def main() -> list[dict[str, Any]]:
        return await asyncio.gather(*(_get(*address, path) for _ in range(count)))

    return asyncio.run(main())


def _queued(celery_app: Celery) -> int:
    client = redis.Redis.from_url(celery_app.conf.broker_url)
    try:
        return int(client.llen("suprsend-tests"))
    finally:
        client.close()


@pytest.mark.slow
class TestAsgiServer:
    """Under uvicorn, 200 concurrent requests producing events: the loop is never blocked.

    Redis is paused (``CLIENT PAUSE``) while the requests run, so every one of them
    waits for it; the heartbeat shows the loop kept turning all that time. A view
    calling the sync ``buffer_event`` is the control: the same check catches it.
    """

    PAUSE = 1.0

    def paused_run(
        self, server: tuple[_App, tuple[str, int]], redis_url: str, path: str, count: int
    ) -> tuple[float, list[dict[str, Any]]]:
        """``count`` concurrent requests while Redis is paused: the answers, and the loop's
        longest stall while they were all waiting for Redis (from the last request's
        arrival, or the first's when a view blocks, to shortly before the pause ends)."""
        app, address = server
        client = redis.Redis.from_url(redis_url)
        client.execute_command("CLIENT", "PAUSE", int(self.PAUSE * 1000), "ALL")
        paused_at = time.monotonic()
        client.close()
        app.entered.clear()
        answers = _concurrently(address, path, count)
        assert time.monotonic() - paused_at >= self.PAUSE * 0.9  # the requests did wait
        # Async views: from shortly after the last request reached its view (the loop has
        # then run every request up to its await) to shortly before the pause ends.
        since = app.entered[-1] + 0.15 if path != "/sync" else app.entered[0]
        until = paused_at + self.PAUSE - 0.05
        assert until - since > 0.2, "the requests arrived too late to judge the loop"
        return app.max_stall(since, until), answers

    def test_abuffer_event(
        self, asgi_server: tuple[_App, tuple[str, int]], celery_app: Celery, redis_url: str
    ) -> None:
        """200 concurrent ``await abuffer_event``: all buffered, the loop never stalled."""
        stall, answers = self.paused_run(asgi_server, redis_url, "/buffer", 200)
        assert len({a["key"] for a in answers}) == 200
        assert len(pending(celery_app)) == 200
        assert stall < 0.05, f"the event loop stalled for {stall:.3f}s"

    def test_atrack_event(
        self, asgi_server: tuple[_App, tuple[str, int]], celery_app: Celery, redis_url: str
    ) -> None:
        """200 concurrent ``await atrack_event``: all published, the loop never stalled."""
        stall, answers = self.paused_run(asgi_server, redis_url, "/track", 200)
        assert len({a["id"] for a in answers}) == 200
        assert _queued(celery_app) == 200
        assert stall < 0.05, f"the event loop stalled for {stall:.3f}s"

    def test_control_sync_call_blocks_the_loop(
        self, asgi_server: tuple[_App, tuple[str, int]], celery_app: Celery, redis_url: str
    ) -> None:
        """The control: sync ``buffer_event`` in the same view holds the loop for the pause."""
        stall, answers = self.paused_run(asgi_server, redis_url, "/sync", 5)
        assert len(answers) == 5
        assert stall >= self.PAUSE * 0.5
