"""The buffer's Redis client, whichever way Redis is deployed.

- ``redis://`` (``rediss://``, ``unix://``, ``valkey://``): one server. When that server
  runs in cluster mode (``INFO cluster`` reports ``cluster_enabled:1``), a
  ``RedisCluster`` client instead, which learns every node from it: the URL of any
  node will do. It retries a command as long as behind Sentinel, so a flush run
  outlasts a replica's promotion (redis-py's own retries end after 2 to 4 s, a
  failover takes the cluster's node timeout and then some).
- ``sentinel://host:26379/0;sentinel://host2:26379``: Sentinel, in the form kombu and
  Celery's result backend use (the first URL's db and password are the master's), with
  the master name of ``suprsend_redis_master_name`` or ``broker_transport_options
  ['master_name']``. The client asks the sentinels for the master at every connect,
  and retries a command for about ``FAILOVER_RETRIES`` backoff steps, so a failover
  is followed without a restart. A demoted master answers writes with READONLY;
  redis-py's Sentinel connection turns that into a reconnect to the new one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from .. import defaults
from ..exceptions import ConfigurationError

__all__ = ["SENTINEL_SCHEME", "close_client", "connect"]

SENTINEL_SCHEME = "sentinel://"

#: The buffer's client options: fail a call in bounded time, notice dead connections.
_TIMEOUTS: dict[str, Any] = {
    "socket_timeout": 10,
    "socket_connect_timeout": 5,
    "health_check_interval": 30,
}

#: Behind Sentinel or on a cluster: retry long enough (about 15 s) to reach the
#: promoted replica.
FAILOVER_RETRY = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), defaults.FAILOVER_RETRIES)


def connect(
    url: str,
    *,
    master_name: str | None = None,
    sentinel_kwargs: dict[str, Any] | None = None,
    fail_fast: float | None = None,
    cluster: bool | None = None,
) -> Any:
    """A ``redis.Redis`` (one server or Sentinel's master) or a ``redis.RedisCluster``.

    ``fail_fast``: socket timeouts of that many seconds and no retries (health checks,
    the first look at a server). ``cluster``: whether ``url`` is a cluster node, when
    known; else ``INFO cluster`` tells.
    """
    options: dict[str, Any] = dict(_TIMEOUTS)
    if fail_fast is not None:
        options = {
            "socket_timeout": fail_fast,
            "socket_connect_timeout": fail_fast,
            "retry": Retry(NoBackoff(), 0),
        }
    if url.startswith(SENTINEL_SCHEME):
        if not master_name:
            raise ConfigurationError(
                "a sentinel:// Redis URL needs a master name: set suprsend_redis_master_name "
                "or broker_transport_options['master_name']"
            )
        return _sentinel_master(url, master_name, sentinel_kwargs or {}, options)
    if cluster is None:
        cluster = _is_cluster(url, options)
    if cluster:
        cluster_options = {k: v for k, v in options.items() if k.startswith("socket_")}
        if fail_fast is None:  # as behind Sentinel: outlast the promotion of a replica
            cluster_options["retry"] = FAILOVER_RETRY
        return redis.RedisCluster.from_url(url, **cluster_options)
    return redis.Redis.from_url(url, **options)


def close_client(client: Any) -> None:
    """Close a client ``connect`` made: its pool (a cluster's node pools), and behind
    Sentinel the sentinels' own connections too, which closing the client leaves open.
    The client stays usable: a later command connects again."""
    pool = getattr(client, "connection_pool", None)  # a cluster client has none
    manager = getattr(pool, "sentinel_manager", None)
    client.close()
    for sentinel in getattr(manager, "sentinels", ()):
        sentinel.close()


def _is_cluster(url: str, options: dict[str, Any]) -> bool:
    client = redis.Redis.from_url(url, **options)
    try:
        return bool(client.info("cluster").get("cluster_enabled"))
    except redis.ResponseError:  # INFO renamed or refused: not a cluster we could use
        return False
    finally:
        client.close()


def _sentinel_master(
    url: str, master_name: str, sentinel_kwargs: dict[str, Any], options: dict[str, Any]
) -> redis.Redis:
    hosts: list[tuple[str, int]] = []
    params: dict[str, Any] = {}
    for number, chunk in enumerate(url.split(";")):
        parts = urlsplit(chunk.strip())
        hosts.append((parts.hostname or "localhost", parts.port or 26379))
        if number == 0:
            db = parts.path.strip("/")
            params["db"] = int(db) if db.isdigit() else 0
            if parts.username:
                params["username"] = unquote(parts.username)
            if parts.password:
                params["password"] = unquote(parts.password)
    sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        hosts,
        sentinel_kwargs={"socket_timeout": 1.0, "socket_connect_timeout": 1.0, **sentinel_kwargs},
        **{"retry": FAILOVER_RETRY, **options},
        **params,
    )
    master: redis.Redis = sentinel.master_for(master_name)  # type: ignore[no-untyped-call,unused-ignore]
    return master
