"""The buffer on a 3-master Redis Cluster, sharded over ``suprsend_buffer_shards`` tags.

The cluster is real (three ``redis-server --cluster-enabled yes`` joined by
``redis-cli --cluster create``), started once for the module; Celery's broker stays on
the plain test Redis (kombu has no cluster transport). Each test uses its own key
prefix, so the shards of one test never meet another's.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from _buffer_helpers import (
    flush_until,
    kill_group,
    make_events,
    processed_keys,
    settlement,
    spawn,
    subprocess_env,
)
from celery import Celery
from conftest import in_process_worker, wait_for

from suprsend_celery import Event, buffer_event, buffer_events, buffer_stats, defaults
from suprsend_celery.buffer.lean_eval import LeanScript
from suprsend_celery.buffer.redis_buffer import RedisBuffer
from suprsend_celery.buffer.sharded import ShardedBuffer
from suprsend_celery.delivery.dead_letters import dead_letter_entry
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.pipeline.duty import DutyPlan
from suprsend_celery.pipeline.runtime import get_buffer, get_client, get_flusher

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the benchmarks package

from benchmarks.topology import LocalCluster

pytestmark = pytest.mark.slow

#: The default prefix's shard tags 0, 1 and 2 hash to slots on three different masters
#: of a cluster made by ``redis-cli --cluster create`` (slots split in thirds).
PREFIX = "suprsend_celery"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3) as running:
        yield running


@pytest.fixture
def cluster_app(
    cluster: LocalCluster, app_factory: Callable[..., Celery]
) -> Iterator[Callable[..., Celery]]:
    """Apps whose buffer is on the cluster, under a prefix of this test's own (or ``prefix``)."""
    own = f"{PREFIX}_{uuid.uuid4().hex[:6]}"
    built: list[Celery] = []

    def factory(prefix: str = own, **conf: Any) -> Celery:
        app = app_factory(suprsend_redis_url=cluster.url, suprsend_key_prefix=prefix, **conf)
        built.append(app)
        return app

    yield factory
    if built:
        get_buffer(built[0]).clear()


class TestShardedDelivery:
    """Every event is processed once, whichever shard and master it went through."""

    def test_twenty_thousand_events_and_a_killed_flusher(
        self,
        cluster: LocalCluster,
        cluster_app: Callable[..., Celery],
        sandbox: Sandbox,
        tmp_path: Path,
    ) -> None:
        """20,000 events over 3 shards on 3 masters; a flusher SIGKILLed mid-drain loses none."""
        app = cluster_app(PREFIX, suprsend_buffer_shards=3)
        buffer = get_buffer(app)
        assert isinstance(buffer, ShardedBuffer)
        keys: list[str] = []
        lock = threading.Lock()

        def produce_singles(first: int) -> None:
            mine = [
                buffer_event(f"user-{i}", "order_placed", {"n": i}, app=app)
                for i in range(first, first + 5000)
            ]
            with lock:
                keys.extend(mine)

        threads = [threading.Thread(target=produce_singles, args=(n,)) for n in (0, 5000)]
        for thread in threads:
            thread.start()
        events = make_events(10_000, "cart_updated")
        for start in range(0, 10_000, 100):
            keys.extend(buffer_events(events[start : start + 100], app=app))
        for thread in threads:
            thread.join()
        assert len(set(keys)) == 20_000
        assert buffer_stats(app=app)["pending"] == 20_000
        per_master = cluster.keys_per_master("{" + PREFIX + "*}:pending")
        assert len(per_master) == 3 and all(per_master.values()), per_master

        sandbox.set_faults([{"delay": 0.02}])  # slow enough that the kill lands mid-drain
        env = subprocess_env(SUPRSEND_BUFFER_SHARDS="3")
        log = tmp_path / "flusher.log"
        proc = spawn(
            [
                str(Path(__file__).parent / "_flusher_proc.py"),
                cluster.url,
                sandbox.url,
                "2",
                "100",
                buffer.prefix,
            ],
            env,
            log,
        )
        try:
            wait_for(
                lambda: sandbox.stats()["events_processed"] >= 2000 or proc.poll() is not None,
                timeout=30,
                message="the flusher subprocess to be mid-drain",
            )
            assert proc.poll() is None, log.read_text()[-3000:]
        finally:
            kill_group(proc)
        in_flight = buffer_stats(app=app)["in_flight"]
        sandbox.set_faults([])
        with in_process_worker(app, concurrency=2):
            flush_until(
                app,
                lambda: get_buffer(app).remaining() == 0,
                timeout=60,
                message="the cluster buffer to drain",
            )
        processed = processed_keys(sandbox)
        assert processed == dict.fromkeys(keys, 1), "an event was lost or processed twice"
        assert in_flight > 0, "the SIGKILL did not catch the flusher with claims in flight"
        stats = buffer_stats(app=app)
        assert (stats["pending"], stats["in_flight"], stats["scheduled_retries"]) == (0, 0, 0)


class TestOneBuffer:
    """Shards behave as one buffer: the breaker, stats, dead letters, a changed count."""

    def test_lowering_the_shard_count_strands_nothing(
        self, cluster_app: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """Records buffered over 4 shards are all sent by a flusher configured for 1."""
        wide = cluster_app(suprsend_buffer_shards=4)
        keys = buffer_events(make_events(400), app=wide)
        keys += [buffer_event(f"u{i}", "signed_up", app=wide) for i in range(40)]
        narrow = cluster_app(suprsend_buffer_shards=1)
        buffer = get_buffer(narrow)
        assert isinstance(buffer, ShardedBuffer) and sorted(buffer.shards) == [0, 1, 2, 3]
        assert buffer_stats(app=narrow)["pending"] == 440
        with in_process_worker(narrow):
            flush_until(narrow, lambda: get_buffer(narrow).remaining() == 0)
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)

    def test_breaker_is_shared_by_every_shard(self, cluster_app: Callable[..., Celery]) -> None:
        """A verdict settled on any shard opens the one breaker; then no shard gives records."""
        app = cluster_app(suprsend_buffer_shards=3)
        buffer = get_buffer(app)
        assert isinstance(buffer, ShardedBuffer)
        for _ in range(9):
            buffer_event("user-1", "order_placed", app=app)
        claims = [buffer.claim(3, 30) for _ in range(3)]
        assert sorted(c.id.partition(":")[0] for c in claims) == ["0", "1", "2"]
        away = next(c for c in claims if not c.id.startswith("0:"))
        buffer.settle(away.id, settlement(back=away.items, verdict="auth", reason="HTTP 401"))
        assert buffer.breaker()["state"] == "open"
        assert buffer_stats(app=app)["breaker"] == "open"
        refused = buffer.claim(3, 30)
        assert (refused.mode, refused.items) == ("open", [])
        buffer.reset_breaker()
        assert buffer.claim(10, 30).items

    def test_probe_may_come_from_any_shard(self, cluster_app: Callable[..., Celery]) -> None:
        """Once the pause is over one claim is the probe (at most PROBE_RECORDS, from
        whichever shard has records; the others wait); an empty probe lets the next
        claim probe again; a good probe closes the breaker."""
        app = cluster_app(suprsend_buffer_shards=3)
        buffer = get_buffer(app)
        assert isinstance(buffer, ShardedBuffer)
        first = buffer.claim(10, 30)
        assert (first.mode, first.items) == ("ok", [])
        buffer.settle(
            f"1:{uuid.uuid4().hex}", settlement(verdict="fail", open_for=0.2, reason="HTTP 429")
        )
        assert buffer.claim(10, 30).mode == "open"
        wait_for(lambda: buffer.breaker()["retry_in"] == 0, timeout=5, message="the pause")
        empty = buffer.claim(10, 30)
        assert (empty.mode, empty.items) == ("probe", [])
        assert buffer.breaker()["state"] == "half_open"  # due again: the next claim probes
        buffer.shards[2].push([b'{"n": %d}' % i for i in range(30)])
        probe = buffer.claim(100, 30)
        assert probe.mode == "probe" and probe.id.startswith("2:")
        assert len(probe.items) == defaults.PROBE_RECORDS
        assert buffer.claim(100, 30).mode == "open", "one probe at a time"
        assert buffer.settle(probe.id, settlement(verdict="ok"))
        assert buffer.breaker()["state"] == "closed"
        assert len(buffer.claim(100, 30).items) == 20

    def test_dead_letters_and_stats_cover_every_shard(
        self, cluster_app: Callable[..., Celery]
    ) -> None:
        """Dead letters settled on several shards are listed, requeued and purged together."""
        app = cluster_app(suprsend_buffer_shards=3)
        buffer = get_buffer(app)
        assert isinstance(buffer, ShardedBuffer)
        keys = [buffer_event(f"user-{i}", "order_placed", app=app) for i in range(6)]
        claims = [buffer.claim(10, 30) for _ in range(3)]
        for claim in claims:
            entries = [
                dead_letter_entry(
                    item, error="HTTP 400", status_code=400, attempts=1, source="buffer"
                )
                for item in claim.items
            ]
            assert buffer.settle(claim.id, settlement(dead=entries))
        stats = buffer_stats(app=app)
        assert (stats["pending"], stats["in_flight"], stats["dead"]) == (0, 0, 6)
        assert len(buffer.dead_letters(limit=100)) == 6
        assert len(buffer.dead_letters(limit=4)) == 4
        assert buffer.requeue_dead_letters([keys[0], keys[5]]).moved == 2
        assert buffer.purge_dead_letters() == 4
        assert buffer_stats(app=app)["pending"] == 2


def test_one_shard_on_a_cluster_is_the_plain_buffer(
    cluster: LocalCluster, cluster_app: Callable[..., Celery], sandbox: Sandbox
) -> None:
    """With the default single shard, a cluster URL needs nothing else: one slot, one buffer."""
    app = cluster_app()
    buffer = get_buffer(app)
    assert type(buffer) is RedisBuffer
    # The batch scripts keep redis-py's Script there: node routing is the client's job.
    assert buffer.slot.script_connections is None
    assert not isinstance(buffer.queue._claim, LeanScript)
    keys = buffer_events(make_events(300), app=app)
    with in_process_worker(app):
        flush_until(app, lambda: get_buffer(app).remaining() == 0)
    assert processed_keys(sandbox) == dict.fromkeys(keys, 1)


class TestOperatingAShardedBuffer:
    """The command line, the metrics and async producers see one buffer over the shards."""

    def test_status_flush_and_metrics(
        self, cluster: LocalCluster, cluster_app: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """``status`` adds up every shard, ``flush`` drains them all, ``check`` names the
        cluster's masters, the metrics add up every shard's counters."""
        from click.testing import CliRunner

        from suprsend_celery.ops.cli import cli

        app = cluster_app(suprsend_buffer_shards=3)
        keys = buffer_events(make_events(90), app=app)
        keys += [buffer_event(f"u{i}", "signed_up", app=app) for i in range(30)]
        figures = CliRunner().invoke(cli, ["status", "--json"], obj=app)
        assert json.loads(figures.stdout)["pending"] == 120
        drained = CliRunner().invoke(cli, ["flush"], obj=app)
        assert drained.exit_code == 0, drained.output
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        health = CliRunner().invoke(cli, ["check"], obj=app)
        assert health.exit_code == 0, health.output
        assert "cluster of" in health.output and str(cluster.nodes[0].port) in health.output
        counters = get_buffer(app).snapshot().counters
        assert float(counters["records:sent"]) == 120, counters

    def test_async_producers(self, cluster_app: Callable[..., Celery], sandbox: Sandbox) -> None:
        """``await abuffer_event``/``abuffer_events`` on a sharded cluster buffer (pushed in
        a thread through the cluster client) reach every shard and are delivered once."""
        from suprsend_celery.pipeline.async_producers import abuffer_event, abuffer_events

        app = cluster_app(suprsend_buffer_shards=3)

        async def produce() -> list[str]:
            singles = await asyncio.gather(
                *(abuffer_event(f"u{i}", "signed_up", app=app) for i in range(30))
            )
            return [*singles, *await abuffer_events(make_events(30), app=app)]

        keys = asyncio.run(produce())
        buffer = get_buffer(app)
        assert isinstance(buffer, ShardedBuffer)
        assert all(shard.pending_count() for shard in buffer.shards.values())
        with in_process_worker(app):
            flush_until(app, lambda: get_buffer(app).remaining() == 0)
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)


def test_a_run_on_duty_is_woken_by_each_shard(
    cluster: LocalCluster, cluster_app: Callable[..., Celery], sandbox: Sandbox
) -> None:
    """A run waits on every shard's wake list (three masters): a record pushed to any
    one shard is sent at once, by the same waiting run."""
    app = cluster_app(suprsend_buffer_shards=3)
    buffer = get_buffer(app)
    assert isinstance(buffer, ShardedBuffer)
    client = get_client(app)
    flusher = get_flusher(app)
    stop: Future[None] = Future()
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["report"] = flusher.run(60, duty=DutyPlan(60, stopped=stop))

    def blocks() -> int:
        count = 0
        for node in cluster.masters():
            node_client = node.client()
            try:
                count += sum(1 for c in node_client.client_list() if c.get("cmd") == "blpop")
            finally:
                node_client.close()
        return count

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        for index in (0, 1, 2, 2, 1, 0):
            wait_for(lambda: blocks() == 3, timeout=10, message="a block on each master")
            record = client.accept(Event(f"user-{index}", "order_placed", {"shard": index}))
            accepted = time.time()
            buffer.shards[index].push([record.payload])
            key = record.idempotency_key
            wait_for(lambda k=key: k in sandbox.processed(), timeout=5)
            assert sandbox.processed()[key] - accepted < 1.0
            assert thread.is_alive(), "still on duty"
    finally:
        stop.set_result(None)
        thread.join(10)
    assert outcome["report"].sent == 6
