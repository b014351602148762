"""The direct path when Redis or the broker fails: nothing lost, nothing half-accepted.

Each test runs its own ``redis-server`` so it can starve it (``maxmemory`` under
``noeviction``, ``maxclients``) or stop it, a real in-process worker, and the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from conftest import REDIS_KILLED, current_app, wait_for

from suprsend_celery import (
    BufferUnavailableError,
    Event,
    PublishError,
    SuprsendCeleryError,
    abuffer_event,
    atrack_event,
    buffer_event,
    buffer_events,
    track_event,
)
from suprsend_celery.dev.redis_server import RedisServer
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.pipeline.async_producers import aclose
from suprsend_celery.pipeline.runtime import get_buffer, get_flusher

QUEUE = "suprsend-tests"  # conftest's task_default_queue


def app_on(redis_url: str, sandbox: Sandbox, **conf: Any) -> Any:
    """A current app on this Redis (broker and buffer; no result backend unless given)."""
    return current_app(redis_url, sandbox.url, **{"result_backend": None, **conf})


@contextlib.contextmanager
def broker_of_its_own(sandbox: Sandbox, **conf: Any) -> Iterator[tuple[Any, Any, redis.Redis]]:
    """A worker's app and a producer's app on a broker of their own (``admin``: a client
    of it, to starve it) with the buffer on another Redis."""
    with RedisServer(appendonly=False) as broker, RedisServer(appendonly=False) as store:
        conf["suprsend_redis_url"] = store.url
        with (
            app_on(broker.url, sandbox, **conf) as worker_app,
            app_on(broker.url, sandbox, **conf) as app,
        ):
            admin = broker.client()
            try:
                yield worker_app, app, admin
            finally:
                admin.close()


def one_thread_worker(app: Any) -> Any:
    """An in-process worker taking one task at a time."""
    return start_worker(
        app, pool="threads", concurrency=1, perform_ping_check=False, loglevel="WARNING"
    )


def _refuse(admin: redis.Redis, how: str) -> Callable[[], None]:
    """Make the server refuse new writes or connections; returns the undo."""
    if how == "maxmemory":
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        return lambda: admin.config_set("maxmemory", 0)
    admin.config_set("maxclients", 1)  # connections already open keep working
    return lambda: admin.config_set("maxclients", 10000)


class TestRetryNotPublished:
    """Issue 10 item 1: a retry Celery cannot publish must not take the event with it."""

    def test_event_survives_a_retry_the_broker_refused(self, sandbox: Sandbox) -> None:
        """A 503, then the worker cannot publish the retry (broker at ``maxclients``, its
        publishing pool closed): the run fails and Celery acknowledges the message, yet
        the journal on the buffer's Redis keeps the event and the flusher delivers it,
        once."""
        sandbox.set_faults(
            {
                "paths": ["/v2/event/"],
                "rules": [{"status": 503, "delay": 1.5, "count": 1}],
            }
        )
        with broker_of_its_own(sandbox, suprsend_retry_backoff_max=1) as (worker_app, app, admin):
            ended: list[str] = []

            def on_postrun(task_id: str = "", **_: Any) -> None:
                ended.append(task_id)

            task_postrun.connect(on_postrun, weak=False)
            try:
                with one_thread_worker(worker_app):
                    task_id = track_event.delay(
                        "u-refused", "order_placed", {"n": 1}, idempotency_key="k-ref"
                    ).id
                    wait_for(
                        lambda: sandbox.faults()["rules"][0]["applied"] >= 1,
                        20,
                        message="the first send to be in flight",
                    )
                    # The worker can no longer publish (kombu would otherwise reuse an
                    # open connection despite maxclients): its retry publish fails.
                    worker_app.amqp.producer_pool.force_close_all()
                    undo = _refuse(admin, "maxclients")
                    try:
                        wait_for(lambda: task_id in ended, 20, message="the run to end")
                    finally:
                        undo()
                    wait_for(
                        lambda: admin.hlen("unacked") == 0 and admin.llen(QUEUE) == 0,
                        10,
                        message="the message acknowledged (the run failed)",
                    )
            finally:
                task_postrun.disconnect(on_postrun)
            buffer = get_buffer(app)
            flusher = get_flusher(app)
            wait_for(
                lambda: flusher.run(time_budget=5).sent == 1,
                20,
                interval=0.2,
                message="the journaled event to be flushed",
            )
            assert [e["$idempotency_key"] for e in sandbox.events()] == ["k-ref"]
            assert buffer.redis.zcard(buffer.keys.journal) == 0
            assert buffer.dead_letters() == []
            buffer.redis.close()

    def test_an_acknowledgement_the_broker_refused_is_sent_again(
        self, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The broker refuses new connections as a run ends, so its acknowledgement
        fails: it is tried again until the broker takes it, and the worker, whose
        prefetch window is one message, takes its next task. (kombu frees a message's
        place in the window only once its acknowledgement reached Redis; Celery logs a
        failed one and forgets it, and the worker then took no more tasks.)"""
        with broker_of_its_own(sandbox, worker_prefetch_multiplier=1) as (worker_app, app, admin):
            sandbox.set_faults({"paths": ["/v2/event/"], "rules": [{"delay": 1.5, "count": 1}]})

            def sent() -> list[str]:
                return sorted(e["$idempotency_key"] for e in sandbox.events())

            with one_thread_worker(worker_app) as worker:
                track_event.delay("u-1", "order_placed", {"n": 1}, idempotency_key="k-1")
                wait_for(
                    lambda: sandbox.faults()["rules"][0]["applied"] >= 1,
                    20,
                    message="the first send to be in flight",
                )
                # The acknowledgement needs a new connection: the consumer's only open
                # one waits in BRPOP.
                worker.consumer.task_consumer.channel.pool.disconnect(inuse_connections=False)
                undo = _refuse(admin, "maxclients")
                try:
                    wait_for(
                        lambda: "did not take its message's acknowledgement" in caplog.text,
                        20,
                        message="the acknowledgement to fail",
                    )
                    assert sent() == ["k-1"]
                    assert admin.hlen("unacked") == 1
                finally:
                    undo()
                wait_for(
                    lambda: admin.hlen("unacked") == 0,
                    10,
                    message="the acknowledgement taken once the broker answers",
                )
                track_event.delay("u-2", "order_placed", {"n": 2}, idempotency_key="k-2")
                wait_for(
                    lambda: sent() == ["k-1", "k-2"],
                    20,
                    message="the worker to take its next task",
                )
            assert "its message is acknowledged (try" in caplog.text
            assert get_buffer(app).redis.zcard(get_buffer(app).keys.journal) == 0


class TestRedisDownAtCallTime:
    """Issue 11 item 2: accepting fails fast, with our error, and leaves nothing behind."""

    BOUND = 1.0  # suprsend_accept_timeout in these tests

    def _stopped(self) -> str:
        server = RedisServer(appendonly=False)
        server.start()
        url = server.url
        server.stop()
        return url

    def _timed(self, call: Callable[[], Any]) -> tuple[BaseException, float]:
        started = time.monotonic()
        with pytest.raises(SuprsendCeleryError) as caught:
            call()
        return caught.value, time.monotonic() - started

    @REDIS_KILLED
    def test_buffer_event_raises_buffer_unavailable(self, sandbox: Sandbox) -> None:
        """``buffer_event``/``buffer_events`` on a stopped Redis: BufferUnavailableError
        within the bound, the redis error chained, the keys named."""
        with app_on(self._stopped(), sandbox, suprsend_accept_timeout=self.BOUND) as app:
            error, took = self._timed(lambda: buffer_event("u1", "order_placed", app=app))
            assert isinstance(error, BufferUnavailableError)
            assert isinstance(error.__cause__, redis.RedisError)
            assert len(error.idempotency_keys) == 1
            assert took < self.BOUND + 0.5
            events = [Event("u1", "a_b", idempotency_key=f"k{i}") for i in range(3)]
            error, took = self._timed(lambda: buffer_events(events, app=app))
            assert isinstance(error, BufferUnavailableError)
            assert error.idempotency_keys == ("k0", "k1", "k2")
            assert took < self.BOUND + 0.5

    @REDIS_KILLED
    def test_async_producers_raise_our_errors(self, sandbox: Sandbox) -> None:
        """``abuffer_event`` and ``atrack_event`` on a stopped Redis: our errors, in time."""
        url = self._stopped()
        with app_on(url, sandbox, suprsend_accept_timeout=self.BOUND) as app:

            async def both() -> list[tuple[BaseException, float]]:
                outcomes = []
                for call in (
                    lambda: abuffer_event("u1", "order_placed", idempotency_key="k-a", app=app),
                    lambda: atrack_event("u1", "order_placed", idempotency_key="k-t", app=app),
                ):
                    started = time.monotonic()
                    with pytest.raises(SuprsendCeleryError) as caught:
                        await call()
                    outcomes.append((caught.value, time.monotonic() - started))
                await aclose(app)
                return outcomes

            (buffered, b_took), (direct, d_took) = asyncio.run(both())
            assert isinstance(buffered, BufferUnavailableError)
            assert buffered.idempotency_keys == ("k-a",)
            assert isinstance(direct, PublishError)
            assert direct.idempotency_keys == ("k-t",)
            assert b_took < self.BOUND + 0.5 and d_took < self.BOUND + 0.5

    @REDIS_KILLED
    def test_delay_with_everything_on_a_stopped_redis(self, sandbox: Sandbox) -> None:
        """Broker, result backend and buffer on one stopped Redis (the Django example):
        PublishError within the bound, not Celery's RuntimeError after 19 s."""
        url = self._stopped()
        with app_on(url, sandbox, result_backend=url, suprsend_accept_timeout=self.BOUND):
            error, took = self._timed(
                lambda: track_event.delay("u1", "order_placed", idempotency_key="k-down")
            )
            assert isinstance(error, PublishError)
            assert error.idempotency_keys == ("k-down",)
            assert isinstance(error.__cause__, BufferUnavailableError)
            assert took < self.BOUND + 0.5

    @REDIS_KILLED
    def test_delay_with_the_broker_down(self, sandbox: Sandbox) -> None:
        """The broker is down, the buffer's Redis is up: PublishError within the bound,
        and no journal entry is left to send an event the caller was told failed."""
        with (
            RedisServer(appendonly=False) as store,
            app_on(
                self._stopped(),
                sandbox,
                suprsend_redis_url=store.url,
                suprsend_accept_timeout=self.BOUND,
            ) as app,
        ):
            error, took = self._timed(
                lambda: track_event.delay("u1", "order_placed", idempotency_key="k-broker")
            )
            assert isinstance(error, PublishError)
            assert error.idempotency_keys == ("k-broker",)
            assert error.__cause__ is not None
            assert took < self.BOUND + 0.5
            buffer = get_buffer(app)
            assert buffer.redis.zcard(buffer.keys.journal) == 0
            assert get_flusher(app).run(time_budget=2).sent == 0
            assert sandbox.stats()["requests"] == 0
            buffer.redis.close()


class TestNoBroker:
    """Issue 11 item 8: an app without a broker URL is told so, once."""

    def test_warns_once(
        self,
        sandbox: Sandbox,
        redis_url: str,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Two ``delay()`` calls on an app with no broker_url: one warning naming the
        default it falls back to (the local RabbitMQ here, whose queue is then removed)."""
        monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
        queue = f"no-broker-{time.monotonic_ns()}"
        with (
            app_on(redis_url, sandbox, broker_url=None, task_default_queue=queue) as app,
            caplog.at_level(logging.WARNING, logger="suprsend_celery"),
        ):
            assert not app.conf.broker_url
            track_event.delay("u1", "order_placed")
            track_event.delay("u2", "order_placed")
            with app.connection_for_write() as conn:
                assert conn.transport_cls == "amqp"
                conn.default_channel.queue_delete(queue)
        warnings = [r for r in caplog.records if "has no broker_url" in r.getMessage()]
        assert len(warnings) == 1
        assert "amqp://localhost" in warnings[0].getMessage()
