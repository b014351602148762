"""Settings and URLs for Sentinel, Redis Cluster and shards (no servers needed)."""

from __future__ import annotations

from typing import Any

import pytest

from suprsend_celery.buffer.connection import connect
from suprsend_celery.buffer.sharded import registry_key, shard_prefix
from suprsend_celery.delivery.routing import mask_url
from suprsend_celery.exceptions import ConfigurationError
from suprsend_celery.pipeline.settings import load_settings

CREDENTIALS = {"suprsend_workspace_key": "WSKEY_x", "suprsend_workspace_secret": "WSSECRET_x"}
SENTINELS = "sentinel://:pw@127.0.0.1:26379/2;sentinel://127.0.0.1:26380"


def settings(**conf: Any) -> Any:
    return load_settings({**CREDENTIALS, **conf})


class TestSettings:
    """The new keys, and the master name from where Celery and kombu keep it."""

    def test_defaults(self) -> None:
        s = settings()
        assert (s.buffer_shards, s.buffer_min_replicas, s.redis_master_name) == (1, 0, None)

    @pytest.mark.parametrize(
        ("key", "value"),
        [("buffer_shards", 0), ("buffer_shards", "x"), ("buffer_min_replicas", -1)],
    )
    def test_bad_values_name_the_key(self, key: str, value: object) -> None:
        with pytest.raises(ConfigurationError, match=f"suprsend_{key}"):
            settings(**{f"suprsend_{key}": value})

    def test_sentinel_broker_is_the_buffer_with_its_master_name(self) -> None:
        """A sentinel:// broker gives the buffer its whole list and the master's name."""
        s = settings(
            broker_url=SENTINELS,
            broker_transport_options={"master_name": "mymaster", "sentinel_kwargs": {"a": 1}},
        )
        assert s.redis_url == SENTINELS
        assert s.redis_master_name == "mymaster"
        assert s.sentinel_kwargs == {"a": 1}

    def test_own_master_name_wins(self) -> None:
        s = settings(
            suprsend_redis_url=SENTINELS,
            suprsend_redis_master_name="buffer",
            broker_transport_options={"master_name": "broker"},
        )
        assert s.redis_master_name == "buffer"

    def test_result_backend_option_is_read_too(self) -> None:
        s = settings(
            suprsend_redis_url=SENTINELS,
            result_backend_transport_options={"master_name": "results"},
        )
        assert s.redis_master_name == "results"

    def test_sentinel_without_a_master_name_is_refused(self) -> None:
        with pytest.raises(ConfigurationError, match="suprsend_redis_master_name"):
            settings(suprsend_redis_url=SENTINELS)


def test_every_sentinel_password_is_masked() -> None:
    """Each URL of a Sentinel list has its password hidden."""
    masked = mask_url("sentinel://:a@h1:26379;sentinel://u:b@h2:26379/0")
    assert masked == "sentinel://:***@h1:26379;sentinel://u:***@h2:26379/0"


def test_sentinel_client_from_url() -> None:
    """The master's db and password come from the first URL (as in Celery's Sentinel
    backend); every sentinel is asked."""
    client = connect(SENTINELS, master_name="mymaster")
    pool = client.connection_pool
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == "pw"
    hosts = [
        (kwargs["host"], kwargs["port"])
        for kwargs in (c.connection_pool.connection_kwargs for c in pool.sentinel_manager.sentinels)
    ]
    assert hosts == [("127.0.0.1", 26379), ("127.0.0.1", 26380)]
    client.close()


def test_shard_names() -> None:
    """Shard 0 is the unsharded buffer's tag; the others add their index inside the tag."""
    assert [shard_prefix("p", i) for i in range(3)] == ["p", "p:1", "p:2"]
    assert registry_key("p") == "{p}:shards"
