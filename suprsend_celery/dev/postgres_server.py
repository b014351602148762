"""A private PostgreSQL server for tests and benchmarks (Debian's ``postgresql`` package).

    with PostgresServer() as pg:
        DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", **pg.django()}}

``find_postgres_bin()`` looks for ``initdb`` and ``postgres`` on ``PATH``, then under
``/usr/lib/postgresql/*/bin`` (Debian keeps them there), newest version first.
``PostgresServer`` runs ``initdb`` into a temporary directory and ``postgres`` on a
free loopback port as our child process, with durability off (``fsync``,
``synchronous_commit``, ``full_page_writes``): a test database, never a real one.
PostgreSQL refuses to run as root, so under root both run as the ``postgres`` user
(which the package creates), with the directory handed to it. The kernel kills the
server when we die (``PR_SET_PDEATHSIG``), and ``stop()`` removes the directory.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from ..exceptions import SuprsendCeleryError

__all__ = ["PostgresServer", "PostgresServerError", "find_postgres_bin"]

_PR_SET_PDEATHSIG = 1


class PostgresServerError(SuprsendCeleryError):
    """The PostgreSQL binaries are missing, or the server did not start."""


def find_postgres_bin() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``, or None if not installed."""
    found = shutil.which("initdb")
    if found:  # a symlink (as Debian's postgresql-common makes) leads to the real directory
        directory = Path(found).resolve().parent
        if all(os.access(directory / name, os.X_OK) for name in ("postgres", "pg_isready")):
            return directory

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True)
    for initdb in candidates:
        directory = Path(initdb).parent
        if all(os.access(directory / name, os.X_OK) for name in ("postgres", "pg_isready")):
            return directory
    return None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _as_user(uid: int | None, gid: int | None) -> Callable[[], None]:
    """What the child runs before exec: drop to ``uid`` (under root), then ask the kernel
    to kill it when we die (after the switch, which would clear that request)."""
    prctl = None
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def prepare() -> None:
        if uid is not None and gid is not None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != parent:
                os._exit(1)

    return prepare


_RUNNING: set[PostgresServer] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()


class PostgresServer:
    """``initdb`` + ``postgres`` on a loopback port; ``django()`` gives connection settings."""

    user = "postgres"
    database = "postgres"

    def __init__(self, bin_dir: Path | None = None, startup_timeout: float = 30.0) -> None:
        found = bin_dir or find_postgres_bin()
        if found is None:
            raise PostgresServerError(
                "PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on "
                "PATH): apt-get install postgresql"
            )
        self.bin_dir = found
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def _owner(self) -> tuple[int | None, int | None]:
        if os.geteuid() != 0:
            return None, None
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresServerError(
                "PostgreSQL refuses to run as root and there is no postgres user"
            ) from None
        return entry.pw_uid, entry.pw_gid

    def _run(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        uid, gid = self._owner()
        return subprocess.Popen(
            [str(self.bin_dir / args[0]), *args[1:]],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_as_user(uid, gid),  # noqa: PLW1509 - setuid and a pre-resolved prctl only
            **kwargs,
        )

    @property
    def log_path(self) -> Path:
        assert self._dir is not None
        return self._dir / "server.log"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> PostgresServer:
        """Create the cluster and start the server; return once it accepts connections."""
        if self._process is not None:
            return self
        self._dir = Path(tempfile.mkdtemp(prefix="suprsend-postgres-"))
        uid, gid = self._owner()
        if uid is not None and gid is not None:
            os.chown(self._dir, uid, gid)
        data = self._dir / "data"
        with open(self.log_path, "ab") as log:
            initdb = self._run(
                "initdb", "-D", str(data), "-U", self.user, "-A", "trust", "-E", "UTF8",
                "--locale=C", "--no-sync", "--no-instructions",
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        if initdb.wait(self.startup_timeout) != 0:
            tail = self.log_tail()
            self.stop()
            raise PostgresServerError(f"initdb failed:\n{tail}")
        self.port = _free_port(self.host)
        with open(self.log_path, "ab") as log:
            self._process = self._run(
                "postgres", "-D", str(data), "-p", str(self.port), "-k", str(self._dir),
                "-c", f"listen_addresses={self.host}", "-c", "fsync=off",
                "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "shared_buffers=32MB", "-c", "max_connections=60",
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        _RUNNING.add(self)
        deadline = time.monotonic() + self.startup_timeout
        while not self._ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise PostgresServerError(f"postgres did not start:\n{tail}")
            time.sleep(0.05)
        return self

    def _ready(self) -> bool:
        with contextlib.suppress(OSError):
            socket.create_connection((self.host, self.port), timeout=0.5).close()
            check = subprocess.run(
                [str(self.bin_dir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)],
                check=False,
                timeout=5,
            )
            return check.returncode == 0
        return False

    def django(self) -> dict[str, Any]:
        """``DATABASES`` entries (add ``ENGINE``) that reach this server."""
        return {"NAME": self.database, "USER": self.user, "HOST": self.host, "PORT": self.port}

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL if it lingers; remove the directory."""
        process, self._process = self._process, None
        _RUNNING.discard(self)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
