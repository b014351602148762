"""``LeanScript`` against redis-py's ``Script`` on a real Redis: the same bytes on the
wire, the same replies and errors, and the same recovery from a lost script cache or a
restarted server."""

from __future__ import annotations

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from suprsend_celery.buffer import lean_eval
from suprsend_celery.buffer import scripts as lua
from suprsend_celery.buffer.keys import Keys
from suprsend_celery.buffer.lean_eval import LeanScript, lean_script, pack_command, pack_commands
from suprsend_celery.dev.redis_server import RedisServer

NO_RETRY = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
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
        assert LeanScript(redis_client, ECHO)(keys=["k"], args=["a"]) == [b"k", b"a", 1, 1]


class TestCalls:
    def test_same_replies_and_errors_as_script(self, redis_client: redis.Redis) -> None:
        lean, script = LeanScript(redis_client, ECHO), redis_client.register_script(ECHO)
        assert lean.sha == script.sha
        assert lean(keys=["k"], args=["é", 2.5]) == [b"k", "é".encode(), 2, 1]
        assert script(keys=["k"], args=["é", 2.5]) == [b"k", "é".encode(), 2, 2]
        failing = "return redis.error_reply('NOPE no such thing')"
        errors = []
        for call in (LeanScript(redis_client, failing), redis_client.register_script(failing)):
            with pytest.raises(redis.ResponseError) as caught:
                call(keys=[], args=[])
            errors.append((type(caught.value), str(caught.value)))
        assert errors[0] == errors[1] == (redis.ResponseError, "NOPE no such thing")

    def test_a_flushed_script_cache_is_filled_again(self, redis_client: redis.Redis) -> None:
        lean = LeanScript(redis_client, ECHO)
        assert lean(keys=["k"], args=["a"])[3] == 1
        redis_client.script_flush()
        assert lean(keys=["k"], args=["a"])[3] == 2  # EVAL ran it, and cached it
        assert redis_client.script_exists(lean.sha) == [True]
        assert lean(keys=["k"], args=["a"])[3] == 3

    def test_a_restarted_server_is_reached_again(self) -> None:
        """The connection the pool kept is stale after a restart; the next call gets a
        fresh one (the pool checks a connection out as it does for ``Script``), and the
        new server, which never saw the script, runs it."""
        with RedisServer(appendonly=False) as server:
            client = redis.Redis.from_url(server.url)
            lean = LeanScript(client, ECHO)
            assert lean(keys=["k"], args=["a"])[3] == 1
            server.restart()
            assert lean(keys=["k"], args=["a"])[3] == 1
            client.close()

    def test_a_stopped_server_raises_connection_error(self) -> None:
        """As ``Script`` does with the buffer's client (no retries on one server); the
        connection goes back to the pool, so calls work again once Redis is back."""
        with RedisServer(appendonly=False) as server:
            client = redis.Redis.from_url(server.url, max_connections=1, retry=NO_RETRY)
            lean = LeanScript(client, ECHO)
            lean(keys=["k"], args=["a"])
            server.stop()
            for _ in range(3):
                with pytest.raises(redis.ConnectionError):
                    lean(keys=["k"], args=["a"])
            server.start()
            assert lean(keys=["k"], args=["a"])[3] == 1  # the one connection came back
            client.close()

    def test_the_queue_uses_it_for_its_per_batch_scripts(self, redis_client: redis.Redis) -> None:
        from suprsend_celery.buffer.redis_buffer import RedisBuffer

        buffer = RedisBuffer(redis_client, prefix="lean")
        queue = buffer.queue
        for script in (queue._claim, queue._settle, queue._extend, queue._finish_run):
            assert isinstance(script, LeanScript)
        buffer.push([b'{"distinct_id": "u", "$idempotency_key": "k1"}'])
        claim = buffer.claim(10, 30.0)
        assert claim.items == [b'{"distinct_id": "u", "$idempotency_key": "k1"}']
        assert isinstance(lean_script(redis_client, lua.EXTEND.source), LeanScript)
        assert redis_client.llen(Keys.of("lean").pending) == 0  # the claim took it
