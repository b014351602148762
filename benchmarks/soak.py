"""Reliability soak: deliver under chaos, then prove nothing was lost or processed twice.

    python -m benchmarks.soak --seconds 60 [--cluster]

Starts a Redis with AOF (``appendfsync always``), the sandbox in its own process, a
beat and ``--workers`` relay workers (``celery -A benchmarks.relay_app worker``: the
relay with a short claim lease, prefork, configured from the environment). A producer
thread sends events at ``--rate`` per second, alternating ``buffer_event`` and
``track_event.delay``, each with a unique idempotency key; a call that raises (Redis
restarting) is retried with the same key, as a careful caller would, and counts as
accepted once it returns.

Meanwhile a chaos loop, every ``--chaos-interval`` seconds, does one of: SIGKILL a whole
worker (its process group) and start a new one; SIGKILL one pool process; a burst of
503s; 429s with ``Retry-After``; HTML 502 pages; slow answers; dropped connections after
processing (lost responses); SIGKILL Redis and start it again from its AOF; 503s on the
direct path while the broker Redis is at ``maxclients`` (retries that cannot be
published). With ``--cluster`` the buffer is on a 3-master Redis Cluster over 3 shards
and that SIGKILL hits one cluster node (the broker stays one Redis). Then chaos stops,
faults are cleared and the soak waits (up to ``--drain-timeout``) until every accepted
key was processed or dead-lettered.

Printed: accepted, processed, duplicates skipped, lost (accepted keys neither
processed nor dead-lettered: must be 0), processed twice (keys the sandbox processed
more than once: must be 0), dead letters, and the requests that reached the API
during outages. The exit status is 1 when lost or processed twice is not 0.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import (
    PYTHON,
    Child,
    SandboxProcess,
    event_args,
    log,
    producer_app,
    relay_env,
    run_id,
    start_worker,
)
from benchmarks.topology import LocalCluster
from suprsend_celery import buffer_event
from suprsend_celery.dev.redis_server import RedisServer
from suprsend_celery.pipeline.runtime import get_buffer
from suprsend_celery.pipeline.settings import reset_settings
from suprsend_celery.tasks.direct import TRACK_TASK

QUEUE = "soak"
SOAK_PREFIX = "suprsend_soak"

#: Relay settings that keep every recovery path inside a soak's minutes: short claim
#: leases and broker visibility timeout (a killed worker's work comes back quickly),
#: short backoff, flushes every second.
WORKER_ENV = {
    "SUPRSEND_KEY_PREFIX": SOAK_PREFIX,
    "SUPRSEND_FLUSH_INTERVAL": "1",
    "RELAY_CLAIM_LEASE": "5",
    "SUPRSEND_REQUEST_TIMEOUT": "2",
    "SUPRSEND_RETRY_BACKOFF_MAX": "2",
    "CELERY_BROKER_VISIBILITY_TIMEOUT": "8",
    "CELERY_WORKER_PREFETCH_MULTIPLIER": "2",
}

#: Sandbox fault plans the chaos loop picks from, each held for 80% of a chaos slot;
#: ``True`` marks an outage (the API refuses requests).
FAULTS: dict[str, tuple[bool, dict[str, Any]]] = {
    "503 outage": (True, {"rules": [{"status": 503}]}),
    "429 Retry-After": (True, {"rules": [{"status": 429, "retry_after": "1"}]}),
    "HTML 502": (True, {"rules": [{"status": 502, "html": True, "rate": 0.5}]}),
    "latency": (False, {"rules": [{"delay": 0.3, "rate": 0.5}]}),
    "lost responses": (False, {"rules": [{"drop_connection": True, "process": True, "count": 4}]}),
}
#: The first chaos slots try every kind once, in this order; later ones pick at random.
FIRST_ROUND = (
    "worker",
    "503 outage",
    "pool",
    "lost responses",
    "redis",
    "429 Retry-After",
    "HTML 502",
    "latency",
    "publish refused",
)


@dataclass
class SoakConfig:
    seconds: float = 60.0
    rate: float = 40.0
    workers: int = 2
    concurrency: int = 2
    chaos_interval: float = 2.5
    drain_timeout: float = 120.0
    seed: int | None = None
    logdir: Path | None = None
    #: The buffer on a 3-master Redis Cluster over 3 shards (the broker stays one Redis);
    #: the Redis chaos then SIGKILLs and restarts one cluster node.
    cluster: bool = False


@dataclass
class SoakReport:
    accepted: int = 0
    accepted_buffered: int = 0
    accepted_direct: int = 0
    refused: int = 0
    producer_errors: dict[str, int] = field(default_factory=dict)
    processed: int = 0
    processed_accepted: int = 0
    duplicates_skipped: int = 0
    lost: int = 0
    processed_twice: int = 0
    dead_letters: int = 0
    requests: int = 0
    outage_seconds: float = 0.0
    requests_during_outages: int = 0
    bulk_requests_during_outages: int = 0
    direct_sent_from_journal: int = 0
    direct_only_from_journal: int = 0
    worker_kills: int = 0
    pool_kills: int = 0
    redis_restarts: int = 0
    publish_refusals: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    drained: bool = False
    drain_seconds: float = 0.0
    chaos_seconds: float = 0.0
    lost_keys: list[str] = field(default_factory=list)
    twice_keys: list[str] = field(default_factory=list)
    logdir: str = ""

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.processed_twice == 0

    def lines(self) -> list[str]:
        seconds = self.outage_seconds
        outage_rate = self.requests_during_outages / seconds if seconds else 0.0
        return [
            f"accepted              {self.accepted} "
            f"({self.accepted_buffered} buffered, {self.accepted_direct} direct; "
            f"{self.refused} refused after retries)",
            f"processed             {self.processed} ({self.processed_accepted} of the accepted)",
            f"duplicates skipped    {self.duplicates_skipped}",
            f"lost                  {self.lost}",
            f"processed twice       {self.processed_twice}",
            f"dead letters          {self.dead_letters}",
            f"journal recoveries    {self.direct_sent_from_journal} direct events sent by the "
            f"flusher from the journal; {self.direct_only_from_journal} of them never accepted "
            "through their task (its broker message was lost)",
            f"requests              {self.requests} to the event API; "
            f"{self.requests_during_outages} during {self.outage_seconds:.1f}s of outages "
            f"({outage_rate:.1f}/s; {self.bulk_requests_during_outages} of them bulk requests "
            "from flushers, the rest direct-task retries)",
            f"chaos                 {self.worker_kills} worker kills, {self.pool_kills} pool "
            f"process kills, {self.redis_restarts} Redis restarts, "
            f"{self.publish_refusals} retry publishes refused, faults {self.faults}",
            f"producer errors       {self.producer_errors or 'none'}",
            f"drain                 {'complete' if self.drained else 'INCOMPLETE'} "
            f"in {self.drain_seconds:.1f}s after {self.chaos_seconds:.1f}s of chaos",
            f"verdict               {'OK' if self.ok else 'FAILED'}",
        ]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


class Producer(threading.Thread):
    """Sends events at a steady rate, alternating the buffered and the direct path."""

    def __init__(self, app: Any, tag: str, rate: float) -> None:
        super().__init__(name="soak-producer", daemon=True)
        self.app = app
        self.tag = tag
        self.interval = 1.0 / rate
        self.stop = threading.Event()
        self.accepted: dict[str, str] = {}
        self.refused = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self._track = app.tasks[TRACK_TASK]

    def _send_one(self, index: int) -> None:
        distinct_id, name, props, _ = event_args(index, self.tag)
        via = "buffered" if index % 2 else "direct"
        key = f"soak-{self.tag}-{index}"
        for _ in range(40):  # about 20 s of retries with the same key
            try:
                if via == "buffered":
                    buffer_event(distinct_id, name, props, idempotency_key=key, app=self.app)
                else:
                    self._track.apply_async((distinct_id, name, props), {"idempotency_key": key})
            except Exception as exc:  # Redis restarting: retry the same event, same key
                self.errors[type(exc).__name__] += 1
                if self.stop.wait(0.5):
                    break
            else:
                self.accepted[key] = via
                return
        self.refused += 1

    def run(self) -> None:
        index = 0
        due = time.monotonic()
        while not self.stop.is_set():
            index += 1
            self._send_one(index)
            due += self.interval
            self.stop.wait(max(0.0, due - time.monotonic()))


class Soak:
    """Owns every process of one soak run; ``close`` stops them all."""

    def __init__(self, config: SoakConfig) -> None:
        self.config = config
        self.random = random.Random(config.seed)
        self.tag = run_id()
        self.logdir = config.logdir or Path(tempfile.mkdtemp(prefix="suprsend-soak-"))
        self.report = SoakReport(logdir=str(self.logdir))
        self.server: RedisServer | None = None
        self.cluster: LocalCluster | None = None
        self.sandbox: SandboxProcess | None = None
        self.beat: Child | None = None
        self.workers: list[Child] = []
        self.outages: list[tuple[float, float]] = []
        self.app: Any = None
        self._worker_count = 0

    # -- processes -----------------------------------------------------------------

    def _buffer_conf(self) -> dict[str, str]:
        """Where the buffer lives, as the relay's environment says it."""
        if self.cluster is None:
            return {}
        return {"SUPRSEND_REDIS_URL": self.cluster.url, "SUPRSEND_BUFFER_SHARDS": "3"}

    def _env(self) -> dict[str, str]:
        assert self.server is not None and self.sandbox is not None
        env = relay_env(self.server.url, self.sandbox.url, QUEUE, **WORKER_ENV)
        env.update(self._buffer_conf())
        return env

    def _start_worker(self) -> Child:
        self._worker_count += 1
        return start_worker(
            "benchmarks.relay_app",
            QUEUE,
            self._env(),
            concurrency=self.config.concurrency,
            name=f"soak{self._worker_count}",
            log=self.logdir / f"worker-{self._worker_count}.log",
        )

    def start(self) -> None:
        self.server = RedisServer(appendonly=True, appendfsync="always").start()
        if self.config.cluster:
            self.cluster = LocalCluster(masters=3, appendonly=True).start()
        self.sandbox = SandboxProcess(
            log=self.logdir / "sandbox.log", max_events=2_000_000, max_requests=500_000
        )
        self.beat = Child(
            [
                PYTHON,
                "-m",
                "celery",
                "-A",
                "suprsend_celery.app",
                "beat",
                "-s",
                str(self.logdir / "beat-schedule"),
                "--loglevel=WARNING",
            ],
            env=self._env(),
            log=self.logdir / "beat.log",
        )
        self.workers = [self._start_worker() for _ in range(self.config.workers)]
        self.app = producer_app(self.server.url, self.sandbox.url, QUEUE, current=False)
        self.app.conf.suprsend_key_prefix = SOAK_PREFIX
        if self.cluster is not None:
            self.app.conf.suprsend_redis_url = self.cluster.url
            self.app.conf.suprsend_buffer_shards = 3
        # The producer journals direct-path records for as long as the broker's
        # visibility timeout, so it must know the workers' value.
        visibility = float(WORKER_ENV["CELERY_BROKER_VISIBILITY_TIMEOUT"])
        self.app.conf.broker_transport_options = {"visibility_timeout": visibility}
        reset_settings(self.app)

    def close(self) -> None:
        for child in [*self.workers, self.beat]:
            if child is not None:
                child.stop(timeout=5)
        self.workers = []
        if self.sandbox is not None:
            self.sandbox.stop()
        if self.app is not None:
            reset_settings(self.app)
            self.app.close()
        if self.server is not None:
            self.server.stop()
        if self.cluster is not None:
            self.cluster.stop()

    # -- chaos ---------------------------------------------------------------------

    def kill_worker(self) -> None:
        index = self.random.randrange(len(self.workers))
        self.workers[index].kill()
        self.workers[index].stop()
        self.report.worker_kills += 1
        log(f"chaos: SIGKILL worker {index} (all its processes)")
        self.workers[index] = self._start_worker()

    def kill_pool_process(self) -> None:
        pools: list[psutil.Process] = []
        for worker in self.workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                pools.extend(psutil.Process(worker.pid).children())
        if not pools:  # every worker is still starting: kill a whole one instead
            self.kill_worker()
            return
        victim = self.random.choice(pools)
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim.pid, signal.SIGKILL)
        self.report.pool_kills += 1
        log(f"chaos: SIGKILL pool process {victim.pid}")

    def fault(self, name: str, stop: threading.Event) -> None:
        assert self.sandbox is not None
        outage, plan = FAULTS[name]
        self.sandbox.set_faults(plan)
        started = time.time()
        log(f"chaos: fault {name}")
        stop.wait(self.config.chaos_interval * 0.8)  # how long the fault lasts
        self.sandbox.set_faults(None)
        if outage:
            self.outages.append((started, time.time()))
        self.report.faults[name] = self.report.faults.get(name, 0) + 1

    def restart_redis(self, stop: threading.Event) -> None:
        assert self.server is not None
        server = self.server
        if self.cluster is not None:  # the buffer's Redis: one master of the cluster
            server = self.random.choice(self.cluster.nodes)
        log(f"chaos: SIGKILL Redis on port {server.port}; restarting it from its AOF")
        server.kill()
        stop.wait(0.5)  # how long Redis stays down
        server.start()
        self.report.redis_restarts += 1

    def refuse_publishes(self, stop: threading.Event) -> None:
        """503s on the direct path while the broker refuses new connections
        (``maxclients``; open ones keep working) and every pool process is replaced: a
        new one must connect to publish its retry and cannot, Celery drops the message
        (``Reject``), and only the journal still holds the event (issue 10)."""
        assert self.server is not None and self.sandbox is not None
        admin = self.server.client()
        admin.ping()  # connected before the limit
        self.sandbox.set_faults({"paths": ["/v2/event/"], "rules": [{"status": 503}]})
        admin.config_set("maxclients", 1)
        # Fresh pool processes hold no connection, so their retries must connect.
        for worker in self.workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(worker.pid).children():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, signal.SIGKILL)
        log("chaos: broker Redis at maxclients during 503s, pool processes restarted")
        try:
            stop.wait(self.config.chaos_interval * 0.8)
        finally:
            with contextlib.suppress(Exception):  # a Redis restart undoes it anyway
                admin.config_set("maxclients", 10000)
            self.sandbox.set_faults(None)
            admin.close()
        self.report.publish_refusals += 1

    def chaos(self, seconds: float) -> None:
        """One action per ``chaos_interval`` slot: every kind once (however long that
        takes), then at random until ``seconds`` have passed."""
        stop = threading.Event()
        deadline = time.monotonic() + seconds
        step = 0
        while step < len(FIRST_ROUND) or time.monotonic() < deadline:
            slot_end = time.monotonic() + self.config.chaos_interval
            if step < len(FIRST_ROUND):
                kind = FIRST_ROUND[step]
            else:
                kinds = ["worker", "pool", "redis", "publish refused", "fault", "fault"]
                kind = self.random.choice(kinds)
                if kind == "fault":
                    kind = self.random.choice(list(FAULTS))
            step += 1
            if kind == "worker":
                self.kill_worker()
            elif kind == "pool":
                self.kill_pool_process()
            elif kind == "redis":
                self.restart_redis(stop)
            elif kind == "publish refused":
                self.refuse_publishes(stop)
            else:
                self.fault(kind, stop)
            stop.wait(max(0.0, min(deadline, slot_end) - time.monotonic()))
        assert self.sandbox is not None
        self.sandbox.set_faults(None)

    # -- checks --------------------------------------------------------------------

    def dead_keys(self) -> set[str]:
        """Every shard's dead letters (the app's buffer reads them all)."""
        letters = get_buffer(self.app).dead_letters(limit=10_000_000)
        return {letter.idempotency_key or "" for letter in letters}

    def _servers(self) -> list[RedisServer]:
        assert self.server is not None
        return self.cluster.nodes if self.cluster is not None else [self.server]

    def outstanding(self, accepted: dict[str, str]) -> set[str]:
        """Accepted keys that were neither processed nor dead-lettered yet."""
        assert self.sandbox is not None
        if self.sandbox.stats()["events_processed"] < len(accepted) - len(self.dead_keys()):
            return {"(not yet)"}
        processed = {e.get("$idempotency_key") for e in self.sandbox.events()}
        return set(accepted) - processed - self.dead_keys()

    def whereabouts(self, key: str) -> str:
        """Where in Redis an undelivered key sits (every key that mentions it)."""
        found = []
        for server in self._servers():
            found += self._mentions(server, key)
        return "in " + ", ".join(found) if found else "nowhere in Redis"

    @staticmethod
    def _mentions(server: RedisServer, key: str) -> list[str]:
        client = server.client()
        found = []
        try:
            for name in client.scan_iter(count=1000):
                kind = client.type(name).decode()
                if kind == "list":
                    values = client.lrange(name, 0, -1)
                elif kind == "zset":
                    values = client.zrange(name, 0, -1)
                elif kind == "hash":
                    values = client.hvals(name)
                else:
                    continue
                if any(key.encode() in v for v in values):  # type: ignore[union-attr]
                    found.append(name.decode())
        finally:
            client.close()
        return found

    def _wait_until_delivering(self, timeout: float) -> None:
        """Both paths deliver before chaos starts, so the first kill hits a busy worker."""
        assert self.sandbox is not None
        deadline = time.monotonic() + timeout
        while self.sandbox.stats()["events_processed"] < 10:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing delivered within {timeout}s; logs in {self.logdir}")
            time.sleep(0.1)

    def run(self) -> SoakReport:
        config = self.config
        report = self.report
        self.start()
        assert self.sandbox is not None
        where = "a 3-master cluster, 3 shards" if self.cluster else "one Redis"
        log(
            f"soak {self.tag}: {config.seconds:.0f}s of chaos, the buffer on {where}; "
            f"logs in {self.logdir}"
        )
        producer = Producer(self.app, self.tag, config.rate)
        producer.start()
        self._wait_until_delivering(timeout=120)
        started = time.monotonic()
        try:
            self.chaos(config.seconds)
        finally:
            producer.stop.set()
            producer.join(30)
        report.chaos_seconds = time.monotonic() - started
        self.sandbox.set_faults(None)
        for index, worker in enumerate(self.workers):  # chaos is over: all hands on deck
            if not worker.alive():
                self.workers[index] = self._start_worker()
        accepted = dict(producer.accepted)
        log(f"chaos over: {len(accepted)} events accepted; waiting for the drain")
        drain_start = time.monotonic()
        deadline = drain_start + config.drain_timeout
        while True:
            left = self.outstanding(accepted)
            if not left:
                report.drained = True
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        report.drain_seconds = time.monotonic() - drain_start

        events = self.sandbox.events()
        stats = self.sandbox.stats()
        counts = collections.Counter(e.get("$idempotency_key") for e in events)
        dead = self.dead_keys()
        processed_keys = set(counts)
        report.accepted = len(accepted)
        report.accepted_buffered = sum(1 for v in accepted.values() if v == "buffered")
        report.accepted_direct = report.accepted - report.accepted_buffered
        report.refused = producer.refused
        report.producer_errors = dict(producer.errors)
        report.processed = stats["events_processed"]
        report.processed_accepted = len(set(accepted) & processed_keys)
        report.duplicates_skipped = stats["duplicates_skipped"]
        lost = sorted(set(accepted) - processed_keys - dead)
        report.lost = len(lost)
        report.lost_keys = [f"{k} ({accepted[k]}; {self.whereabouts(k)})" for k in lost[:20]]
        twice = sorted(str(k) for k, n in counts.items() if n > 1)
        report.processed_twice = len(twice)
        report.twice_keys = twice[:20]
        report.dead_letters = len(dead)
        report.requests = stats["requests"]
        report.outage_seconds = sum(end - start for start, end in self.outages)
        log_entries = self.sandbox.requests()
        arrivals = [r["received_at"] for r in log_entries]
        direct = {k for k, via in accepted.items() if via == "direct"}
        bulk = [r for r in log_entries if r["path"].endswith("/bulk/event/")]
        via_bulk = {k for r in bulk for k in r["idempotency_keys"]}
        singles = {
            k
            for r in log_entries
            if not r["path"].endswith("/bulk/event/") and r["status"] == 202
            for k in r["idempotency_keys"]
        }
        report.direct_sent_from_journal = len(direct & via_bulk)
        report.direct_only_from_journal = len((direct & via_bulk) - singles)
        report.requests_during_outages = sum(
            1 for t in arrivals if any(start <= t <= end for start, end in self.outages)
        )
        report.bulk_requests_during_outages = sum(
            1 for r in bulk if any(start <= r["received_at"] <= end for start, end in self.outages)
        )
        return report


def run(config: SoakConfig) -> SoakReport:
    soak = Soak(config)
    try:
        return soak.run()
    finally:
        soak.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="chaos duration")
    parser.add_argument("--rate", type=float, default=40.0, help="events per second")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--chaos-interval", type=float, default=2.5)
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--cluster", action="store_true", help="the buffer on a 3-master Redis Cluster, 3 shards"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    config = SoakConfig(
        seconds=args.seconds,
        rate=args.rate,
        workers=args.workers,
        concurrency=args.concurrency,
        chaos_interval=args.chaos_interval,
        drain_timeout=args.drain_timeout,
        seed=args.seed,
        cluster=args.cluster,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    report = run(config)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
