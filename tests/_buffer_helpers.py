"""Helpers shared by the buffered-path tests (test_flush.py, test_buffer_faults.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from celery import Celery
from conftest import WORKSPACE_KEY, WORKSPACE_SECRET, wait_for

from suprsend_celery import Event
from suprsend_celery.buffer.protocol import Buffer
from suprsend_celery.buffer.redis_buffer import RedisBuffer
from suprsend_celery.delivery.decisions import DeadDecision, RetryDecision, Settlement, Verdict
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.events.records import read_item
from suprsend_celery.exceptions import TransientDeliveryError
from suprsend_celery.tasks.flush import FLUSH_TASK

TESTS = Path(__file__).resolve().parent
MAX_BULK_BODY = 800 * 1024


def buffer_of(app: Celery) -> Buffer:
    """The app's Redis buffer (tests always configure one)."""
    from suprsend_celery.pipeline.runtime import get_buffer

    return get_buffer(app)


def settlement(
    *,
    retries: Sequence[tuple[float, bytes]] = (),
    dead: Sequence[bytes] = (),
    back: Sequence[bytes] = (),
    verdict: Verdict = "",
    open_for: float = 0.0,
    reason: str = "",
) -> Settlement:
    """A ``Settlement`` as ``decide`` makes them, of the bytes a test names: ``retries``
    as ``(delay, stored item)`` pairs, ``dead`` as dead-letter entries."""
    error = TransientDeliveryError("a test's settlement")
    return Settlement(
        retries=[
            RetryDecision(index, (read_item(item) or (0, item))[0], delay, item, error)
            for index, (delay, item) in enumerate(retries)
        ],
        dead=[DeadDecision(index, 1, "test", entry, error) for index, entry in enumerate(dead)],
        back=list(back),
        verdict=verdict,
        open_for=open_for,
        reason=reason,
    )


def make_events(count: int, name: str = "order_placed", blob: int = 0) -> list[Event]:
    """``count`` distinct events; ``blob`` pads each one's properties to about that size."""
    extra = {"blob": "x" * blob} if blob else {}
    return [Event(f"user-{i}", name, {"n": i, **extra}) for i in range(count)]


def flush(app: Celery, time_budget: float = 10.0, timeout: float = 60.0) -> dict[str, Any]:
    """Run ``flush_buffer`` on the worker and return its result."""
    result: dict[str, Any] = app.send_task(FLUSH_TASK, kwargs={"time_budget": time_budget}).get(
        timeout=timeout
    )
    return result


def flush_until(
    app: Celery,
    condition: Callable[[], Any],
    timeout: float = 60.0,
    message: str = "",
    interval: float = 0.05,
) -> list[dict[str, Any]]:
    """Run ``flush_buffer`` on the worker, again and again, until ``condition`` holds."""
    results: list[dict[str, Any]] = []

    def step() -> Any:
        if condition():
            return True
        results.append(flush(app))
        return condition()

    wait_for(step, timeout=timeout, interval=interval, message=message or str(condition))
    return results


def processed_keys(sandbox: Sandbox) -> Counter[str]:
    """How often each idempotency key was processed by the sandbox (1 each, ideally)."""
    return Counter(e["$idempotency_key"] for e in sandbox.events())


def sent_keys(sandbox: Sandbox) -> Counter[str | None]:
    """How often each idempotency key was sent to the sandbox, in any request."""
    return Counter(k for r in sandbox.requests() for k in r.idempotency_keys)


def assert_bulk_limits(sandbox: Sandbox) -> None:
    """Every bulk request stayed within SuprSend's limits (100 records, 800 KiB)."""
    bulk = [r for r in sandbox.requests() if r.path.endswith("/v2/bulk/event/")]
    assert bulk, "no bulk request was sent"
    for r in bulk:
        assert r.records is not None and 1 <= r.records <= 100, r
        assert r.body_bytes <= MAX_BULK_BODY, r


def redis_state(buffer: Buffer) -> dict[str, int]:
    """Every part of the buffer, counted from Redis."""
    assert isinstance(buffer, RedisBuffer), "one shard"
    r, keys = buffer.redis, buffer.keys
    live_claims = r.zrange(keys.claims, 0, -1)
    return {
        "pending": int(r.llen(keys.pending)),
        "in_flight": int(r.get(keys.inflight) or 0),
        "claims": len(live_claims),
        "claimed_records": sum(int(r.llen(keys.claim(c.decode()))) for c in live_claims),
        "retry": int(r.zcard(keys.retry)),
        "dead": int(r.llen(keys.dead)),
    }


EMPTY = {"pending": 0, "in_flight": 0, "claims": 0, "claimed_records": 0, "retry": 0, "dead": 0}


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SUPRSEND_WORKSPACE_KEY=WORKSPACE_KEY,
        SUPRSEND_WORKSPACE_SECRET=WORKSPACE_SECRET,
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def spawn(args: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a child in its own process group (so a SIGKILL can take all of it)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=TESTS.parent,
            start_new_session=True,
        )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child and everything in its process group, and reap it."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def wait_group_gone(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until no process of the child's group is left (pool children included)."""

    def gone() -> bool:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, timeout=timeout, message=f"process group {proc.pid} to exit")
