"""A real Prometheus server scrapes ``suprsend-celery metrics`` on loopback.

Prometheus is Debian's package (``apt-get install prometheus``; ``.ci/run`` installs
it). The test runs it with a temporary config and storage, never the system service.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from _buffer_helpers import make_events, subprocess_env
from _metrics_helpers import scrape, start_exporter, value
from celery import Celery
from conftest import wait_for

from suprsend_celery import buffer_events
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.pipeline.runtime import get_flusher

PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None, reason="no prometheus binary: apt-get install prometheus"
    ),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def query(base: str, promql: str) -> list[dict[str, Any]]:
    """The instant vector Prometheus' HTTP API answers for ``promql``."""
    response = requests.get(f"{base}/api/v1/query", params={"query": promql}, timeout=10)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_prometheus_scrapes_our_metrics(
    celery_app: Celery, sandbox: Sandbox, redis_url: str, tmp_path: Path
) -> None:
    """After real deliveries, Prometheus' query API returns the exporter's figures."""
    sandbox.set_faults({"paths": ["/v2/bulk/event/"], "rules": [{"status": 503, "count": 1}]})
    buffer_events(make_events(150), app=celery_app)
    flusher = get_flusher(celery_app)
    wait_for(lambda: flusher.run(time_budget=5).remaining == 0, timeout=30, message="a full drain")
    env = subprocess_env(SUPRSEND_BASE_URL=sandbox.url, CELERY_BROKER_URL=redis_url)
    exporter, url = start_exporter(env, tmp_path / "exporter.log")
    target = url.split("/")[2]
    listen = f"127.0.0.1:{free_port()}"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: suprsend-celery\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    log = tmp_path / "prometheus.log"
    assert PROMETHEUS is not None
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address={listen}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    base = f"http://{listen}"
    try:
        expected = scrape(url)
        sent = value(expected, "suprsend_celery_records_total", outcome="sent")
        assert sent == 150

        def scraped() -> list[dict[str, Any]] | None:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                return query(base, 'suprsend_celery_records_total{outcome="sent"}') or None
            except requests.ConnectionError:
                return None  # not listening yet

        (series,) = wait_for(scraped, timeout=60, interval=0.5, message="a Prometheus scrape")
        assert series["metric"]["job"] == "suprsend-celery"
        assert series["metric"]["instance"] == target
        assert float(series["value"][1]) == sent
        (up,) = query(base, 'up{job="suprsend-celery"}')
        assert up["value"][1] == "1"
        retried = query(base, 'suprsend_celery_records_total{outcome="retried"}')
        assert float(retried[0]["value"][1]) == value(
            expected, "suprsend_celery_records_total", outcome="retried"
        )
        quantile = query(
            base,
            "histogram_quantile(0.5, sum by (le) "
            '(suprsend_celery_request_duration_seconds_bucket{path="bulk"}))',
        )
        assert 0 < float(quantile[0]["value"][1]) <= 30
        targets = requests.get(f"{base}/api/v1/targets", timeout=10).json()
        (active,) = targets["data"]["activeTargets"]
        assert active["health"] == "up", active
    finally:
        server.terminate()
        server.wait(timeout=30)
        exporter.terminate()
        exporter.wait(timeout=10)
