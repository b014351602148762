"""What an accept error says became of its events (``accepted``), checked per event on a
real Redis frozen mid-accept, and the bound of every call under the freeze.

Each test runs a private ``redis-server`` and freezes it (``SIGSTOP``/``SIGCONT``, or
``CLIENT PAUSE WRITE``) while calls are in flight. Once it is back, every call is
judged by what Redis holds: one that returned is stored; one that raised with
``accepted is False`` is not, with ``True`` it is, with ``None`` either may be; the
message says the same.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from conftest import REDIS_KILLED, current_app, wait_for

import suprsend_celery
from suprsend_celery import (
    BufferUnavailableError,
    PublishError,
    SuprsendCeleryError,
    abuffer_event,
    atrack_event,
    buffer_event,
    track_event,
)
from suprsend_celery.dev.redis_server import RedisServer
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.exceptions import Accepted, ReplicationError, accept_outcome
from suprsend_celery.pipeline.async_producers import aclose
from suprsend_celery.pipeline.runtime import get_buffer, get_flusher
from suprsend_celery.tasks.journal import never_sent

QUEUE = "suprsend-tests"  # conftest's task_default_queue
#: Where the package under test is imported from (for a subprocess).
PACKAGE_ROOT = str(Path(suprsend_celery.__file__).resolve().parents[1])
BOUND = 1.0  # suprsend_accept_timeout in these tests
FREEZE = 1.5  # longer than the bound: some calls fail, some succeed once Redis resumes
#: What a call may take beyond the bound: the event loop's (or a thread's) own lag on
#: a shared test machine. The documented margin is the loop's lag alone.
MARGIN = 0.5

#: The words each verdict's message carries.
VERDICT = {
    False: "were not accepted: nothing was stored",
    None: "whether the event(s) were accepted is unknown",
    True: "the event(s) were accepted: they are stored",
}


@contextmanager
def frozen(server: RedisServer, seconds: float, how: str = "sigstop") -> Iterator[None]:
    """Freeze ``server`` for ``seconds`` from now (``sigstop``, or ``CLIENT PAUSE``
    ``WRITE``/``ALL``); it resumes by itself, and at the latest on leaving."""
    pid = server.pid
    assert pid is not None
    resumed = threading.Event()

    def resume() -> None:
        if how == "sigstop" and not resumed.is_set():
            os.kill(pid, signal.SIGCONT)
        resumed.set()

    if how == "sigstop":
        os.kill(pid, signal.SIGSTOP)
    else:
        admin = server.client()
        admin.execute_command("CLIENT", "PAUSE", int(seconds * 1000), how)
        admin.close()
    timer = threading.Timer(seconds, resume)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        resume()


@contextmanager
def app_on(server: RedisServer, sandbox: Sandbox, **conf: Any) -> Iterator[Celery]:
    with current_app(
        server.url,
        sandbox.url,
        result_backend=None,
        suprsend_accept_timeout=BOUND,
        **conf,
    ) as app:
        yield app


Outcome = tuple[str, BaseException | None, float]
"""A call's idempotency key, its error (None when it returned) and its duration."""


def timed(key: str, call: Callable[[], Any]) -> Outcome:
    started = time.monotonic()
    try:
        call()
    except SuprsendCeleryError as exc:
        return key, exc, time.monotonic() - started
    return key, None, time.monotonic() - started


def stored_keys(client: redis.Redis, *keys: str) -> set[str]:
    """The idempotency keys of the records in these lists or sorted sets."""
    found: set[str] = set()
    for key in keys:
        if client.type(key) == b"zset":
            raw = client.zrange(key, 0, -1)
        else:
            raw = client.lrange(key, 0, -1)
        found |= {json.loads(r)["$idempotency_key"] for r in raw}
    return found


def check(outcomes: list[Outcome], stored: set[str], cls: type[Exception]) -> dict[Accepted, int]:
    """Every call's verdict agrees with what Redis holds; returns how many calls got
    each verdict (``"ok"`` for those that returned)."""
    seen: dict[Any, int] = {}
    for key, error, _ in outcomes:
        if error is None:
            assert key in stored, f"{key}: returned, but not stored"
            seen["ok"] = seen.get("ok", 0) + 1
            continue
        assert isinstance(error, cls), f"{key}: {error!r}"
        accepted = error.accepted  # type: ignore[attr-defined]
        assert error.idempotency_keys == (key,)  # type: ignore[attr-defined]
        assert VERDICT[accepted] in str(error), f"{key}: {error}"
        assert "same idempotency keys (.idempotency_keys)" in str(error)
        if accepted is False:
            assert key not in stored, f"{key}: accepted=False, yet stored"
        elif accepted is True:
            assert key in stored, f"{key}: accepted=True, yet not stored"
        seen[accepted] = seen.get(accepted, 0) + 1
    return seen


def settled(server: RedisServer) -> redis.Redis:
    """A client once the server answers again: what it had read before the freeze
    ended has run (it reads every ready connection before a new one's PING)."""
    client = server.client()
    wait_for(lambda: client.ping(), 10, message="Redis to answer again")
    return client


class TestErrorText:
    """The attribute and the message say the same, and both survive pickling."""

    @pytest.mark.parametrize("accepted", [False, None, True])
    def test_message_ends_with_the_verdict(self, accepted: Accepted) -> None:
        """``because`` appends the verdict's sentence; ``accepted`` and the keys pickle."""
        import pickle

        error = BufferUnavailableError.because(
            "redis down", accepted=accepted, idempotency_keys=("k1",)
        )
        assert str(error) == f"redis down; {accept_outcome(accepted)}"
        assert VERDICT[accepted] in str(error)
        copy = pickle.loads(pickle.dumps(error))
        assert (str(copy), copy.accepted, copy.idempotency_keys) == (str(error), accepted, ("k1",))

    def test_defaults(self) -> None:
        """Unknown unless the raiser knows; a replication error's events are stored."""
        assert BufferUnavailableError("x").accepted is None
        assert PublishError("x").accepted is None
        assert ReplicationError("x").accepted is True


class TestNothingListening:
    """A refused connection: certainly not stored."""

    def _stopped(self) -> str:
        server = RedisServer(appendonly=False)
        server.start()
        url = server.url
        server.stop()
        return url

    @REDIS_KILLED
    def test_every_producer_says_not_accepted(self, sandbox: Sandbox) -> None:
        """``buffer_event``, ``abuffer_event``, ``delay`` and ``atrack_event``: ``accepted
        is False`` and the message says so."""
        url = self._stopped()
        with current_app(
            url, sandbox.url, result_backend=None, suprsend_accept_timeout=BOUND
        ) as app:

            async def both() -> list[Outcome]:
                found = []
                for key, call in (
                    ("k-a", lambda: abuffer_event("u", "ev_down", idempotency_key="k-a")),
                    ("k-t", lambda: atrack_event("u", "ev_down", idempotency_key="k-t")),
                ):
                    started = time.monotonic()
                    try:
                        await call()
                    except SuprsendCeleryError as exc:
                        found.append((key, exc, time.monotonic() - started))
                await aclose(app)
                return found

            outcomes = [
                timed("k-s", lambda: buffer_event("u", "ev_down", idempotency_key="k-s")),
                timed("k-d", lambda: track_event.delay("u", "ev_down", idempotency_key="k-d")),
                *asyncio.run(both()),
            ]
        assert len(outcomes) == 4
        for key, error, took in outcomes:
            assert error is not None and getattr(error, "accepted", "?") is False, (key, error)
            assert VERDICT[False] in str(error)
            assert error.idempotency_keys == (key,)  # type: ignore[attr-defined]
            assert took < BOUND + MARGIN

    @REDIS_KILLED
    def test_broker_refused_releases_the_journal_entry(self, sandbox: Sandbox) -> None:
        """The broker refuses, the journal's Redis is up: ``False``, no entry left."""
        with (
            RedisServer(appendonly=False) as store,
            current_app(
                self._stopped(),
                sandbox.url,
                result_backend=None,
                suprsend_redis_url=store.url,
                suprsend_accept_timeout=BOUND,
            ) as app,
        ):
            _, error, _ = timed(
                "k-b", lambda: track_event.delay("u", "ev_b", idempotency_key="k-b")
            )
            assert isinstance(error, PublishError) and error.accepted is False
            buffer = get_buffer(app)
            assert buffer.redis.zcard(buffer.keys.journal) == 0
            buffer.redis.close()


class TestSyncFrozen:
    """``buffer_event`` from 25 threads while Redis is frozen for longer than the bound."""

    def test_outcome_per_event(self, sandbox: Sandbox) -> None:
        """Idle connections get the push written (``None``: it runs when Redis resumes);
        fresh ones cannot finish their handshake (``False``: nothing sent). Each call
        ends within the bound."""
        calls = 25
        with RedisServer(appendonly=False) as server, app_on(server, sandbox) as app:
            with ThreadPoolExecutor(calls) as pool:
                # Some idle producer connections, and the policy reading taken.
                list(pool.map(lambda i: buffer_event("u", "warm_up", app=app), range(calls // 2)))
                with frozen(server, FREEZE):
                    outcomes = list(
                        pool.map(
                            lambda i: timed(
                                f"k{i}",
                                lambda: buffer_event("u", "ev_f", idempotency_key=f"k{i}", app=app),
                            ),
                            range(calls),
                        )
                    )
            client = settled(server)
            seen = check(
                outcomes, stored_keys(client, "{suprsend_celery}:pending"), BufferUnavailableError
            )
            client.close()
        assert seen.get(None) and seen.get(False), seen  # both kinds were exercised
        assert max(took for _, _, took in outcomes) < BOUND + MARGIN


class TestAsyncFrozen:
    """``abuffer_event`` calls arriving in waves while Redis is frozen and as it resumes."""

    async def _waves(self, app: Celery, server: RedisServer, how: str) -> list[Outcome]:
        outcomes: list[Outcome] = []

        async def one(key: str) -> None:
            started = time.monotonic()
            try:
                await abuffer_event("u", "ev_w", idempotency_key=key, app=app)
            except SuprsendCeleryError as exc:
                outcomes.append((key, exc, time.monotonic() - started))
            else:
                outcomes.append((key, None, time.monotonic() - started))

        # Warm: the loop's pool holds its 64 connections, the policy reading is taken.
        await asyncio.gather(*(abuffer_event("u", "warm_up", app=app) for _ in range(100)))
        tasks = []
        with frozen(server, FREEZE, how):
            start = time.monotonic()
            wave = 0
            while time.monotonic() - start < FREEZE + 0.5:  # into the resume
                tasks += [asyncio.ensure_future(one(f"k{wave}-{i}")) for i in range(20)]
                wave += 1
                await asyncio.sleep(0.02)
            await asyncio.gather(*tasks)
        await aclose(app)
        return outcomes

    @pytest.mark.parametrize("how", ["sigstop", "WRITE"])
    def test_outcome_per_event_and_bound(self, sandbox: Sandbox, how: str) -> None:
        """Calls on connections that had written their push (``None``) and calls that
        never sent (``False``: a frozen server's new connections cannot finish their
        handshake) agree with Redis; every call, one that succeeded as Redis
        resumed included, ends within the bound plus the loop's lag."""
        with RedisServer(appendonly=False) as server, app_on(server, sandbox) as app:
            outcomes = asyncio.run(self._waves(app, server, how))
            client = settled(server)
            seen = check(
                outcomes, stored_keys(client, "{suprsend_celery}:pending"), BufferUnavailableError
            )
            client.close()
        assert seen.get(None) and seen.get("ok"), seen
        if how == "sigstop":  # a paused write lets new connections' handshakes through
            assert seen.get(False), seen
        slowest = max(took for _, _, took in outcomes)
        assert slowest < BOUND + MARGIN, f"a call took {slowest:.2f}s ({seen})"

    def test_sharded_push_in_a_thread_keeps_the_bound(self, sandbox: Sandbox) -> None:
        """A sharded buffer pushes from async code in a thread: 40 concurrent calls on
        a pool of few threads, Redis frozen. Each ends within the bound; the thread's
        push shares the call's attempt, so the verdicts hold."""
        with (
            RedisServer(appendonly=False) as server,
            app_on(server, sandbox, suprsend_buffer_shards=2) as app,
        ):
            get_buffer(app)  # built: the async producers take the thread

            async def calls() -> list[Outcome]:
                found: list[Outcome] = []

                async def one(key: str) -> None:
                    started = time.monotonic()
                    try:
                        await abuffer_event("u", "ev_s", idempotency_key=key, app=app)
                    except SuprsendCeleryError as exc:
                        found.append((key, exc, time.monotonic() - started))
                    else:
                        found.append((key, None, time.monotonic() - started))

                await asyncio.gather(*(one(f"w{i}") for i in range(8)))
                with frozen(server, FREEZE):
                    await asyncio.gather(*(one(f"k{i}") for i in range(40)))
                await aclose(app)
                return [o for o in found if o[0].startswith("k")]

            outcomes = asyncio.run(calls())
            client = settled(server)
            pending = [k.decode() for k in client.keys("{suprsend_celery*}:pending")]
            seen = check(outcomes, stored_keys(client, *pending), BufferUnavailableError)
            client.close()
        assert seen.get(False), seen  # those still queued for a thread at the deadline
        assert max(took for _, _, took in outcomes) < BOUND + MARGIN


class TestDirectFrozen:
    """``track_event.delay`` when its journal's Redis, or its broker, freezes."""

    def test_journal_frozen(self, sandbox: Sandbox) -> None:
        """The journal step fails: ``False`` ⇒ no entry and nothing published; ``None``
        ⇒ the entry may be there (the flusher would send it). Never published."""
        calls = 12
        with (
            RedisServer(appendonly=False) as broker,
            RedisServer(appendonly=False) as store,
            current_app(
                broker.url,
                sandbox.url,
                result_backend=None,
                suprsend_redis_url=store.url,
                suprsend_accept_timeout=BOUND,
            ),
        ):
            with ThreadPoolExecutor(calls) as pool:
                list(pool.map(lambda i: track_event.delay("u", "warm_up"), range(calls // 2)))
                published = broker.client().llen(QUEUE)
                with frozen(store, FREEZE):
                    outcomes = list(
                        pool.map(
                            lambda i: timed(
                                f"k{i}",
                                lambda: track_event.delay("u", "ev_j", idempotency_key=f"k{i}"),
                            ),
                            range(calls),
                        )
                    )
            client = settled(store)
            journaled = stored_keys(client, "{suprsend_celery}:journal")
            client.close()
            assert broker.client().llen(QUEUE) == published + sum(
                1 for o in outcomes if o[1] is None
            )
            seen = check(outcomes, journaled, PublishError)
        assert seen.get(None) and seen.get(False), seen
        assert max(took for _, _, took in outcomes) < BOUND + MARGIN

    def test_broker_paused_keeps_the_journal_entry(self, sandbox: Sandbox) -> None:
        """The broker does not answer the publish (``CLIENT PAUSE WRITE``, a 0.5 s socket
        timeout): it may have the message, so the journal entry stays and the event is
        sent either way: ``accepted is True``. Here the broker never got it, and the
        flusher sends it from the journal once due (a 1 s journal grace)."""
        with (
            RedisServer(appendonly=False) as broker,
            RedisServer(appendonly=False) as store,
            current_app(
                broker.url,
                sandbox.url,
                result_backend=None,
                suprsend_redis_url=store.url,
                suprsend_accept_timeout=BOUND,
                suprsend_journal_grace=1,
                broker_transport_options={"socket_timeout": 0.5, "visibility_timeout": 1},
            ) as app,
        ):
            with frozen(broker, 2.0, "WRITE"):
                key, error, _ = timed(
                    "k-p",
                    lambda: track_event.apply_async(
                        ("u", "ev_p"), {"idempotency_key": "k-p"}, retry=False
                    ),
                )
            assert isinstance(error, PublishError), error
            assert isinstance(error.__cause__, Exception) and not never_sent(error.__cause__)
            buffer = get_buffer(app)
            journaled = stored_keys(buffer.redis, buffer.keys.journal)
            assert check([(key, error, 0.0)], journaled, PublishError) == {True: 1}
            flusher = get_flusher(app)
            wait_for(
                lambda: flusher.run(time_budget=2).sent,
                15,
                interval=0.2,
                message="the journaled event to be sent",
            )
            assert [e["$idempotency_key"] for e in sandbox.events()] == ["k-p"]
            buffer.redis.close()


DJANGO_ON_COMMIT = r"""
import json, os
import django
from django.conf import settings

settings.configure(
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    INSTALLED_APPS=[],
    USE_TZ=True,
)
django.setup()

from celery import Celery
from django.db import transaction

from suprsend_celery import SuprsendCeleryError
from suprsend_celery.contrib.django import buffer_event_on_commit, track_event_on_commit

url = os.environ["TEST_REDIS_URL"]
app = Celery("on_commit_refused")
app.conf.update(
    broker_url=url,
    suprsend_workspace_key="WSKEY_test_0123456789abcdef",
    suprsend_workspace_secret="WSSECRET_test_0123456789",
    suprsend_accept_timeout=1,
    suprsend_flush_interval=0,
)
app.set_current()
app.set_default()
out = {}
for name, helper in (("buffer", buffer_event_on_commit), ("track", track_event_on_commit)):
    try:
        with transaction.atomic():
            helper("u1", "order_placed", idempotency_key=f"oc-{name}")
    except SuprsendCeleryError as exc:
        out[name] = [type(exc).__name__, exc.accepted, list(exc.idempotency_keys), str(exc)]
print(json.dumps(out))
"""


class TestDjangoOnCommit:
    """The on-commit helpers' accept errors, raised when the transaction commits."""

    @pytest.mark.slow
    def test_refused_on_commit(self) -> None:
        """Nothing listening: each helper's error names its key and says not accepted.
        Django runs in a subprocess so its settings never leak into other tests."""
        import subprocess
        import sys

        server = RedisServer(appendonly=False)
        server.start()
        url = server.url
        server.stop()
        done = subprocess.run(
            [sys.executable, "-c", DJANGO_ON_COMMIT],
            env={"PATH": "/usr/bin:/bin", "TEST_REDIS_URL": url, "PYTHONPATH": PACKAGE_ROOT},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["buffer"][:3] == ["BufferUnavailableError", False, ["oc-buffer"]]
        assert out["track"][:3] == ["PublishError", False, ["oc-track"]]
        for name in ("buffer", "track"):
            assert VERDICT[False] in out[name][3]
