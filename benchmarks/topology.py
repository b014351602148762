"""Local Redis topologies for tests and benchmarks: a Redis Cluster and a Sentinel group.

    with LocalCluster(masters=3) as cluster:   # redis-cli --cluster create, 0 replicas
        url = cluster.url                      # redis:// of one node (any node will do)
    with LocalCluster(masters=3, replicas=1) as cluster:
        old = cluster.kill_master_of("{k}")    # SIGKILL the master of that key's slot
        new = cluster.wait_for_failover("{k}", old)   # its replica now serves the slot
    with SentinelGroup() as group:             # 1 master, 1 replica, 3 sentinels
        url = group.url                        # sentinel://...;sentinel://...;...
        group.kill_master()                    # SIGKILL; wait_for_failover() after

Every process listens on a loopback port chosen free at start, and is stopped (and
its directory removed) on exit. Waits are bounded; a timeout raises with the logs.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis

from suprsend_celery.dev.redis_server import RedisServer, RedisServerError, _free_port

__all__ = ["MASTER_NAME", "LocalCluster", "SentinelGroup", "wait_until"]

CREATE_OPTIONS = ("--cluster-yes",)

MASTER_NAME = "suprsend-test"
"""The Sentinel master name the group monitors."""


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it is truthy; ``RedisServerError`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            value = condition()
            if value:
                return value
        if time.monotonic() > deadline:
            raise RedisServerError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


#: A replica's full sync starts at once: Redis 7 otherwise waits 5 s
#: (``repl-diskless-sync-delay``) for more replicas to share the transfer, which on a
#: loaded machine pushed a restarted master's resync towards the 20 s wait.
_REPLICATION_ARGS = ("--repl-diskless-sync-delay", "0")


_P = TypeVar("_P", bound="_Processes")


class _Processes:
    """``with``: ``start()`` (stopping what did start if it fails), then ``stop()``."""

    def start(self: _P) -> _P:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _P) -> _P:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class LocalCluster(_Processes):
    """``masters`` cluster-mode servers, each with ``replicas`` replicas, joined by
    ``redis-cli --cluster create``.

    With replicas, a SIGKILLed master (``kill_master_of``) is replaced by its replica
    once the others have not heard from it for ``node_timeout_ms`` (then an election:
    about two node timeouts in all).
    """

    def __init__(
        self,
        masters: int = 3,
        *,
        replicas: int = 0,
        node_timeout_ms: int = 2000,
        appendonly: bool = False,
    ) -> None:
        self.master_count = masters
        self.replicas = replicas
        # An explicit bus port: the default (port + 10000) fails for ports above 55535.
        # Without full coverage required, the other masters serve while one restarts.
        self.nodes = [
            RedisServer(
                port=_free_port("127.0.0.1"),
                appendonly=appendonly,
                extra_args=[
                    *("--cluster-require-full-coverage", "no"),
                    *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                    *("--cluster-node-timeout", str(node_timeout_ms)),
                    *("--cluster-port", str(_free_port("127.0.0.1"))),
                    *_REPLICATION_ARGS,
                ],
            )
            for _ in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self: _P) -> _P:
        for node in self.nodes:
            node.start()
        addresses = [f"{n.connect_host}:{n.port}" for n in self.nodes]
        replicas = ("--cluster-replicas", str(self.replicas))
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, *replicas, *CREATE_OPTIONS],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for node in self.nodes:
            wait_until(lambda n=node: _cluster_ok(n), 20, f"cluster_state:ok on {node.port}")
        for node in self.nodes:
            wait_until(lambda n=node: _role_settled(n), 20, f"{node.port}'s replication")
        count = self.master_count
        wait_until(lambda: len(self.masters()) == count, 20, f"{count} masters")
        return self

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster.from_url(self.url)

    def _live(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.is_running()]

    def masters(self) -> list[RedisServer]:
        """The running servers that are masters now, in ``nodes`` order."""
        return [node for node in self._live() if _role(node) == "master"]

    def master_port_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot, as a running node sees it."""
        client = self._live()[0].client(socket_timeout=1)
        try:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            ranges = client.execute_command("CLUSTER", "SLOTS")
        finally:
            client.close()
        for first, last, master, *_ in ranges:
            if int(first) <= slot <= int(last):
                return int(master[1])
        raise RedisServerError(f"no node serves slot {slot} of {key!r}")

    def wait_replicated(self, timeout: float = 10.0) -> int:
        """``WAIT`` on every master until its replicas have all it wrote so far; return
        how many masters' replicas confirmed within ``timeout`` seconds."""
        confirmed = 0
        for node in self.masters():
            client = node.client(socket_timeout=timeout + 1)
            try:
                acked = int(client.execute_command("WAIT", self.replicas, int(timeout * 1000)))
            finally:
                client.close()
            confirmed += acked >= self.replicas
        return confirmed

    def kill_master_of(self, key: str) -> int:
        """SIGKILL the master serving ``key``'s slot, as a crash would; return its port."""
        port = self.master_port_of(key)
        next(node for node in self.nodes if node.port == port).kill()
        return port

    def wait_for_failover(self, key: str, old_port: int, timeout: float = 30.0) -> int:
        """Wait until another node is the master of ``key``'s slot and says so itself;
        return its port."""

        def promoted() -> int:
            port = self.master_port_of(key)
            if port == old_port:
                return 0
            server = next(node for node in self.nodes if node.port == port)
            return port if _role(server) == "master" else 0

        port: int = wait_until(promoted, timeout, f"a replica to take over {key!r}")
        return port

    def keys_per_master(self, match: str) -> dict[int, int]:
        """How many keys matching ``match`` each master holds, by port."""
        counts = {}
        for node in self.masters():
            client = node.client()
            try:
                counts[node.port] = sum(1 for _ in client.scan_iter(match=match, count=1000))
            finally:
                client.close()
        return counts

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _role(node: RedisServer) -> str:
    client = node.client(socket_timeout=1)
    try:
        return str(client.info("replication").get("role"))
    finally:
        client.close()


def _role_settled(node: RedisServer) -> bool:
    """A replica whose link to its master is up, or a master whose replicas (if any) are
    all online, so a ``WAIT`` can be answered at once."""
    client = node.client(socket_timeout=1)
    try:
        info = client.info("replication")
    finally:
        client.close()
    if info.get("role") != "master":
        return info.get("master_link_status") == "up"
    replicas = [info.get(f"slave{i}") for i in range(int(info.get("connected_slaves", 0)))]
    return all(isinstance(r, dict) and r.get("state") == "online" for r in replicas)


def _cluster_ok(node: RedisServer) -> bool:
    client = node.client()
    try:
        info = client.execute_command("CLUSTER", "INFO")
    finally:
        client.close()
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


class SentinelGroup(_Processes):
    """One master, one replica, three sentinels (quorum 2) watching ``MASTER_NAME``.

    Sentinels call a master down after ``down_after_ms`` without a reply, so a SIGKILLed
    master is replaced within a few seconds.
    """

    def __init__(self, *, down_after_ms: int = 1000, sentinels: int = 3) -> None:
        self.master = RedisServer(appendonly=False, extra_args=_REPLICATION_ARGS)
        self.replica: RedisServer | None = None
        self.down_after_ms = down_after_ms
        self.sentinel_count = sentinels
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.sentinel_ports: list[int] = []
        self._dir = Path(tempfile.mkdtemp(prefix="suprsend-sentinel-"))

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{port}/0" for port in self.sentinel_ports)

    def start(self: _P) -> _P:
        self.master.start()
        self.replica = RedisServer(
            appendonly=False,
            extra_args=[*_REPLICATION_ARGS, "--replicaof", "127.0.0.1", str(self.master.port)],
        ).start()
        wait_until(lambda: self._link_up(), 20, "the replica to sync")
        for index in range(self.sentinel_count):
            self._start_sentinel(index)
        wait_until(self._sentinels_agree, 20, "every sentinel to see the replica and the others")
        return self

    def _link_up(self) -> bool:
        assert self.replica is not None
        client = self.replica.client()
        try:
            return bool(client.info("replication").get("master_link_status") == "up")
        finally:
            client.close()

    def _start_sentinel(self, index: int) -> None:
        port = _free_port("127.0.0.1")
        conf = self._dir / f"sentinel-{index}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self._dir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} 4000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        log = open(self._dir / f"sentinel-{index}.log", "ab")  # noqa: SIM115 - kept by the child
        process = subprocess.Popen(
            [self.master.binary, str(conf), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.sentinels.append(process)
        self.sentinel_ports.append(port)

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, socket_timeout=1)
            try:
                master = client.sentinel_master(MASTER_NAME)
            finally:
                client.close()
            if int(master["num-slaves"]) < 1 or int(master["num-other-sentinels"]) < 2:
                return False
        return True

    def master_port(self) -> int:
        """The port of the master the sentinels name now."""
        client = redis.Redis(port=self.sentinel_ports[0], socket_timeout=1)
        try:
            host_port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        finally:
            client.close()
        return int(host_port[1])

    def kill_master(self) -> int:
        """SIGKILL the current master; return its old port."""
        port = self.master_port()
        for server in (self.master, self.replica):
            if server is not None and server.port == port:
                server.kill()
        return port

    def wait_for_failover(self, old_port: int, timeout: float = 20.0) -> int:
        """Wait until the sentinels promote another server and it accepts writes."""

        def promoted() -> int:
            port = self.master_port()
            if port == old_port:
                return 0
            client = redis.Redis(port=port, socket_timeout=1)
            try:
                role = client.info("replication").get("role")
            finally:
                client.close()
            return port if role == "master" else 0

        port: int = wait_until(promoted, timeout, "a failover")
        return port

    def restart_old_master(self, old_port: int, new_port: int, timeout: float = 20.0) -> None:
        """Start the killed server again as the new master's replica and wait until it
        is in sync (so ``WAIT 1`` can succeed again).

        As an operator would: a crashed master that comes back empty *as a master*
        can win a second failover before the sentinels demote it, and take the data.
        """
        server = self.master if self.master.port == old_port else self.replica
        assert server is not None
        server.extra_args = (*_REPLICATION_ARGS, "--replicaof", "127.0.0.1", str(new_port))
        server.start()

        def replicating() -> bool:
            client = server.client(socket_timeout=1)
            try:
                info = client.info("replication")
            finally:
                client.close()
            return info.get("role") == "slave" and info.get("master_link_status") == "up"

        wait_until(replicating, timeout, "the old master to replicate the new one")

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.kill()
            process.wait()
        self.sentinels.clear()
        if self.replica is not None:
            self.replica.stop()
        self.master.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
