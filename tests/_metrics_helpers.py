"""Reading the exporter the way Prometheus does: its text, through prometheus_client's parser."""

from __future__ import annotations

import io
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import requests
from conftest import wait_for
from prometheus_client.parser import text_string_to_metric_families

from suprsend_celery.delivery.tally import status_class
from suprsend_celery.dev.sandbox import Sandbox

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (sample name, sorted labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def counters(samples: Samples) -> Samples:
    """The samples that must never go down: counters and histogram series."""
    return {
        key: v
        for key, v in samples.items()
        if key[0].endswith(("_total", "_bucket", "_count", "_sum"))
    }


def scrape(url: str) -> Samples:
    response = requests.get(url, timeout=10)
    response.raise_for_status()
    assert response.headers["Content-Type"].startswith("text/plain")
    return parse(response.text)


def scrape_wsgi(wsgi: Any) -> Samples:
    """Call a WSGI app in-process, as a server would, and parse what it answers."""
    environ: dict[str, Any] = {"PATH_INFO": "/metrics", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(wsgi(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status and status[0].startswith("200"), status
    return parse(body.decode())


def sandbox_request_classes(sandbox: Sandbox, path: str) -> Counter[str]:
    """Requests the sandbox saw on ``path``, by status class (a dropped one is ``error``)."""
    return Counter(status_class(r.status) for r in sandbox.requests() if r.path.endswith(path))


def start_exporter(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``suprsend-celery metrics --port 0`` in a subprocess; returns it and its URL."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "suprsend_celery.ops.cli", "metrics", "--port", "0"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def url() -> str | None:
        if proc.poll() is not None:
            raise AssertionError(log.read_text())
        for line in log.read_text().splitlines():
            if line.startswith("serving "):
                return line.split()[-1]
        return None

    return proc, wait_for(url, timeout=30, message="the exporter to listen")
