"""Scenario 1: what a producer (a Django view) pays per call.

Four ways to hand over one event, timed call by call in this process, interleaved in
rounds so that background noise hits them all alike:

- ``buffer_event(...)``: validate, serialise, one EVALSHA that appends to the buffer;
- ``track_event.delay(...)``: validate, serialise, publish one Celery message;
- a plain Celery task's ``.delay(...)`` with the same arguments (same broker);
- the official SDK's synchronous ``Suprsend(...).track_event(Event(...))`` against
  the sandbox: the request is made in the view;
- ``await abuffer_event(...)`` and ``await atrack_event(...)`` in an asyncio loop
  (each await timed inside the loop, as an async view would see it).

A Redis ``PING`` is timed alongside as a reference: the round trip that bounds any
call that waits for Redis; and an awaited ``PING`` on ``redis.asyncio``, the same
floor for the async producers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio
from suprsend import Event as SdkEvent
from suprsend import Suprsend

from benchmarks.common import (
    PREFIX,
    WORKSPACE_KEY,
    WORKSPACE_SECRET,
    SandboxProcess,
    event_args,
    log,
    median,
    percentile,
    producer_app,
    run_id,
)
from suprsend_celery import abuffer_event, atrack_event, buffer_event, track_event
from suprsend_celery.pipeline.async_producers import aclose
from suprsend_celery.pipeline.settings import reset_settings

QUEUE = "bench-latency"
#: Not a way to send an event: one Redis round trip, the floor under every Redis call.
REFERENCE = "(reference) Redis PING"
ASYNC_REFERENCE = "(reference) await Redis PING"


def run(redis_url: str, sandbox: SandboxProcess, calls: int, rounds: int = 5) -> dict[str, Any]:
    app = producer_app(redis_url, sandbox.url, QUEUE)

    @app.task(name="benchmarks.plain_task")  # type: ignore[untyped-decorator]
    def plain_task(
        distinct_id: str,
        event_name: str,
        properties: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        return None

    sdk = Suprsend(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=sandbox.url)
    tag = run_id()
    counter = iter(range(10**9))

    def via_buffer() -> None:
        d, n, p, k = event_args(next(counter), tag)
        buffer_event(d, n, p, idempotency_key=k)

    def via_track() -> None:
        d, n, p, k = event_args(next(counter), tag)
        track_event.delay(d, n, p, idempotency_key=k)

    def via_plain() -> None:
        d, n, p, k = event_args(next(counter), tag)
        plain_task.delay(d, n, p, idempotency_key=k)

    def via_sdk() -> None:
        d, n, p, k = event_args(next(counter), tag)
        sdk.track_event(SdkEvent(d, n, p, idempotency_key=k))

    ping = redis.Redis.from_url(redis_url)

    def redis_ping() -> None:
        ping.ping()

    aping = redis.asyncio.Redis.from_url(redis_url)

    async def redis_aping() -> None:
        await aping.ping()

    async def via_abuffer() -> None:
        d, n, p, k = event_args(next(counter), tag)
        await abuffer_event(d, n, p, idempotency_key=k)

    async def via_atrack() -> None:
        d, n, p, k = event_args(next(counter), tag)
        await atrack_event(d, n, p, idempotency_key=k)

    loop = asyncio.new_event_loop()

    def awaited(fn: Callable[[], Awaitable[None]]) -> Callable[[int, list[float]], None]:
        async def timed(count: int, times: list[float]) -> None:
            for _ in range(count):
                t0 = time.perf_counter()
                await fn()
                times.append(time.perf_counter() - t0)

        return lambda count, times: loop.run_until_complete(timed(count, times))

    def timed_sync(fn: Callable[[], None]) -> Callable[[int, list[float]], None]:
        def timed(count: int, times: list[float]) -> None:
            clock = time.perf_counter
            for _ in range(count):
                t0 = clock()
                fn()
                times.append(clock() - t0)

        return timed

    methods: dict[str, Callable[[], None]] = {
        "buffer_event": via_buffer,
        "track_event.delay": via_track,
        "plain task .delay": via_plain,
        "SDK track_event (sync)": via_sdk,
        REFERENCE: redis_ping,
    }
    runners = {name: timed_sync(fn) for name, fn in methods.items()}
    runners["await abuffer_event"] = awaited(via_abuffer)
    runners["await atrack_event"] = awaited(via_atrack)
    runners[ASYNC_REFERENCE] = awaited(redis_aping)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    elapsed: dict[str, float] = dict.fromkeys(runners, 0.0)
    for runner in runners.values():  # warm-up: imports, connections, script loading
        runner(50, [])
    per_round = max(1, calls // rounds)
    for r in range(rounds):
        for name, runner in runners.items():
            round_start = time.perf_counter()
            runner(per_round, samples[name])
            elapsed[name] += time.perf_counter() - round_start
        log(f"latency: round {r + 1}/{rounds} done")
    loop.run_until_complete(aclose(app))
    loop.run_until_complete(aping.aclose())
    loop.close()
    results = {
        name: {
            "calls": len(times),
            "p50_us": median(times) * 1e6,
            "p99_us": percentile(times, 99) * 1e6,
            "calls_per_s": len(times) / elapsed[name],
        }
        for name, times in samples.items()
    }
    ping.delete(QUEUE, "{" + PREFIX + "}:pending")
    ping.close()
    reset_settings(app)
    app.close()
    return results
