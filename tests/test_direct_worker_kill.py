"""The direct path survives a worker killed mid-send (SIGKILL): redelivered, sent once.

Real prefork workers run as subprocesses of the standalone relay app
(``suprsend_celery.app``, configured from the environment) on the test Redis; the
sandbox holds the first request open (a delay fault) so the kill lands while it is in
flight. SuprSend's idempotency then turns the resend into a counted duplicate.

A whole worker killed (its process group: an OOM kill, a node lost) under the broker's
default visibility timeout of an hour: the journal delivers the event within the grace
of the missed attempt (``TestWorkerLostForAnHour``), and the broker's redelivery, made
to come early here by ageing kombu's ``unacked_index``, sends and counts nothing more.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult
from conftest import WORKSPACE_KEY, WORKSPACE_SECRET, wait_for

from suprsend_celery import track_event
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.pipeline.runtime import get_buffer, get_flusher
from suprsend_celery.tasks.attempt import TAKEN_STATUS

pytestmark = pytest.mark.slow

VISIBILITY_TIMEOUT = 5


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (from /proc, so no extra dependency)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry))
    return found


class RelayWorkers:
    """Starts prefork relay workers (``-c 1``) as subprocesses; kills them all at the end."""

    def __init__(self, redis_url: str, sandbox_url: str, queue: str, logs: Path) -> None:
        self.queue = queue
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        #: The worker's app module and extra worker options (e.g. ``--time-limit``).
        self.app_module = "suprsend_celery.app"
        self.options: list[str] = []
        self.env = {
            **os.environ,
            "SUPRSEND_WORKSPACE_KEY": WORKSPACE_KEY,
            "SUPRSEND_WORKSPACE_SECRET": WORKSPACE_SECRET,
            "SUPRSEND_BASE_URL": sandbox_url,
            "SUPRSEND_REDIS_URL": redis_url,
            "SUPRSEND_FLUSH_INTERVAL": "0",
            "CELERY_BROKER_URL": redis_url,
            "CELERY_RESULT_BACKEND": redis_url,
            "CELERY_TASK_DEFAULT_QUEUE": queue,
            "CELERY_WORKER_PREFETCH_MULTIPLIER": "1",
            "CELERY_BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            # Sweep for expired unacked messages every second, not every 100 s.
            "CELERY_BROKER_TRANSPORT_OPTIONS": json.dumps(
                {"unacked_restore_interval": 1, "unacked_restore_throttle": 1}
            ),
        }

    def start(self) -> subprocess.Popen[bytes]:
        index = len(self.procs)
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app_module,
            "worker",
            "--pool=prefork",
            "-c",
            "1",
            "-Q",
            self.queue,
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"kill{index}-{self.queue}@%h",
            *self.options,
        ]
        with open(self.logs / f"worker{index}.log", "wb") as log:
            proc = subprocess.Popen(
                cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs.append(proc)
        return proc

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))

    def close(self) -> None:
        """SIGKILL every worker's process group: the main process and its pool children,
        also children orphaned by an earlier kill of their parent."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


@pytest.fixture
def relay_workers(
    redis_url: str, sandbox: Sandbox, tmp_path: Path
) -> Iterator[Callable[[], RelayWorkers]]:
    queue = f"direct-kill-{uuid.uuid4().hex[:8]}"
    workers = RelayWorkers(redis_url, sandbox.url, queue, tmp_path)
    try:
        yield lambda: workers
    finally:
        workers.close()


@contextmanager
def diagnostics(workers: RelayWorkers, sandbox: Sandbox) -> Iterator[None]:
    """On failure, show what the workers logged and what the sandbox saw."""
    try:
        yield
    except BaseException as exc:
        detail = f"\nsandbox: {sandbox.stats()}\nworker logs:\n{workers.log()[-6000:]}"
        raise AssertionError(f"{exc}{detail}") from exc


def _publish(app: Celery, key: str) -> AsyncResult:
    result: AsyncResult = track_event.apply_async(
        ("u-kill", "order_placed", {"n": 1}), {"idempotency_key": key}
    )
    return result


def _request_in_flight(sandbox: Sandbox) -> bool:
    """The sandbox has received the request and is holding it (delay fault applied)."""
    return bool(sandbox.faults()["rules"][0]["applied"] >= 1)


def _delivered_once(sandbox: Sandbox, key: str) -> None:
    wait_for(
        lambda: sandbox.stats()["events_received"] >= 2,
        60,
        interval=0.1,
        message="the redelivered task to send again",
    )
    stats = sandbox.stats()
    assert stats["events_processed"] == 1, stats
    assert stats["duplicates_skipped"] == stats["events_received"] - 1, stats
    assert [e["$idempotency_key"] for e in sandbox.events()] == [key]


def test_pool_child_killed_mid_send(
    app_factory: Callable[..., Celery],
    sandbox: Sandbox,
    relay_workers: Callable[[], RelayWorkers],
) -> None:
    """SIGKILL of the pool process while the request is in flight: the message is
    requeued (reject_on_worker_lost), sent again, and processed exactly once."""
    workers = relay_workers()
    app = app_factory(task_default_queue=workers.queue)
    sandbox.set_faults({"rules": [{"delay": 3, "count": 1}]})
    key = f"kill-child-{uuid.uuid4().hex[:8]}"
    main = workers.start()
    with diagnostics(workers, sandbox):
        result = _publish(app, key)
        wait_for(lambda: _request_in_flight(sandbox), 60, 0.05, "the request to reach the sandbox")
        (child,) = _children(main.pid)
        os.kill(child, signal.SIGKILL)

        _delivered_once(sandbox, key)
        wait_for(lambda: result.state == "SUCCESS", 30, 0.1, "the task to succeed")
        assert result.result["idempotency_key"] == key
        assert main.poll() is None  # the main process survived and respawned its child


def test_main_process_killed_mid_send(
    app_factory: Callable[..., Celery],
    sandbox: Sandbox,
    relay_workers: Callable[[], RelayWorkers],
) -> None:
    """SIGKILL of the whole worker while the request is in flight: the unacknowledged
    message returns after the visibility timeout, another worker sends it, and it is
    processed exactly once."""
    workers = relay_workers()
    app = app_factory(task_default_queue=workers.queue)
    sandbox.set_faults({"rules": [{"delay": 3, "count": 1}]})
    key = f"kill-main-{uuid.uuid4().hex[:8]}"
    first = workers.start()
    with diagnostics(workers, sandbox):
        result = _publish(app, key)
        wait_for(lambda: _request_in_flight(sandbox), 60, 0.05, "the request to reach the sandbox")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)

        workers.start()
        _delivered_once(sandbox, key)
        wait_for(lambda: result.state == "SUCCESS", 30, 0.1, "the task to succeed")
        assert result.result["idempotency_key"] == key


def test_by_name_call_killed_mid_send(
    app_factory: Callable[..., Celery],
    sandbox: Sandbox,
    relay_workers: Callable[[], RelayWorkers],
) -> None:
    """A call published by name (``app.send_task``) with no key: SIGKILL of the pool
    process mid-send, the message is redelivered and built again with the same key (the
    task id), so SuprSend processes it once."""
    workers = relay_workers()
    app = app_factory(task_default_queue=workers.queue)
    sandbox.set_faults({"rules": [{"delay": 3, "count": 1}]})
    main = workers.start()
    with diagnostics(workers, sandbox):
        result = app.send_task(
            "suprsend_celery.track_event", args=["u-by-name", "order_placed", {"n": 1}]
        )
        wait_for(lambda: _request_in_flight(sandbox), 60, 0.05, "the request to reach the sandbox")
        (child,) = _children(main.pid)
        os.kill(child, signal.SIGKILL)

        _delivered_once(sandbox, result.id)
        wait_for(lambda: result.state == "SUCCESS", 30, 0.1, "the task to succeed")
        assert result.result["idempotency_key"] == result.id


def test_killed_task_stores_no_record(
    app_factory: Callable[..., Celery],
    sandbox: Sandbox,
    relay_workers: Callable[[], RelayWorkers],
    redis_client: redis.Redis,
) -> None:
    """``result_extended`` and a hard time limit: the result the worker stores for the
    killed task names the event and key, never the record's properties."""
    marker = "killed-marker-41f0-never-shown"
    workers = relay_workers()
    workers.app_module = "_extended_app"
    workers.env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parent), workers.env.get("PYTHONPATH", "")]
    )
    workers.options = ["--time-limit=1"]
    app_factory(task_default_queue=workers.queue)
    sandbox.set_faults({"rules": [{"delay": 5, "count": 1}]})
    workers.start()
    with diagnostics(workers, sandbox):
        result = track_event.delay("u-limit", "order_placed", {"note": marker})
        wait_for(lambda: result.state == "FAILURE", 60, 0.1, "the time limit to kill the task")
        stored = redis_client.get(f"celery-task-meta-{result.id}")
        assert stored is not None
        text = stored.decode()
        assert "TimeLimitExceeded" in text
        assert result.idempotency_key in text  # the redacted request names the key
        assert marker not in text
        assert "properties" not in text
        # The sandbox answers the held request after its delay, killed client or not:
        # let it finish here, not in the next test.
        wait_for(lambda: sandbox.stats()["events_processed"] == 1, 30, 0.1, "the held request")


#: The journal's grace in these tests (``suprsend_journal_grace``; a minute by default).
GRACE = 2.0
#: The workers' request timeout: an attempt holds its entry for this plus the connect
#: timeout (3.05 s) plus the grace.
REQUEST_TIMEOUT = 2.0
#: Kombu's default visibility timeout: the broker redelivers after an hour.
HOUR = 3600


class TestWorkerLostForAnHour:
    """Issue 21 item 5: a worker killed holding a direct event (mid-request, or while its
    retry's countdown runs) under an hour-long visibility timeout: the flusher sends the
    event from the journal within the grace of the missed attempt, SuprSend processes it
    once, and the broker's later redelivery sends nothing and counts nothing."""

    def _workers(
        self, relay_workers: Callable[[], RelayWorkers], app_factory: Callable[..., Celery]
    ) -> tuple[RelayWorkers, Celery]:
        workers = relay_workers()
        workers.env.update(
            CELERY_BROKER_VISIBILITY_TIMEOUT=str(HOUR),
            SUPRSEND_JOURNAL_GRACE=str(GRACE),
            SUPRSEND_REQUEST_TIMEOUT=str(REQUEST_TIMEOUT),
        )
        app = app_factory(task_default_queue=workers.queue, suprsend_journal_grace=GRACE)
        return workers, app

    @staticmethod
    def _kill_worker(proc: subprocess.Popen[bytes]) -> float:
        """SIGKILL the worker's whole process group (main process and pool); when."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        return time.monotonic()

    @staticmethod
    def _flushed_within(app: Celery, sandbox: Sandbox, since: float, bound: float) -> float:
        """Run the flusher (as beat would) until SuprSend processed the event; seconds taken."""
        flusher = get_flusher(app)

        def delivered() -> bool:
            flusher.run(time_budget=1)
            return bool(sandbox.stats()["events_processed"] >= 1)

        wait_for(delivered, bound, interval=0.2, message="the flusher to send the journaled event")
        return time.monotonic() - since

    @staticmethod
    def _redeliver(admin: redis.Redis, workers: RelayWorkers) -> None:
        """What the broker does an hour later: a live worker restores the dead worker's
        unacknowledged message. Its ``unacked_index`` score (when it was taken) is aged
        past the visibility timeout, so the next sweep (every second) restores it now."""
        tags = admin.zrange("unacked_index", 0, -1)
        assert len(tags) == 1, tags  # the dead worker's message, and nothing else
        admin.zadd("unacked_index", {tags[0]: 1})
        workers.start()

    def _no_second_delivery(
        self, app: Celery, sandbox: Sandbox, result: AsyncResult, key: str, requests: int
    ) -> dict[str, float]:
        """The redelivered task reports the event sent from the journal; nothing more was
        sent or counted. Returns the metrics."""
        wait_for(lambda: result.state == "SUCCESS", 60, 0.2, "the redelivered task to run")
        assert result.result["status"] == TAKEN_STATUS
        assert result.result["idempotency_key"] == key
        stats = sandbox.stats()
        assert stats["requests"] == requests, stats  # the redelivery sent nothing
        assert (stats["events_processed"], stats["duplicates_skipped"]) == (1, 0), stats
        assert [e["$idempotency_key"] for e in sandbox.events()] == [key]
        buffer = get_buffer(app)
        assert buffer is not None
        assert buffer.redis.zcard(buffer.keys.journal) == 0
        counters = buffer.snapshot().counters
        assert counters.get("direct:sent", 0) == 0, counters
        assert (counters["records:sent"], counters["direct:taken_over"]) == (1, 1), counters
        return counters

    def test_killed_mid_request(
        self,
        app_factory: Callable[..., Celery],
        sandbox: Sandbox,
        relay_workers: Callable[[], RelayWorkers],
        redis_client: redis.Redis,
    ) -> None:
        """The worker dies while SuprSend holds its request (which then fails): the event
        arrives within the attempt's hold (request timeout + connect timeout + grace)
        plus a flush, not an hour later; the redelivered task sends nothing."""
        workers, app = self._workers(relay_workers, app_factory)
        sandbox.set_faults(
            {"paths": ["/v2/event/"], "rules": [{"delay": 3, "status": 503, "count": 1}]}
        )
        key = f"lost-mid-request-{uuid.uuid4().hex[:8]}"
        first = workers.start()
        with diagnostics(workers, sandbox):
            result = _publish(app, key)
            wait_for(
                lambda: _request_in_flight(sandbox), 60, 0.05, "the request to reach the sandbox"
            )
            killed_at = self._kill_worker(first)
            took = self._flushed_within(app, sandbox, killed_at, 60)
            hold = REQUEST_TIMEOUT + 3.05 + GRACE
            assert took < hold + 10, f"delivered {took:.1f}s after the kill"  # not 3600 s
            requests = sandbox.stats()["requests"]  # the held request and the bulk one
            self._redeliver(redis_client, workers)
            counters = self._no_second_delivery(app, sandbox, result, key, requests)
            # The killed attempt was never settled, and the redelivery made no request.
            assert not [f for f in counters if f.startswith("requests:direct:")], counters

    def test_killed_mid_countdown(
        self,
        app_factory: Callable[..., Celery],
        sandbox: Sandbox,
        relay_workers: Callable[[], RelayWorkers],
        redis_client: redis.Redis,
    ) -> None:
        """A 503 with ``Retry-After: 20``: the retry waits in the worker (an ETA task) when
        the worker dies. The journal entry is due at the retry's time plus the grace, and
        the event arrives then, not an hour later; the redelivered retry sends nothing."""
        workers, app = self._workers(relay_workers, app_factory)
        countdown = 20
        sandbox.set_faults(
            {
                "paths": ["/v2/event/"],
                "rules": [{"status": 503, "retry_after": str(countdown), "count": 1}],
            }
        )
        key = f"lost-mid-countdown-{uuid.uuid4().hex[:8]}"
        first = workers.start()
        with diagnostics(workers, sandbox):
            result = _publish(app, key)
            wait_for(
                lambda: (
                    result.state == "RETRY"
                    and redis_client.hlen("unacked") == 1
                    and redis_client.llen(workers.queue) == 0
                ),
                60,
                0.1,
                "the worker to hold the retry, waiting for its countdown",
            )
            buffer = get_buffer(app)
            assert buffer is not None
            ((_, due),) = buffer.redis.zrange(buffer.keys.journal, 0, -1, withscores=True)
            assert countdown - 5 < due - buffer.snapshot().now <= countdown + GRACE
            killed_at = self._kill_worker(first)
            took = self._flushed_within(app, sandbox, killed_at, 90)
            assert took < countdown + GRACE + 10, f"delivered {took:.1f}s after the kill"
            requests = sandbox.stats()["requests"]
            assert requests == 2  # the refused attempt, then the flusher's bulk request
            self._redeliver(redis_client, workers)
            counters = self._no_second_delivery(app, sandbox, result, key, requests)
            # The first attempt was counted with its retry's journal entry, once.
            assert (counters["direct:retried"], counters["requests:direct:5xx"]) == (1, 1)
