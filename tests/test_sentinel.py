"""The buffer behind Sentinel: the master SIGKILLed while producers and flushers run.

A real group (one master, one replica, three sentinels on loopback; a master is
called down after 1 s) per test. Producers call ``buffer_event`` in a loop, two
flushers drain; the master is killed, the sentinels promote the replica, and both
carry on with the same objects: nothing is restarted. The killed server then comes
back and the sentinels make it the new master's replica (so ``WAIT 1`` can succeed
again). Lost means acknowledged by ``buffer_event`` yet never processed.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _buffer_helpers import processed_keys
from celery import Celery
from click.testing import CliRunner
from conftest import REDIS_KILLED, wait_for

from suprsend_celery import buffer_event, buffer_stats
from suprsend_celery.delivery.decisions import Settlement
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.exceptions import ReplicationError
from suprsend_celery.ops.cli import cli
from suprsend_celery.pipeline.flusher import Flusher
from suprsend_celery.pipeline.runtime import get_buffer, get_client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the benchmarks package

from benchmarks.topology import MASTER_NAME, SentinelGroup

pytestmark = [pytest.mark.slow, REDIS_KILLED]


@pytest.fixture(scope="module")
def group() -> Iterator[SentinelGroup]:
    """One group for the module: after a test's failover the old master rejoins as a
    replica, so the next test finds a master and a replica again."""
    with SentinelGroup(down_after_ms=1000) as running:
        yield running


class _Producer(threading.Thread):
    """``buffer_event`` in a loop; notes what was acknowledged, refused, and when."""

    def __init__(self, app: Celery) -> None:
        super().__init__(daemon=True)
        self.app = app
        self.stop = threading.Event()
        self.acked: list[tuple[float, str]] = []
        self.unconfirmed: list[str] = []  # ReplicationError: buffered, not confirmed
        self.errors: list[str] = []
        self.failed: list[str] = []  # any other error: maybe buffered, maybe not

    def run(self) -> None:
        while not self.stop.is_set():
            key = uuid.uuid4().hex
            try:
                buffer_event("user-1", "order_placed", {"k": 1}, idempotency_key=key, app=self.app)
            except ReplicationError as exc:
                assert exc.idempotency_keys == (key,)
                self.unconfirmed.append(key)
            except Exception as exc:
                self.errors.append(type(exc).__name__)
                self.failed.append(key)
            else:
                self.acked.append((time.monotonic(), key))
            time.sleep(0.002)

    def acked_since(self, moment: float) -> int:
        return sum(1 for at, _ in self.acked if at > moment)


class _Flushing(threading.Thread):
    """A flusher running again and again; notes what each run sent, and when."""

    def __init__(self, flusher: Flusher) -> None:
        super().__init__(daemon=True)
        self.flusher = flusher
        self.stop = threading.Event()
        self.sent: list[tuple[float, int]] = []
        self.errors = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                report = self.flusher.run(time_budget=1.0)
            except Exception:
                self.errors += 1
                time.sleep(0.1)
                continue
            self.sent.append((time.monotonic(), report.sent))
            if not report.sent:
                time.sleep(0.05)

    def sent_since(self, moment: float) -> int:
        return sum(n for at, n in self.sent if at > moment)


@pytest.fixture
def sentinel_app(group: SentinelGroup, app_factory: Callable[..., Celery]) -> Callable[..., Celery]:
    def factory(**conf: Any) -> Celery:
        return app_factory(
            suprsend_redis_url=group.url,
            broker_transport_options={"master_name": MASTER_NAME},
            **conf,
        )

    return factory


def test_batch_scripts_run_on_the_master(
    group: SentinelGroup, sentinel_app: Callable[..., Celery]
) -> None:
    """The flusher's scripts (``LeanScript``, on connections of their own) reach the
    master Sentinel names, not a connection's default address (a local Redis there
    would be claimed from instead): a record pushed is the record claimed and settled."""
    buffer = get_buffer(sentinel_app())
    buffer.clear()
    record = b'{"distinct_id": "u", "$idempotency_key": "lean-on-master"}'
    buffer.push([record])
    claim = buffer.claim(10, 5.0)
    assert claim.items == [record]
    assert buffer.settle(claim.id, Settlement(sent=1, verdict="ok"))
    assert buffer.stats()["pending"] == 0 and buffer.stats()["in_flight"] == 0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("min_replicas", [1, 0])
def test_master_killed_under_load(
    group: SentinelGroup,
    sentinel_app: Callable[..., Celery],
    sandbox: Sandbox,
    min_replicas: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After the failover producers and flushers go on; with min_replicas=1 nothing
    acknowledged is lost (without it, the loss is reported)."""
    app = sentinel_app(suprsend_buffer_min_replicas=min_replicas)
    get_buffer(app).clear()  # the group outlives a test
    sandbox.set_faults([{"delay": 0.01}])
    flushers = [
        _Flushing(Flusher(get_buffer(app), get_client(app), lease=3.0, batch_size=50))
        for _ in range(2)
    ]
    producer = _Producer(app)
    for worker in (producer, *flushers):
        worker.start()
    try:
        # Acknowledged events reach the flushers (so they went to Sentinel's master).
        wait_for(
            lambda: (
                len(producer.acked) >= 300 and producer.acked[100][1] in processed_keys(sandbox)
            ),
            timeout=20,
            message="traffic before the kill",
        )
        old = group.kill_master()
        killed_at = time.monotonic()
        new = group.wait_for_failover(old, timeout=20)
        group.restart_old_master(old, new)
        wait_for(
            lambda: producer.acked_since(killed_at) >= 200,
            timeout=30,
            message="producers to go on after the failover",
        )
        wait_for(
            lambda: sum(f.sent_since(killed_at) for f in flushers) >= 100,
            timeout=30,
            message="flushers to go on after the failover",
        )
    finally:
        producer.stop.set()
        producer.join(timeout=20)
    buffer = get_buffer(app)
    wait_for(lambda: buffer.remaining() == 0, timeout=30, message="the drain")
    for flushing in flushers:
        flushing.stop.set()
        flushing.join(timeout=20)
    processed = processed_keys(sandbox)
    acked = [key for _, key in producer.acked]
    lost = [key for key in acked if key not in processed]
    with capsys.disabled():
        print(
            f"\nsentinel failover, min_replicas={min_replicas}: {len(acked)} acknowledged, "
            f"{len(lost)} lost, {len(producer.unconfirmed)} unconfirmed (ReplicationError), "
            f"producer errors {len(producer.errors)}, flusher run errors "
            f"{sum(f.errors for f in flushers)}"
        )
    assert max(processed.values()) == 1, "an event was processed twice"
    assert set(processed) <= set(acked) | set(producer.unconfirmed) | set(producer.failed)
    if min_replicas:
        assert lost == [], f"{len(lost)} acknowledged event(s) lost despite WAIT"
    # Without WAIT only the replication lag's worth can go: events acknowledged in the
    # last moment before the kill (half a second is generous on loopback).
    window = {key for at, key in producer.acked if killed_at - 0.5 <= at <= killed_at}
    assert set(lost) <= window, f"lost {len(set(lost) - window)} acknowledged long before"
    assert buffer_stats(app=app)["pending"] == 0
    # The command line reaches the buffer through the same sentinels.
    status = CliRunner().invoke(cli, ["status", "--json"], obj=app)
    assert json.loads(status.stdout)["pending"] == 0, status.output
    health = CliRunner().invoke(cli, ["check"], obj=app)
    assert health.exit_code == 0 and f"sentinel master {MASTER_NAME}" in health.output
