"""A Redis Cluster master SIGKILLed, or a slot moved, mid-drain: nothing is lost, and
the drain ends in time.

Three masters with one replica each (real ``redis-server`` processes on loopback,
``cluster-node-timeout`` 3 s, so a replica takes over after about 5 s: longer than
redis-py's own cluster retries last), the buffer sharded over all three, the sandbox
answering slowly enough that the kill (or the move of a shard's slot to another
master) lands while claims are out. Flush runs go one after another on an in-process
worker, as beat would start them; a run that Redis fails is counted, not fatal, as the
next beat tick would start another.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from _buffer_helpers import make_events, processed_keys
from celery import Celery
from conftest import REDIS_KILLED, in_process_worker, wait_for

from suprsend_celery import buffer_events, buffer_stats
from suprsend_celery.buffer.redis_buffer import RedisBuffer
from suprsend_celery.buffer.sharded import ShardedBuffer, shard_prefix
from suprsend_celery.defaults import FLUSH_TASK
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.events.model import AcceptedRecord
from suprsend_celery.exceptions import BufferUnavailableError
from suprsend_celery.pipeline.producers import accept_batch
from suprsend_celery.pipeline.runtime import get_buffer
from suprsend_celery.pipeline.settings import get_settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the benchmarks package

from benchmarks.topology import LocalCluster

pytestmark = [pytest.mark.slow, REDIS_KILLED]

PREFIX = "suprsend_celery"
EVENTS = 6000
#: The whole drain, kill and failover included, must end within this many seconds.
DRAIN_BOUND = 90.0
#: ... and within this many after the kill: well before a claim's lease (60 s) runs
#: out, so no record waited for one (a flush run that gave up during the failover
#: leaves its claims to come back only then).
AFTER_KILL_BOUND = 30.0
#: Per bulk request: a realistic API, slow enough that claims are out at the kill.
API_DELAY = 0.075

logger = logging.getLogger(__name__)


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=1, node_timeout_ms=3000) as running:
        yield running


class _Drain:
    """Flush runs one after another (in a thread) until the buffer is empty, once
    ``produced`` is set, or time is up."""

    def __init__(self, app: Celery, deadline: float) -> None:
        self.app = app
        self.deadline = deadline
        self.runs: list[dict[str, Any]] = []
        self.failed_runs: list[str] = []
        self.finished_at: float | None = None
        self.produced = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="drain", daemon=True)

    def _empty(self) -> bool:
        try:
            return get_buffer(self.app).remaining() == 0
        except redis.RedisError:  # a shard's master is down: not known to be empty
            return False

    def _loop(self) -> None:
        while time.monotonic() < self.deadline:
            result = self.app.send_task(FLUSH_TASK, kwargs={"time_budget": 5.0})
            outcome = result.get(timeout=60, propagate=False)
            if result.failed():
                self.failed_runs.append(f"{type(outcome).__name__}: {outcome}")
            else:
                self.runs.append(outcome)
            if self.produced.is_set() and self._empty():
                self.finished_at = time.monotonic()
                return
            time.sleep(0.05)  # as beat would: the next run starts a little later

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=max(0.0, self.deadline - time.monotonic()) + 70)
        assert not self.thread.is_alive(), "a flush run did not return"


def _pushed(shard: RedisBuffer, records: list[AcceptedRecord]) -> bool:
    try:
        shard.push([r.payload for r in records])
    except BufferUnavailableError:
        return False
    return True


def test_master_killed_mid_drain_loses_nothing_and_ends_in_time(
    cluster: LocalCluster,
    app_factory: Callable[..., Celery],
    sandbox: Sandbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """6,000 events over 3 shards on 3 masters; the master holding shard 0 (the breaker,
    the shard registry) is SIGKILLed mid-drain; its replica takes over; every event is
    processed exactly once and the drain ends within ``DRAIN_BOUND`` seconds. A process
    that only produces (a cluster client of its own, which no flush run refreshes)
    reaches the promoted replica too."""
    conf = {
        "suprsend_redis_url": cluster.url,
        "suprsend_key_prefix": PREFIX,
        "suprsend_buffer_shards": 3,
    }
    app = app_factory(**conf)
    buffer = get_buffer(app)
    web = get_buffer(app_factory(**conf))
    assert isinstance(buffer, ShardedBuffer) and isinstance(web, ShardedBuffer)
    events = make_events(EVENTS)
    keys = [k for i in range(0, EVENTS, 100) for k in buffer_events(events[i : i + 100], app=app)]
    assert len(set(keys)) == EVENTS
    per_master = cluster.keys_per_master("{" + PREFIX + "*}:pending")
    assert len(per_master) == 3 and all(per_master.values()), per_master
    assert cluster.wait_replicated() == 3, "every master's replica has the buffered events"

    sandbox.set_faults([{"delay": API_DELAY}])
    victim_key = "{" + shard_prefix(PREFIX, 0) + "}:pending"
    caplog.set_level(logging.WARNING)
    with in_process_worker(app, concurrency=2, shutdown_timeout=60):
        started = time.monotonic()
        drain = _Drain(app, started + DRAIN_BOUND)
        drain.start()
        wait_for(
            lambda: sandbox.stats()["events_processed"] >= EVENTS // 4,
            timeout=60,
            message="the drain to be a quarter done",
        )
        processed_at_kill = sandbox.stats()["events_processed"]
        claimed_at_kill = buffer.shards[0].stats()["in_flight"]
        old_port = cluster.kill_master_of(victim_key)
        killed = time.monotonic()
        cluster.wait_for_failover(victim_key, old_port, timeout=30)
        failed_over = time.monotonic()
        late = make_events(100, "signed_up")
        records = accept_batch(get_settings(app), late).records
        try:
            wait_for(
                lambda: _pushed(web.shards[0], records),
                timeout=10,
                interval=0.1,
                message="a producer to reach the promoted replica",
            )
        finally:
            drain.produced.set()
        produced_again = time.monotonic()
        keys += [r.idempotency_key for r in records]
        drain.join()
    connection_errors = sum(
        "ConnectionError" in record.getMessage() or "Connection refused" in record.getMessage()
        for record in caplog.records
    )
    logger.warning(
        "killed master %d after %.1fs (%d of %d processed, %d claimed on it); failover "
        "seen %.1fs after the kill, a producer's push accepted %.1fs after it; "
        "drain finished %s after the start; %d flush run(s) ok, %d failed; "
        "%d log line(s) naming a connection error",
        old_port,
        killed - started,
        processed_at_kill,
        EVENTS,
        claimed_at_kill,
        failed_over - killed,
        produced_again - failed_over,
        f"{drain.finished_at - started:.1f}s" if drain.finished_at else "never",
        len(drain.runs),
        len(drain.failed_runs),
        connection_errors,
    )
    assert processed_at_kill < EVENTS and claimed_at_kill > 0, "the kill missed the drain"
    assert drain.finished_at is not None, (
        f"the drain did not finish within {DRAIN_BOUND}s: {buffer_stats(app=app)}; "
        f"failed runs: {drain.failed_runs[-3:]}"
    )
    assert drain.finished_at - killed < AFTER_KILL_BOUND, (
        f"the drain ended {drain.finished_at - killed:.1f}s after the kill: records waited "
        f"for a claim lease; failed runs: {drain.failed_runs[-3:]}"
    )
    stats = sandbox.stats()
    assert stats["events_processed"] == EVENTS + len(records), stats
    processed = processed_keys(sandbox)
    assert processed == dict.fromkeys(keys, 1), "an event was lost or processed twice"
    figures = buffer_stats(app=app)
    assert (figures["pending"], figures["in_flight"], figures["scheduled_retries"]) == (0, 0, 0)
    assert figures["dead"] == 0, figures


def _migrate_slot(cluster: LocalCluster, key: str, to_port: int, *, pause: float) -> int:
    """Move ``key``'s slot to the master on ``to_port`` as ``redis-cli --cluster reshard``
    does (IMPORTING/MIGRATING, MIGRATE in batches, SETSLOT NODE), ``pause`` seconds
    between batches; return how many keys moved."""
    src_port = cluster.master_port_of(key)
    src = next(n for n in cluster.nodes if n.port == src_port).client(socket_timeout=10)
    dst = next(n for n in cluster.nodes if n.port == to_port).client(socket_timeout=10)
    moved = 0
    try:
        slot = int(src.execute_command("CLUSTER", "KEYSLOT", key))
        src_id = src.execute_command("CLUSTER", "MYID").decode()
        dst_id = dst.execute_command("CLUSTER", "MYID").decode()
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 5):
            src.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            time.sleep(pause)
        for node in cluster.masters():
            client = node.client(socket_timeout=5)
            try:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
            finally:
                client.close()
    finally:
        src.close()
        dst.close()
    return moved


def test_slot_migrated_mid_drain_loses_nothing(
    cluster: LocalCluster,
    app_factory: Callable[..., Celery],
    sandbox: Sandbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Shard 1's slot moved to shard 2's master mid-drain, a few keys at a time: every
    event is processed exactly once and the drain ends within ``DRAIN_BOUND`` seconds.

    While the slot's keys are split between the two masters, scripts on that shard get
    ``TRYAGAIN``; redis-py gives up after about 0.4 s, so a flush run may fail, and its
    claims then come back when their lease runs out (README, Scaling past one Redis).
    """
    app = app_factory(
        suprsend_redis_url=cluster.url, suprsend_key_prefix=PREFIX, suprsend_buffer_shards=3
    )
    buffer = get_buffer(app)
    assert isinstance(buffer, ShardedBuffer)
    events = make_events(EVENTS)
    keys = [k for i in range(0, EVENTS, 100) for k in buffer_events(events[i : i + 100], app=app)]
    sandbox.set_faults([{"delay": API_DELAY}])
    moving = "{" + shard_prefix(PREFIX, 1) + "}:pending"
    to_port = cluster.master_port_of("{" + shard_prefix(PREFIX, 2) + "}:pending")
    caplog.set_level(logging.WARNING)
    with in_process_worker(app, concurrency=2, shutdown_timeout=60):
        started = time.monotonic()
        drain = _Drain(app, started + DRAIN_BOUND)
        drain.produced.set()
        drain.start()
        wait_for(
            lambda: sandbox.stats()["events_processed"] >= EVENTS // 4,
            timeout=60,
            message="the drain to be a quarter done",
        )
        began = time.monotonic()
        moved = _migrate_slot(cluster, moving, to_port, pause=0.05)
        migrated = time.monotonic()
        drain.join()
    logger.warning(
        "moved %d keys in %.1fs, %.1fs after the start; drain finished %s after the start; "
        "%d flush run(s) ok, %d failed %s",
        moved,
        migrated - began,
        began - started,
        f"{drain.finished_at - started:.1f}s" if drain.finished_at else "never",
        len(drain.runs),
        len(drain.failed_runs),
        drain.failed_runs[:3],
    )
    assert cluster.master_port_of(moving) == to_port
    assert drain.finished_at is not None, (
        f"the drain did not finish within {DRAIN_BOUND}s: {buffer_stats(app=app)}; "
        f"failed runs: {drain.failed_runs[-3:]}"
    )
    assert sandbox.stats()["events_processed"] == EVENTS
    assert processed_keys(sandbox) == dict.fromkeys(keys, 1), "an event was lost or processed twice"
    figures = buffer_stats(app=app)
    assert (figures["pending"], figures["in_flight"], figures["scheduled_retries"]) == (0, 0, 0)
