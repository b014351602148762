"""The Redis the buffer needs (issue 10 item 2) and which Redis the CLI read (issue 11 item 4).

A Redis that may evict keys (``allkeys-*``) lost 22,106 of 40,000 accepted events and
every dead letter without a word; now accepting into one is refused. A Redis at its
``maxmemory`` under ``noeviction`` refuses writes; the caller gets ``BufferFullError``.
Each runs against a real ``redis-server`` started with the policy.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from click.testing import CliRunner
from conftest import make_app, wait_for

from suprsend_celery import (
    BufferFullError,
    ConfigurationError,
    Event,
    buffer_event,
    buffer_events,
    track_event,
)
from suprsend_celery.buffer.redis_buffer import RedisBuffer
from suprsend_celery.dev.redis_server import RedisServer
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.ops.cli import cli
from suprsend_celery.pipeline.async_producers import abuffer_event, aclose
from suprsend_celery.pipeline.settings import reset_settings


@pytest.fixture
def server_with() -> Iterator[Callable[..., RedisServer]]:
    """Start a private redis-server with the given ``CONFIG`` arguments."""
    servers: list[RedisServer] = []

    def start(*args: str) -> RedisServer:
        server = RedisServer(appendonly=False, extra_args=args).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def app_on(sandbox: Sandbox) -> Iterator[Callable[[str], Celery]]:
    apps: list[Celery] = []

    def build(url: str) -> Celery:
        app = make_app(url, sandbox.url)
        apps.append(app)
        return app

    yield build
    for app in apps:
        reset_settings(app)
        app.close()


def abuffer(app: Celery, *args: Any, **kwargs: Any) -> str:
    """``abuffer_event`` in a loop of its own, its connections closed before the loop."""

    async def call() -> str:
        try:
            return await abuffer_event(*args, app=app, **kwargs)
        finally:
            await aclose(app)

    return asyncio.run(call())


def info_calls(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_info", {}).get("calls", 0))


class TestEvictingRedis:
    @pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
    def test_accepting_is_refused(
        self, server_with: Callable[..., RedisServer], app_on: Callable[[str], Celery], policy: str
    ) -> None:
        """buffer_event, buffer_events and abuffer_event refuse; nothing is buffered."""
        server = server_with("--maxmemory", "16mb", "--maxmemory-policy", policy)
        app = app_on(server.url)
        with pytest.raises(ConfigurationError) as info:
            buffer_event("u1", "signed_up", app=app)
        message = str(info.value)
        assert f"maxmemory-policy {policy}" in message
        assert "noeviction" in message and "suprsend_redis_url" in message
        with pytest.raises(ConfigurationError, match=policy):
            buffer_events([Event("u1", "signed_up")], app=app)
        with pytest.raises(ConfigurationError, match=policy):
            abuffer(app, "u1", "signed_up")
        with redis.Redis.from_url(server.url) as client:
            assert client.dbsize() == 0

    def test_track_event_delay_is_refused_before_publishing(
        self, server_with: Callable[..., RedisServer], app_on: Callable[[str], Celery]
    ) -> None:
        """The direct path journals in that Redis (and its broker may be it): refused too."""
        server = server_with("--maxmemory", "16mb", "--maxmemory-policy", "allkeys-lru")
        app = app_on(server.url)
        app.set_current()
        with pytest.raises(ConfigurationError, match="allkeys-lru"):
            track_event.delay("u1", "signed_up")
        with redis.Redis.from_url(server.url) as client:
            assert client.dbsize() == 0  # nothing journaled, nothing published

    def test_checked_once_then_again_after_the_interval(
        self, server_with: Callable[..., RedisServer]
    ) -> None:
        """One INFO for many accepts; a fixed policy is seen at the next reading."""
        server = server_with("--maxmemory-policy", "allkeys-lru")
        client = redis.Redis.from_url(server.url)
        buffer = RedisBuffer(client, prefix="policy", policy_recheck=0.5)
        client.config_resetstat()
        for _ in range(50):
            with pytest.raises(ConfigurationError):
                buffer.push([b'{"a": 1}'])
        assert info_calls(client) == 1
        client.config_set("maxmemory-policy", "noeviction")
        time.sleep(0.01)  # still inside the interval: the refusal stands
        with pytest.raises(ConfigurationError):
            buffer.push([b'{"a": 1}'])

        def accepted() -> bool:
            try:
                buffer.push([b'{"a": 1}'])
            except ConfigurationError:
                return False
            return True

        wait_for(accepted, timeout=5, message="the fixed policy to be seen")
        client.config_resetstat()
        for _ in range(50):
            buffer.push([b'{"a": 1}'])
        assert info_calls(client) == 0
        client.close()

    def test_volatile_and_noeviction_are_accepted(
        self, server_with: Callable[..., RedisServer], app_on: Callable[[str], Celery]
    ) -> None:
        """Only allkeys-* is refused: volatile-* never touches our keys (they have no TTL)."""
        server = server_with("--maxmemory-policy", "volatile-lru")
        assert buffer_event("u1", "signed_up", app=app_on(server.url))

    def test_status_shows_the_policy(
        self, server_with: Callable[..., RedisServer], app_on: Callable[[str], Celery]
    ) -> None:
        server = server_with("--maxmemory", "16mb", "--maxmemory-policy", "allkeys-lru")
        app = app_on(server.url)
        table = CliRunner().invoke(cli, ["status"], obj=app)
        assert table.exit_code == 0, table.output
        assert "maxmemory-policy   allkeys-lru (evicts keys" in table.stdout
        figures = json.loads(CliRunner().invoke(cli, ["status", "--json"], obj=app).stdout)
        assert figures["maxmemory_policy"] == "allkeys-lru"
        assert figures["maxmemory"] == 16 * 1024 * 1024


class TestFullRedis:
    def test_noeviction_at_maxmemory_is_buffer_full(
        self, server_with: Callable[..., RedisServer], app_on: Callable[[str], Celery]
    ) -> None:
        """At maxmemory the call site gets BufferFullError (the OOM error chained)."""
        server = server_with("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
        app = app_on(server.url)
        blob = "x" * 20_000
        with pytest.raises(BufferFullError) as info:
            for i in range(1000):
                buffer_event(f"u{i}", "signed_up", {"blob": blob}, app=app)
        assert "maxmemory" in str(info.value) and "noeviction" in str(info.value)
        assert isinstance(info.value.__cause__, redis.exceptions.OutOfMemoryError)
        with pytest.raises(BufferFullError):
            abuffer(app, "u1", "signed_up", {"blob": blob})


class TestCliNamesItsRedis:
    """Every verb says which Redis (password masked) and key prefix it read."""

    @pytest.mark.parametrize(
        "args",
        [
            ["status"],
            ["flush"],
            ["dead-letters", "list"],
            ["dead-letters", "requeue", "--all"],
            ["dead-letters", "purge", "--all", "--yes"],
            ["check"],
        ],
    )
    def test_every_verb(
        self, server_with: Callable[..., RedisServer], sandbox: Sandbox, args: list[str]
    ) -> None:
        server = server_with("--requirepass", "s3cret-pw")
        url = f"redis://:s3cret-pw@127.0.0.1:{server.port}/3"
        app = make_app(url, sandbox.url, suprsend_key_prefix="shop")
        try:
            result = CliRunner().invoke(cli, args, obj=app)
        finally:
            reset_settings(app)
            app.close()
        assert result.exit_code == 0, result.output
        first = result.stdout.splitlines()[0]
        assert first.endswith(f"Redis redis://:***@127.0.0.1:{server.port}/3, key prefix shop")
        assert "s3cret-pw" not in result.output

    def test_json_includes_them(self, celery_app: Celery, redis_url: str) -> None:
        port = redis_url.rsplit(":", 1)[1].split("/", maxsplit=1)[0]
        for args in (["status", "--json"], ["dead-letters", "list", "--json"]):
            shown = json.loads(CliRunner().invoke(cli, args, obj=celery_app).stdout)
            assert shown["redis"] == f"redis://127.0.0.1:{port}/0"
            assert shown["key_prefix"] == "suprsend_celery"

    @pytest.mark.slow
    def test_without_app_says_it_is_a_guess(self, server_with: Callable[..., RedisServer]) -> None:
        """No -A and no Redis in the environment: the CLI says which Redis it guessed."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPRSEND_", "CELERY_"))}
        env.update(SUPRSEND_WORKSPACE_KEY="WSKEY_cli_guess_0123", SUPRSEND_WORKSPACE_SECRET="s")
        from test_cli import run_subprocess

        done = run_subprocess(["dead-letters", "list"], env)
        assert "Redis redis://127.0.0.1:6379/0, key prefix suprsend_celery (a guess" in (
            done.stdout
        )
