"""``LeanScript`` against redis-py's ``Script`` on a real Redis: the same bytes on the
wire, the same replies and errors, and the same recovery from a lost script cache or a
restarted server."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from suprsend_celery.buffer import lean_eval
from suprsend_celery.buffer import scripts as lua
from suprsend_celery.buffer.keys import Keys
from suprsend_celery.buffer.lean_eval import (
    LeanScript,
    ScriptConnections,
    pack_command,
    pack_commands,
)
from suprsend_celery.dev.redis_server import RedisServer

NO_RETRY = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
#: Counts its runs in KEYS[1], then keeps Redis busy for GET KEYS[2] milliseconds.
SLOW = """
local runs = redis.call('INCR', KEYS[1])
local ms = tonumber(redis.call('GET', KEYS[2]))
local t = redis.call('TIME')
local start = t[1] * 1000 + math.floor(t[2] / 1000)
while true do
    t = redis.call('TIME')
    if t[1] * 1000 + math.floor(t[2] / 1000) - start >= ms then break end
end
return runs
"""
ECHO = "return {KEYS[1], ARGV[1], #ARGV, redis.call('INCR', KEYS[1])}"

#: Every kind of value the scripts are given: text, bytes, ints and floats.
ARGUMENT = st.one_of(
    st.text(),
    st.binary(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)


class TestPacking:
    @settings(max_examples=300, deadline=None)
    @given(st.lists(ARGUMENT, min_size=1, max_size=12))
    def test_the_bytes_redis_py_would_send(self, arguments: list[object]) -> None:
        """hiredis's packer and redis-py's give the same bytes for our arguments (floats
        as ``repr``, text as UTF-8), so Redis sees exactly what ``Script`` would send."""
        conn = redis.Connection()  # packs without connecting
        command = ("EVALSHA", "0" * 40, 1, *arguments)
        assert pack_command(conn, command) == [b"".join(conn.pack_command(*command))]
        both = pack_commands(conn, [command, ("WAIT", 1, 250)])
        assert b"".join(both) == b"".join(conn.pack_commands([command, ("WAIT", 1, 250)]))

    def test_without_hiredis_redis_py_packs(
        self, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """hiredis is an extra: without it the connection's own packer is used."""
        monkeypatch.setattr(lean_eval, "_hiredis_pack", None)
        conn = redis.Connection()
        command = ("EVALSHA", "0" * 40, 1, "k", 2.5, b"\x00")
        assert pack_command(conn, command) == conn.pack_command(*command)
        assert LeanScript(ScriptConnections(redis_client), ECHO)(keys=["k"], args=["a"]) == [
            b"k",
            b"a",
            1,
            1,
        ]


class TestCalls:
    def test_same_replies_and_errors_as_script(self, redis_client: redis.Redis) -> None:
        lean, script = (
            LeanScript(ScriptConnections(redis_client), ECHO),
            redis_client.register_script(ECHO),
        )
        assert lean.sha == script.sha
        assert lean(keys=["k"], args=["é", 2.5]) == [b"k", "é".encode(), 2, 1]
        assert script(keys=["k"], args=["é", 2.5]) == [b"k", "é".encode(), 2, 2]
        failing = "return redis.error_reply('NOPE no such thing')"
        errors = []
        for call in (
            LeanScript(ScriptConnections(redis_client), failing),
            redis_client.register_script(failing),
        ):
            with pytest.raises(redis.ResponseError) as caught:
                call(keys=[], args=[])
            errors.append((type(caught.value), str(caught.value)))
        assert errors[0] == errors[1] == (redis.ResponseError, "NOPE no such thing")

    def test_a_flushed_script_cache_is_filled_again(self, redis_client: redis.Redis) -> None:
        lean = LeanScript(ScriptConnections(redis_client), ECHO)
        assert lean(keys=["k"], args=["a"])[3] == 1
        redis_client.script_flush()
        assert lean(keys=["k"], args=["a"])[3] == 2  # EVAL ran it, and cached it
        assert redis_client.script_exists(lean.sha) == [True]
        assert lean(keys=["k"], args=["a"])[3] == 3

    def test_a_restarted_server_is_reached_again(self) -> None:
        """Every idle connection is stale after a restart; each call notices at once and
        runs on a fresh one, and the new server, which never saw the script, runs it."""
        with RedisServer(appendonly=False) as server:
            client = redis.Redis.from_url(server.url)
            connections = ScriptConnections(client)
            lean = LeanScript(connections, ECHO)
            idle = [connections.checkout()[0] for _ in range(3)]
            for conn in idle:
                conn.connect()
                connections.checkin(conn)
            assert lean(keys=["k"], args=["a"])[3] == 1
            server.restart()
            assert [lean(keys=["k"], args=["a"])[3] for _ in range(4)] == [1, 2, 3, 4]
            connections.close()
            client.close()

    def test_a_stopped_server_raises_connection_error(self) -> None:
        """As ``Script`` does with the buffer's client (no retries on one server); no
        socket is left behind, and calls work again once Redis is back."""
        with RedisServer(appendonly=False) as server:
            client = redis.Redis.from_url(server.url, retry=NO_RETRY)
            lean = LeanScript(ScriptConnections(client), ECHO)
            lean(keys=["k"], args=["a"])
            server.stop()
            for _ in range(3):
                with pytest.raises(redis.ConnectionError):
                    lean(keys=["k"], args=["a"])
            server.start()
            assert [lean(keys=["k"], args=["a"])[3] for _ in range(5)] == [1, 2, 3, 4, 5]
            admin = server.client()
            assert len(admin.client_list()) == 2  # the admin and one script connection
            admin.close()
            client.close()

    def test_a_timeout_after_the_write_is_not_sent_again(self) -> None:
        """A script still running past the read timeout: the call fails with
        ``TimeoutError`` and is not sent again on another connection (which would run
        it a second time once the first ends: a claim or a settle twice)."""
        with RedisServer(appendonly=False) as server:
            client = redis.Redis.from_url(server.url, socket_timeout=0.3, retry=NO_RETRY)
            lean = LeanScript(ScriptConnections(client), SLOW)
            admin = server.client()
            admin.set("slow-ms", 0)
            assert lean(keys=["k", "slow-ms"]) == 1  # an idle connection, as a flusher has
            admin.set("slow-ms", 450)  # ends within a new connection's handshake timeout
            with pytest.raises(redis.TimeoutError):
                lean(keys=["k", "slow-ms"])
            time.sleep(1.5)
            assert int(admin.get("k") or 0) == 2  # the first call and the slow one, once
            admin.set("slow-ms", 0)
            assert lean(keys=["k", "slow-ms"]) == 3
            admin.close()
            client.close()

    def test_a_forked_child_opens_its_own_connections(self, redis_client: redis.Redis) -> None:
        """A prefork pool's child never writes on its parent's sockets."""
        connections = ScriptConnections(redis_client)
        lean = LeanScript(connections, ECHO)
        lean(keys=["k"], args=["a"])
        parent_conn = connections.checkout()[0]
        connections.checkin(parent_conn)
        context = multiprocessing.get_context("fork")
        results = context.Queue()

        def child() -> None:
            fresh = connections.checkout()
            results.put((fresh[1], lean(keys=["k"], args=["a"])[3]))

        process = context.Process(target=child)
        process.start()
        process.join(30)
        assert process.exitcode == 0
        assert results.get(timeout=5) == (True, 2)
        assert lean(keys=["k"], args=["a"])[3] == 3  # the parent's connection still in step

    def test_the_queue_uses_it_for_its_per_batch_scripts(self, redis_client: redis.Redis) -> None:
        from suprsend_celery.buffer.redis_buffer import RedisBuffer

        buffer = RedisBuffer(redis_client, prefix="lean")
        queue = buffer.queue
        for script in (queue._claim, queue._settle, queue._extend, queue._finish_run):
            assert isinstance(script, LeanScript)
        buffer.push([b'{"distinct_id": "u", "$idempotency_key": "k1"}'])
        claim = buffer.claim(10, 30.0)
        assert claim.items == [b'{"distinct_id": "u", "$idempotency_key": "k1"}']
        assert isinstance(buffer.slot.script(lua.EXTEND.source), LeanScript)
        assert redis_client.llen(Keys.of("lean").pending) == 0  # the claim took it
