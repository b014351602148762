"""``suprsend-celery demo``: the whole pipeline on one machine, with failures injected.

What it starts, and stops again whatever happens (``try``/``finally``, SIGTERM too)::

    Redis (redis-server on PATH, else the Valkey bundled by the ``demo`` extra; AOF on)
    the sandbox (a local SuprSend) answering some requests with 503, 429 + Retry-After,
    an HTML 502, per-record errors and delays
    a worker with beat: python -m celery -A suprsend_celery.app worker --beat

Then it sends events both ways (``track_event.delay`` and ``buffer_event``/
``buffer_events``), some with a repeated idempotency key, waits until every accepted
event is either processed by the sandbox or dead-lettered, and prints what happened.
The exit status is 1 if any accepted event was lost (neither delivered nor
dead-lettered) and 0 otherwise.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from .redis_server import RedisServer, die_with_parent
from .sandbox import BULK_PATH, EVENT_PATH, Sandbox

__all__ = ["DemoResult", "fault_plan", "run_demo"]

QUEUE = "suprsend-demo"
REJECTED_EVENT = "demo_rejected"


def fault_plan() -> dict[str, Any]:
    """The failures the demo's sandbox injects; every one of them is recoverable but one."""
    return {
        "seed": 5,
        "rules": [
            # The direct path (one request per event).
            {"paths": [EVENT_PATH], "after": 5, "status": 503, "count": 3},
            # Processed, but the answer is lost: the retry must be deduplicated.
            {"paths": [EVENT_PATH], "after": 15, "status": 503, "process": True, "count": 2},
            {"paths": [EVENT_PATH], "after": 25, "status": 429, "retry_after": "1", "count": 2},
            {"paths": [EVENT_PATH], "after": 35, "status": 502, "html": True, "count": 2},
            # The buffered path (bulk requests of up to 100 records).
            {"paths": [BULK_PATH], "status": 502, "html": True, "count": 1},
            {"paths": [BULK_PATH], "after": 1, "status": 429, "retry_after": "1", "count": 1},
            {"paths": [BULK_PATH], "delay": 0.2, "count": 3},
            {
                "paths": [BULK_PATH],
                "record_errors": [
                    {
                        "event": REJECTED_EVENT,
                        "status": 400,
                        "message": "property 'plan' is not allowed here",
                        "type": "ValidationError",
                    },
                    {"rate": 0.05, "count": 8, "status": 500, "message": "try again"},
                ],
            },
        ],
    }


@dataclass
class DemoResult:
    """The figures of the final table."""

    accepted: int = 0
    direct: int = 0
    buffered: int = 0
    repeated_keys: int = 0
    unique: int = 0
    delivered: int = 0
    retried_events: int = 0
    extra_attempts: int = 0
    deduplicated: int = 0
    dead_lettered: int = 0
    lost: int = 0
    flush_rate: float | None = None
    seconds: float = 0.0
    faults: bool = True
    lost_keys: list[str] = field(default_factory=list)

    def table(self) -> str:
        rate = f"{self.flush_rate:,.0f}" if self.flush_rate else "n/a"
        rows = [
            (
                "accepted",
                self.accepted,
                f"{self.direct} track_event.delay, {self.buffered} buffer_event(s); "
                f"{self.repeated_keys} reuse an idempotency key",
            ),
            ("delivered", self.delivered, "distinct events processed by SuprSend (sandbox)"),
            (
                "retried",
                self.retried_events,
                f"events sent again after a 5xx/429/error ({self.extra_attempts} extra attempts)",
            ),
            ("deduplicated", self.deduplicated, "repeated sends SuprSend skipped by key"),
            ("dead-lettered", self.dead_lettered, "kept with their error: dead-letters list"),
            ("lost", self.lost, "accepted but neither delivered nor dead-lettered"),
        ]
        lines = [f"  {name:<14}{value:>7}   {note}" for name, value, note in rows]
        note = "events/s while flush_buffer ran"
        if self.faults:
            note += " (injected delays included)"
        lines.append(f"  {'flusher rate':<14}{rate:>7}   {note}")
        return "\n".join(lines)


class _Progress:
    """One line per update: rewritten in place on a terminal, throttled otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last = 0.0

    def show(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            self.out.write("\r" + text.ljust(78))
            self.out.flush()
        elif force or now - self.last >= 2.0:
            self.out.write(text + "\n")
            self.out.flush()
            self.last = now

    def done(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so every ``finally`` below runs."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Worker:
    """``python -m celery -A suprsend_celery.app worker --beat`` in its own process group."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.log_path = workdir / "worker.log"
        self.command = [
            sys.executable, "-m", "celery", "-A", "suprsend_celery.app",
            "worker", "--beat",
            "--loglevel", "WARNING",
            "--pool", "threads", "--concurrency", "16",  # I/O-bound: see docs/scaling.md
            "--queues", QUEUE,
            "--hostname", f"demo-{uuid.uuid4().hex[:6]}@%h",
            "--schedule", str(workdir / "beat-schedule"),
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        self.env = env
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its pool and beat share a group we can signal
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - dies with us, even on SIGKILL
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM); SIGKILL the whole group if it does not exit in time."""
        process, self.process = self.process, None
        if process is None:
            return
        group = process.pid
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        # Leftover pool children or the beat process go with the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
        process.wait()


def _producer_app(redis_url: str, sandbox: Sandbox) -> Any:
    from celery import Celery

    app = Celery("suprsend_demo", set_as_current=False)
    app.conf.update(
        broker_url=redis_url,
        result_backend=redis_url,
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        task_send_sent_event=True,
        suprsend_workspace_key=sandbox.workspace_key,
        suprsend_workspace_secret=sandbox.workspace_secret,
        suprsend_base_url=sandbox.url,
        suprsend_redis_url=redis_url,
    )
    return app


def _worker_env(redis_url: str, sandbox: Sandbox) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SUPRSEND_WORKSPACE_KEY=sandbox.workspace_key,
        SUPRSEND_WORKSPACE_SECRET=sandbox.workspace_secret,
        SUPRSEND_BASE_URL=sandbox.url,
        SUPRSEND_REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        CELERY_RESULT_BACKEND=redis_url,
        CELERY_TASK_DEFAULT_QUEUE=QUEUE,
        SUPRSEND_FLUSH_INTERVAL="1",
        # Short backoff so the demo's retries happen while you watch.
        SUPRSEND_RETRY_BACKOFF_MAX="2",
        SUPRSEND_REQUEST_TIMEOUT="5",
        PYTHONUNBUFFERED="1",
    )
    return env


def _send_events(
    app: Any, count: int, run: str, results: list[Any]
) -> tuple[collections.Counter[str], int]:
    """Send ``count`` events, half each way (direct results go to ``results``);
    returns how often each key was accepted and how many events repeat a key."""
    from ..events.model import Event
    from ..pipeline.producers import buffer_event, buffer_events
    from ..tasks.direct import track_event

    accepted: collections.Counter[str] = collections.Counter()
    repeated = 0
    direct = count // 2

    def key_for(i: int) -> str:
        # Every tenth event repeats the key of the one before, like a double-clicked button.
        nonlocal repeated
        if i % 10 == 9:
            repeated += 1
            return f"demo-{run}-{i - 1}"
        return f"demo-{run}-{i}"

    for i in range(direct):
        key = key_for(i)
        results.append(
            track_event.delay(
                f"user-{i % 37}", "demo_signup", {"i": i, "plan": "pro"}, idempotency_key=key
            )
        )
        accepted[key] += 1

    buffered = list(range(direct, count))
    singles, batch = buffered[: len(buffered) // 2], buffered[len(buffered) // 2 :]
    for i in singles:
        name = REJECTED_EVENT if i == singles[0] else "demo_page_view"
        key = buffer_event(
            f"user-{i % 37}", name, {"i": i, "plan": "pro"}, idempotency_key=key_for(i), app=app
        )
        accepted[key] += 1
    for start in range(0, len(batch), 50):
        events = [
            Event(f"user-{i % 37}", "demo_page_view", {"i": i}, idempotency_key=key_for(i))
            for i in batch[start : start + 50]
        ]
        for key in buffer_events(events, app=app):
            accepted[key] += 1
    return accepted, repeated


def _flush_rate(client: Any) -> float | None:
    """Events per second of the worker's flush runs, from their stored task results."""
    sent = 0
    seconds = 0.0
    for key in client.scan_iter(match="celery-task-meta-*", count=500):
        raw = client.get(key)
        try:
            meta = json.loads(raw) if raw else {}
        except ValueError:
            continue
        result = meta.get("result")
        if isinstance(result, dict) and result.get("sent") and "seconds" in result:
            sent += int(result["sent"])
            seconds += float(result["seconds"])
    if not sent or seconds <= 0:
        return None
    return sent / seconds


def run_demo(
    events: int = 300,
    faults: bool = True,
    timeout: float = 120.0,
    out: TextIO | None = None,
) -> int:
    """Run the demo and print its table; returns the exit status (1 if anything was lost)."""
    out = sys.stdout if out is None else out
    started = time.monotonic()

    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    workdir = Path(tempfile.mkdtemp(prefix="suprsend-demo-"))
    server: RedisServer | None = None
    sandbox: Sandbox | None = None
    worker: _Worker | None = None
    app: Any = None
    results: list[Any] = []  # AsyncResults of the direct sends
    try:
        with _sigterm_as_interrupt():
            server = RedisServer(appendonly=True, appendfsync="always").start()
            say(f"redis      {os.path.basename(server.binary)} on {server.url} (AOF, fsync always)")
            sandbox = Sandbox().start()
            if faults:
                plan = sandbox.set_faults(fault_plan())
                say(f"sandbox    {sandbox.url} with {len(plan.rules)} fault rules")
            else:
                say(f"sandbox    {sandbox.url} without faults")
            worker = _Worker(workdir, _worker_env(server.url, sandbox))
            worker.start()
            say("worker     celery -A suprsend_celery.app worker --beat (flush every 1s)")

            app = _producer_app(server.url, sandbox)
            app.set_current()
            run = uuid.uuid4().hex[:8]
            accepted, repeated = _send_events(app, events, run, results)
            direct = events // 2
            say(
                f"sent       {direct} with track_event.delay, {events - direct} with "
                f"buffer_event/buffer_events ({repeated} repeat a key)"
            )
            result = _wait(app, server, sandbox, worker, accepted, results, timeout, out)
            result.accepted = events
            result.direct = direct
            result.buffered = events - direct
            result.repeated_keys = repeated
            result.faults = faults
            client = server.client()
            try:
                result.flush_rate = _flush_rate(client)
            finally:
                client.close()
            result.seconds = time.monotonic() - started
            say("")
            say(result.table())
            if result.lost:
                say("")
                say(f"LOST {result.lost} event(s), e.g. {', '.join(result.lost_keys[:5])}")
                if not worker.alive():
                    say("the worker died; last lines of its log:\n" + worker.log_tail())
                return 1
            say("")
            say("lost 0: every accepted event was delivered once or dead-lettered.")
            return 0
    except KeyboardInterrupt:
        say("\ninterrupted; stopping everything")
        return 130
    finally:
        # AsyncResults unsubscribe from Redis when collected: do it while Redis runs.
        results.clear()
        gc.collect()
        if app is not None:
            with contextlib.suppress(Exception):
                app.close()
        if worker is not None:
            worker.stop()
        if sandbox is not None:
            sandbox.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _wait(
    app: Any,
    server: RedisServer,
    sandbox: Sandbox,
    worker: _Worker,
    accepted: collections.Counter[str],
    results: list[Any],
    timeout: float,
    out: TextIO,
) -> DemoResult:
    """Poll until every key is delivered or dead-lettered (and all sends settled)."""
    from ..pipeline.runtime import get_buffer

    buffer = get_buffer(app)
    progress = _Progress(out)
    deadline = time.monotonic() + timeout
    unique = set(accepted)
    delivered: set[str] = set()
    dead: set[str] = set()
    while True:
        delivered = {str(e.get("$idempotency_key")) for e in sandbox.events()} & unique
        dead = {letter.idempotency_key or "" for letter in buffer.dead_letters(limit=10_000)}
        dead &= unique
        stats = buffer.stats()
        progress.show(
            f"delivered {len(delivered)}/{len(unique)}  pending {stats['pending']}  "
            f"in flight {stats['in_flight']}  retries {stats['scheduled_retries']}  "
            f"dead {stats['dead']}  breaker {stats['breaker']}"
        )
        settled = (
            len(delivered | dead) == len(unique)
            and buffer.remaining() == 0
            and all(r.ready() for r in results)
        )
        if settled or time.monotonic() > deadline or not worker.alive():
            break
        time.sleep(0.25)
    progress.show(
        f"delivered {len(delivered)}/{len(unique)}, dead-lettered {len(dead)}", force=True
    )
    progress.done()

    sends: collections.Counter[str] = collections.Counter()
    for request in sandbox.requests():
        for key in request.idempotency_keys:
            if key is not None:
                sends[key] += 1
    extra = {key: sends[key] - accepted[key] for key in unique if sends[key] > accepted[key]}
    lost = sorted(unique - delivered - dead)
    return DemoResult(
        unique=len(unique),
        delivered=len(delivered),
        retried_events=len(extra),
        extra_attempts=sum(extra.values()),
        deduplicated=sandbox.stats()["duplicates_skipped"],
        dead_lettered=len(dead),
        lost=len(lost),
        lost_keys=lost,
    )
