"""What every scenario shares: the events, the child processes, the sandbox, the numbers.

Every process a scenario starts is a ``Child``: its own session (so a SIGKILL of the
group takes a Celery worker and its pool processes down together), killed by the
kernel if we die (``PR_SET_PDEATHSIG``), and stopped in a ``finally``. The sandbox runs
in a child too, so its CPU is never counted as ours.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import requests

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

WORKSPACE_KEY = "WSKEY_bench_0123456789abcdef"
WORKSPACE_SECRET = "WSSECRET_bench_0123456789"
EVENT_NAME = "order_placed"
PREFIX = "suprsend_bench"

_CURRENCIES = ("EUR", "USD", "GBP", "INR")
_CHANNELS = ("web", "ios", "android")


def process_cpu() -> float:
    """CPU seconds (user + system) this process has used: a sender's own cost."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def properties(i: int) -> dict[str, Any]:
    """Realistic order properties; with the envelope a record is about 330 bytes."""
    return {
        "order_id": f"ord-{i:08d}",
        "amount": round(10 + (i * 7919) % 50000 / 100, 2),
        "currency": _CURRENCIES[i % 4],
        "items": 1 + i % 5,
        "channel": _CHANNELS[i % 3],
    }


def event_args(i: int, run: str) -> tuple[str, str, dict[str, Any], str]:
    """``(distinct_id, event_name, properties, idempotency_key)`` of event ``i``."""
    return f"user-{i % 10007}", EVENT_NAME, properties(i), f"{run}-{i}"


def run_id() -> str:
    return uuid.uuid4().hex[:8]


# -- child processes -------------------------------------------------------------


def _die_with_parent() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return preexec


_LIVE: set[Child] = set()


class Child:
    """A subprocess in its own session that never outlives us."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stdin: bool = False,
        stdout: bool = False,
        log: Path | None = None,
    ) -> None:
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        )
        full_env.update(env or {})
        self.argv = list(argv)
        self.log = log
        log_file = open(log, "ab") if log else None  # noqa: SIM115 - closed below
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO,
            env=full_env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else (log_file or subprocess.DEVNULL),
            stderr=log_file or subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
        if log_file is not None:
            log_file.close()  # the child has its own copy; a killed one never reaches stop()
        self.pid = self.proc.pid
        _LIVE.add(self)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def read_json(self, timeout: float = 60.0) -> dict[str, Any]:
        """The next line of JSON the child prints (others are skipped), with a deadline."""
        assert self.proc.stdout is not None
        result: list[Any] = []

        def reader() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").strip()
                if line.startswith("{"):
                    result.append(json.loads(line))
                    return

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        thread.join(timeout)
        if not result:
            raise RuntimeError(
                f"{self.argv[:4]} printed no result within {timeout}s "
                f"(exit code {self.proc.poll()}); log: {self.log}"
            )
        return dict(result[0])

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole group (a worker and its pool processes) and reap it."""
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, then SIGKILL whatever is left after ``timeout``."""
        if self.alive():
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self._signal_group(signal.SIGKILL)  # pool processes that outlived their parent
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        _LIVE.discard(self)

    def cpu_seconds(self) -> float:
        """User plus system CPU of this process and its live descendants."""
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def rss(self) -> int:
        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except psutil.NoSuchProcess:
            return 0


def stop_all() -> None:
    for child in list(_LIVE):
        child.stop(timeout=3)


# -- the sandbox in its own process ------------------------------------------------


class SandboxProcess:
    """``python -m benchmarks._sandbox``: the sandbox, controlled over its HTTP routes."""

    def __init__(
        self, log: Path | None = None, max_events: int = 20_000, max_requests: int = 10_000
    ) -> None:
        self.child = Child(
            [
                PYTHON,
                "-m",
                "benchmarks._sandbox",
                "--key",
                WORKSPACE_KEY,
                "--secret",
                WORKSPACE_SECRET,
                "--max-events",
                str(max_events),
                "--max-requests",
                str(max_requests),
            ],
            stdout=True,
            log=log,
        )
        self.url: str = self.child.read_json(30)["url"]
        self._http = requests.Session()
        #: Seconds the sandbox waits before answering each event request (an API's
        #: latency); kept across ``reset()``, which clears every other fault.
        self.delay = 0.0
        #: A whole fault plan kept across ``reset()`` instead (a load model), if set.
        self.plan: dict[str, Any] | None = None

    def _get(self, route: str) -> Any:
        response = self._http.get(self.url + route, timeout=60)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, int]:
        return dict(self._get("_sandbox/stats"))

    def events(self) -> list[dict[str, Any]]:
        return list(self._get("_sandbox/events"))

    def processed(self) -> dict[str, float]:
        """When each idempotency key was processed (``time.time()`` in the sandbox)."""
        return {p["idempotency_key"]: p["processed_at"] for p in self._get("_sandbox/processed")}

    def requests(self) -> list[dict[str, Any]]:
        return list(self._get("_sandbox/requests"))

    def reset(self) -> None:
        self._http.post(self.url + "_sandbox/reset", timeout=30).raise_for_status()
        if self.plan:
            self.set_faults(self.plan)
        elif self.delay:
            self.set_faults({"rules": [{"delay": self.delay}]})

    def set_faults(self, plan: dict[str, Any] | None) -> None:
        if plan is None:
            self._http.delete(self.url + "_sandbox/faults", timeout=30).raise_for_status()
        else:
            self._http.post(self.url + "_sandbox/faults", json=plan, timeout=30).raise_for_status()

    def wait_processed(self, count: int, timeout: float) -> float:
        """Poll until ``count`` events were processed; returns when (perf_counter)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.stats()["events_processed"] >= count:
                return time.perf_counter()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"sandbox processed {self.stats()} but {count} were expected within {timeout}s"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        self._http.close()
        self.child.stop()


# -- Celery workers ----------------------------------------------------------------


def relay_env(redis_url: str, sandbox_url: str, queue: str, **extra: str) -> dict[str, str]:
    """Environment for ``celery -A suprsend_celery.app worker`` (the standalone relay)."""
    env = {
        "SUPRSEND_WORKSPACE_KEY": WORKSPACE_KEY,
        "SUPRSEND_WORKSPACE_SECRET": WORKSPACE_SECRET,
        "SUPRSEND_BASE_URL": sandbox_url,
        "SUPRSEND_REDIS_URL": redis_url,
        "SUPRSEND_KEY_PREFIX": PREFIX,
        "SUPRSEND_FLUSH_INTERVAL": "0",
        "CELERY_BROKER_URL": redis_url,
        "CELERY_TASK_DEFAULT_QUEUE": queue,
    }
    env.update(extra)
    return env


def start_worker(
    app_module: str,
    queues: str,
    env: dict[str, str],
    *,
    concurrency: int = 2,
    name: str = "bench",
    log: Path | None = None,
    beat: bool = False,
    extra: Sequence[str] = (),
    pool: str = "prefork",
) -> Child:
    argv = [
        PYTHON,
        "-m",
        "celery",
        "-A",
        app_module,
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        "-Q",
        queues,
        "-n",
        f"{name}-{uuid.uuid4().hex[:6]}@%h",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=WARNING",
        *extra,
    ]
    if beat:
        argv.append("--beat")
    return Child(argv, env=env, log=log)


def producer_app(redis_url: str, sandbox_url: str, queue: str, *, current: bool = True) -> Any:
    """The producer side's Celery app (this process), by default made current."""
    from celery import Celery

    app = Celery("bench-producer", set_as_current=False)
    app.conf.update(
        broker_url=redis_url,
        result_backend=redis_url,
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        suprsend_workspace_key=WORKSPACE_KEY,
        suprsend_workspace_secret=WORKSPACE_SECRET,
        suprsend_base_url=sandbox_url,
        suprsend_redis_url=redis_url,
        suprsend_key_prefix=PREFIX,
        suprsend_flush_interval=0,
    )
    if current:
        app.set_current()
        app.set_default()
    return app


# -- numbers ---------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@contextlib.contextmanager
def children_stopped(*children: Child | None) -> Iterator[None]:
    try:
        yield
    finally:
        for child in children:
            if child is not None:
                child.stop()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
