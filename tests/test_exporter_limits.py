"""The exporter (``suprsend-celery metrics``) under a flood of idle connections.

A real exporter subprocess on the test Redis: hundreds of connections that never send
a request must not hold a thread each, must be closed after ``READ_TIMEOUT``, and a
real scrape made behind them is answered at once.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests
from conftest import wait_for
from test_cli import cli_command, redis_only_env, serving_url

from suprsend_celery.ops.exporter import MAX_THREADS, READ_TIMEOUT

pytestmark = pytest.mark.slow

IDLE = 400


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.fixture
def exporter(redis_url: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    process = subprocess.Popen(
        [*cli_command(), "metrics", "--port", "0"],
        env=redis_only_env(redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    try:
        yield process, serving_url(process)
    finally:
        process.terminate()
        process.communicate(timeout=15)


def closed_by_peer(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_idle_connections_hold_no_threads_and_a_scrape_gets_through(
    exporter: tuple[subprocess.Popen[bytes], str],
) -> None:
    """400 connections that send nothing: the thread count stays bounded, a scrape
    behind them is answered promptly, and each is closed within the read timeout."""
    process, url = exporter
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 0)
    assert requests.get(url, timeout=10).ok  # warm: the pool threads exist now
    baseline = threads_of(process.pid)
    idle = [socket.create_connection(address, timeout=10) for _ in range(IDLE)]
    try:
        opened = time.monotonic()
        # Accepted in order: once this is answered, every idle connection was accepted.
        started = time.monotonic()
        scrape = requests.get(url, timeout=10)
        elapsed = time.monotonic() - started
        assert scrape.ok
        assert "suprsend_celery_redis_up 1.0" in scrape.text
        assert elapsed < 2.0, f"a scrape behind {IDLE} idle connections took {elapsed:.1f}s"
        assert threads_of(process.pid) <= max(baseline, MAX_THREADS + 1)
        wait_for(
            lambda: all(closed_by_peer(s) for s in idle),
            timeout=READ_TIMEOUT + 5,
            interval=0.1,
            message="the exporter closing idle connections",
        )
        assert time.monotonic() - opened < READ_TIMEOUT + 5
        assert threads_of(process.pid) <= max(baseline, MAX_THREADS + 1)
    finally:
        for sock in idle:
            sock.close()
    assert requests.get(url, timeout=10).ok
