"""The Django outbox on SQLite and on PostgreSQL, with real Redis, workers and the sandbox.

Django is configured in this process (``_django_outbox``: a SQLite file as ``default``
and, where the binaries exist, a private PostgreSQL server as ``pg``); relays that are
killed, or that race each other, run in processes of their own (``_outbox_relay_proc``).
The PostgreSQL tests skip only when PostgreSQL is not installed, never in CI.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from _django_outbox import configure, environment
from celery import Celery
from click.testing import CliRunner
from conftest import REDIS_KILLED, WORKSPACE_KEY, WORKSPACE_SECRET, in_process_worker, wait_for

from suprsend_celery import BufferFullError, Event, InvalidEventError, SuprsendCeleryError
from suprsend_celery.defaults import FLUSH_TASK
from suprsend_celery.dev.postgres_server import PostgresServer, find_postgres_bin
from suprsend_celery.dev.redis_server import RedisServer
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.events.model import AcceptedRecord
from suprsend_celery.pipeline.producers import accept_call
from suprsend_celery.pipeline.runtime import runtime_of

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
#: In every event's properties: it must never show up in a log line or an admin page.
MARKER = "outbox-marker-3b9e-properties-stay-hidden"


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, Any] | None]:
    """A private PostgreSQL server's connection settings; None when not installed."""
    if find_postgres_bin() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is required in CI (.ci/run installs Debian's package)")
        yield None
        return
    with PostgresServer() as server:
        yield server.django()


@pytest.fixture(scope="module")
def django_dbs(
    tmp_path_factory: pytest.TempPathFactory, postgres: dict[str, Any] | None
) -> Iterator[dict[str, Any]]:
    """Django set up with the outbox app, migrated on every database; the relay joins
    flush runs only for this module's tests."""
    from django.core.management import call_command
    from django.db import connections

    from suprsend_celery.contrib.django.outbox import relay_before_flush
    from suprsend_celery.tasks.flush import before_run

    sqlite_path = str(tmp_path_factory.mktemp("outbox") / "db.sqlite3")
    aliases = configure(sqlite_path, postgres)
    for alias in aliases:
        call_command("migrate", database=alias, run_syncdb=True, verbosity=0)
    if relay_before_flush not in before_run:
        before_run.append(relay_before_flush)
    try:
        yield {"aliases": aliases, "env": environment(sqlite_path, postgres)}
    finally:
        before_run.remove(relay_before_flush)
        connections.close_all()


@pytest.fixture(params=["default", "pg"], ids=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, django_dbs: dict[str, Any]) -> str:
    """A database alias, its outbox and orders empty."""
    from outbox_shop.models import Order

    from suprsend_celery.contrib.django.models import OutboxEvent

    alias: str = request.param
    if alias not in django_dbs["aliases"]:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    OutboxEvent.objects.using(alias).all().delete()
    Order.objects.using(alias).all().delete()
    return alias


@pytest.fixture
def outbox_app(app_factory: Callable[..., Celery], db: str) -> Celery:
    return app_factory(suprsend_outbox_databases=[db])


@pytest.fixture
def sqlite_app(app_factory: Callable[..., Celery], django_dbs: dict[str, Any]) -> Celery:
    """An app relaying the SQLite outbox, emptied (tests that need only one database)."""
    from suprsend_celery.contrib.django.models import OutboxEvent

    OutboxEvent.objects.all().delete()
    return app_factory(suprsend_outbox_databases=["default"])


def outbox_rows(alias: str) -> int:
    from suprsend_celery.contrib.django.models import OutboxEvent

    count: int = OutboxEvent.objects.using(alias).count()
    return count


def place_orders(app: Celery, alias: str, count: int, rollback_every: int = 0) -> list[str]:
    """Orders, each with its event, in a transaction each; returns the committed keys."""
    from django.db import transaction
    from outbox_shop.models import Order

    from suprsend_celery.contrib.django import outbox_event

    class Rollback(Exception):
        pass

    committed = []
    for n in range(count):
        try:
            with transaction.atomic(using=alias):
                order = Order.objects.using(alias).create(customer=f"customer-{n % 37}")
                key = outbox_event(
                    order.customer,
                    "order_placed",
                    {"order": order.pk, "note": MARKER},
                    idempotency_key=f"order-{alias}-{order.pk}",
                    using=alias,
                    app=app,
                )
                if rollback_every and n % rollback_every == 0:
                    raise Rollback
        except Rollback:
            continue
        committed.append(key)
    return committed


def fill(app: Celery, alias: str, count: int) -> list[str]:
    """Outbox rows written directly (no move after commit), as outbox_events writes them."""
    from suprsend_celery.contrib.django.models import OutboxEvent

    records = [
        accept_call(app, (f"user-{n}", "order_placed", {"n": n, "note": MARKER}), {})
        for n in range(count)
    ]
    rows = [
        OutboxEvent(
            idempotency_key=r.idempotency_key,
            event_name=r.event_name,
            distinct_id=r.distinct_id,
            payload=r.payload,
        )
        for r in records
        if isinstance(r, AcceptedRecord)
    ]
    OutboxEvent.objects.using(alias).bulk_create(rows, batch_size=500)
    return [r.idempotency_key for r in records]


def flush_until(app: Celery, sandbox: Sandbox, processed: int, timeout: float = 60) -> None:
    """Run flush_buffer on the worker (relay first, then the buffer) until the sandbox
    has processed ``processed`` events."""

    def delivered() -> bool:
        app.tasks[FLUSH_TASK].delay().get(timeout=30)
        return int(sandbox.stats()["events_processed"]) >= processed

    wait_for(delivered, timeout=timeout, interval=0.05, message=f"{processed} events delivered")


def assert_delivered_once(sandbox: Sandbox, keys: list[str], duplicates: int = 0) -> None:
    got = [e["$idempotency_key"] for e in sandbox.events()]
    assert len(got) == len(set(got)), "an event was processed twice"
    assert sorted(got) == sorted(keys)
    stats = sandbox.stats()
    assert stats["events_processed"] == len(keys)
    assert stats["duplicates_skipped"] == duplicates
    assert stats["rejected"] == 0


def pending_keys(redis_url: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        items = client.lrange("{suprsend_celery}:pending", 0, -1)
    finally:
        client.close()
    return [json.loads(item.split(b"|", 1)[-1])["$idempotency_key"] for item in items]


class TestWrite:
    """outbox_event writes in the caller's transaction, and nothing else happens before commit."""

    def test_commits_and_rolls_back_with_the_transaction(
        self, outbox_app: Celery, db: str, redis_url: str
    ) -> None:
        """No Redis inside the transaction; moved right after commit; a rollback leaves nothing."""
        from django.db import transaction

        from suprsend_celery.contrib.django import outbox_event, outbox_events

        with transaction.atomic(using=db):
            key = outbox_event("alice", "order_placed", {"note": MARKER}, using=db)
            keys = outbox_events(
                [Event("bob", "order_placed"), Event("carol", "order_placed")], using=db
            )
            assert outbox_rows(db) == 3
            assert pending_keys(redis_url) == []
        assert pending_keys(redis_url) == [key, *keys], "moved in order right after commit"
        assert outbox_rows(db) == 0

        with pytest.raises(RuntimeError), transaction.atomic(using=db):
            outbox_event("dave", "order_placed", using=db)
            raise RuntimeError("rollback")
        assert outbox_rows(db) == 0
        assert pending_keys(redis_url) == [key, *keys]

    def test_bad_input_raises_in_the_view(self, outbox_app: Celery, db: str) -> None:
        from suprsend_celery.contrib.django import outbox_event

        with pytest.raises(InvalidEventError, match="event_name"):
            outbox_event("alice", "$reserved", using=db)
        with pytest.raises(InvalidEventError, match="event_name"):
            outbox_event("alice", using=db)
        assert outbox_rows(db) == 0

    def test_an_event_instance_keeps_its_fields(
        self, outbox_app: Celery, db: str, redis_url: str
    ) -> None:
        """``outbox_event(event)``, like ``buffer_event(event)``: key, tenant and brand kept."""
        from suprsend_celery.contrib.django import outbox_event

        event = Event("alice", "order_placed", {"n": 1}, idempotency_key="k-1", tenant_id="t")
        assert outbox_event(event, using=db) == "k-1"
        client = redis.Redis.from_url(redis_url)
        try:
            (item,) = client.lrange("{suprsend_celery}:pending", 0, -1)
        finally:
            client.close()
        record = json.loads(item)
        assert (record["distinct_id"], record["tenant_id"]) == ("alice", "t")
        assert record["properties"]["n"] == 1

    def test_a_full_outbox_refuses_with_a_clear_error(
        self, app_factory: Callable[..., Celery], db: str, redis_url: str
    ) -> None:
        """OutboxFullError (a BufferFullError) and nothing written; the rest still commits."""
        from django.db import transaction

        from suprsend_celery.contrib.django import OutboxFullError, outbox, outbox_event

        app = app_factory(suprsend_outbox_max_rows=5, suprsend_outbox_databases=[db])
        fill(app, db, 5)
        outbox._last_seen.clear()  # what earlier tests saw of this outbox, a second ago
        with transaction.atomic(using=db):
            with pytest.raises(OutboxFullError, match="suprsend_outbox_max_rows=5") as caught:
                outbox_event("alice", "order_placed", using=db, app=app)
            assert outbox_rows(db) == 5
        assert isinstance(caught.value, BufferFullError)
        assert isinstance(caught.value, SuprsendCeleryError)


@pytest.mark.slow
class TestDelivery:
    """Exactly the committed events reach SuprSend, each once, through every failure."""

    def test_thousand_orders_tenth_rolled_back(
        self, outbox_app: Celery, db: str, sandbox: Sandbox
    ) -> None:
        """1,000 orders, 10% rolled back: the 900 committed events, each delivered once."""
        committed = place_orders(outbox_app, db, 1000, rollback_every=10)
        assert len(committed) == 900
        with in_process_worker(outbox_app, concurrency=2):
            flush_until(outbox_app, sandbox, 900)
        assert_delivered_once(sandbox, committed)
        assert outbox_rows(db) == 0

    @REDIS_KILLED
    def test_redis_down_during_commits(
        self,
        app_factory: Callable[..., Celery],
        db: str,
        sandbox: Sandbox,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Redis stopped for 100 commits: all commit, fast; all delivered once it is back."""
        caplog.set_level(logging.DEBUG)
        caplog.set_level(logging.DEBUG, logger="suprsend_celery")  # the worker sets WARNING
        with RedisServer(appendonly=False) as buffer_redis:
            app = app_factory(suprsend_redis_url=buffer_redis.url, suprsend_outbox_databases=[db])
            buffer_redis.kill()
            started = time.monotonic()
            committed = place_orders(app, db, 100)
            elapsed = time.monotonic() - started
            assert len(committed) == 100
            assert outbox_rows(db) == 100, "every event waits in the outbox"
            assert elapsed < 10, f"100 commits took {elapsed:.1f}s with Redis down"
            assert "not moved to the buffer yet" in caplog.text
            # The eager move's backoff is the app's runtime's, not an attribute of its own.
            assert runtime_of(app).outbox_failed_at is not None
            assert [name for name in vars(app) if "suprsend" in name] == ["_suprsend_runtime"]
            buffer_redis.start()
            with in_process_worker(app, concurrency=2):
                flush_until(app, sandbox, 100)
        assert_delivered_once(sandbox, committed)
        assert outbox_rows(db) == 0
        assert MARKER not in caplog.text
        # The relay's lines carry fields a JSON log pipeline indexes, as delivery's do.
        relayed = [r for r in caplog.records if getattr(r, "outcome", None) == "relayed"]
        assert sum(r.records for r in relayed) == 100  # type: ignore[attr-defined]
        (waiting, *_) = [r for r in caplog.records if hasattr(r, "idempotency_keys")]
        assert set(waiting.idempotency_keys) <= set(committed)  # type: ignore[attr-defined]

    def test_relay_killed_mid_move(
        self,
        outbox_app: Celery,
        db: str,
        django_dbs: dict[str, Any],
        redis_url: str,
        sandbox: Sandbox,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """SIGKILL right after a push, before its rows are deleted: those are pushed again
        (SuprSend skips the copies), nothing is lost."""
        from suprsend_celery.contrib.django import relay_outbox

        caplog.set_level(logging.DEBUG)
        caplog.set_level(logging.DEBUG, logger="suprsend_celery")  # the worker sets WARNING
        keys = fill(outbox_app, db, 400)
        relay = start_relay(django_dbs, redis_url, db, "--batch", "50", "--lease", "1",
                            "--kill-after-pushes", "3")  # fmt: skip
        go(redis_url, 1)
        out, err = relay.communicate(timeout=60)
        assert relay.returncode == -signal.SIGKILL, err
        assert len(pending_keys(redis_url)) == 150, "three batches pushed"
        assert outbox_rows(db) == 300, "the third batch was pushed but not deleted"

        def relayed() -> bool:  # PostgreSQL frees the dead relay's locks, SQLite's lease ends
            relay_outbox(outbox_app, databases=[db], batch_size=50)
            return outbox_rows(db) == 0

        wait_for(relayed, timeout=30, interval=0.1, message="the outbox relayed")
        with in_process_worker(outbox_app, concurrency=2):
            flush_until(outbox_app, sandbox, 400)
        assert_delivered_once(sandbox, keys, duplicates=50)
        assert MARKER not in caplog.text + out + err

    def test_two_relays_at_once(
        self, outbox_app: Celery, db: str, django_dbs: dict[str, Any], redis_url: str
    ) -> None:
        """Two relay processes on one outbox: every row pushed exactly once, both working."""
        keys = fill(outbox_app, db, 4000)
        relays = [
            start_relay(django_dbs, redis_url, db, "--batch", "25", "--lease", "30")
            for _ in range(2)
        ]
        go(redis_url, 2)
        moved = []
        for relay in relays:
            out, err = relay.communicate(timeout=90)
            assert relay.returncode == 0, err
            assert MARKER not in out + err
            moved.append(int(out.split()[-1]))
        assert sum(moved) == 4000
        assert all(m > 0 for m in moved), f"the relays did not overlap: {moved}"
        pushed = pending_keys(redis_url)
        assert len(pushed) == 4000, "no row pushed twice"
        assert sorted(pushed) == sorted(keys)
        assert outbox_rows(db) == 0


class TestTraceContext:
    """Like ``buffer_event``, the outbox and the on-commit helper keep the view's trace
    context beside the record (the flush span links to it), never in what is sent."""

    def test_the_views_traceparent_rides_with_the_record(
        self, outbox_app: Celery, db: str, redis_url: str
    ) -> None:
        pytest.importorskip("opentelemetry.sdk.trace")
        from django.db import transaction
        from opentelemetry.sdk.trace import TracerProvider

        from suprsend_celery.contrib.django import buffer_event_on_commit, outbox_event
        from suprsend_celery.events.records import parse_item

        tracer = TracerProvider().get_tracer("tests.view")  # no global provider needed
        with tracer.start_as_current_span("POST /orders") as view:
            with transaction.atomic(using=db):
                outboxed = outbox_event("alice", "order_placed", {"note": MARKER}, using=db)
                on_commit = buffer_event_on_commit("bob", "order_placed", using=db)
        context = view.get_span_context()
        traceparent = b"00-%032x-%016x-%02x" % (
            context.trace_id,
            context.span_id,
            context.trace_flags,
        )
        client = redis.Redis.from_url(redis_url)
        try:
            items = client.lrange("{suprsend_celery}:pending", 0, -1)
        finally:
            client.close()
        stored = [parse_item(item) for item in items]
        assert [
            (json.loads(s.record)["$idempotency_key"], s.traceparent) if s else None for s in stored
        ] == [(outboxed, traceparent), (on_commit, traceparent)]


def start_relay(
    django_dbs: dict[str, Any], redis_url: str, alias: str, *args: str
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPRSEND_", "CELERY_"))}
    env.update(django_dbs["env"])
    env.update(
        SUPRSEND_WORKSPACE_KEY=WORKSPACE_KEY,
        SUPRSEND_WORKSPACE_SECRET=WORKSPACE_SECRET,
        SUPRSEND_REDIS_URL=redis_url,
        PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]),
    )
    return subprocess.Popen(
        [sys.executable, str(TESTS / "_outbox_relay_proc.py"), alias, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def go(redis_url: str, relays: int) -> None:
    """Start the relays together, once each has announced itself."""
    client = redis.Redis.from_url(redis_url)
    try:
        wait_for(lambda: client.llen("outbox-test:ready") >= relays, timeout=30)
        client.set("outbox-test:go", 1)
    finally:
        client.close()


class TestOperations:
    """The admin page, and the outbox's figures where operators look."""

    def test_admin_page_renders_read_only(self, sqlite_app: Celery) -> None:
        """The list and a row render for staff, without properties; no add, edit or delete."""
        from django.contrib.auth.models import User
        from django.test import Client

        from suprsend_celery.contrib.django.models import OutboxEvent

        keys = fill(sqlite_app, "default", 3)
        User.objects.filter(username="admin").delete()
        user = User.objects.create_superuser("admin", "admin@example.com", "pw")
        client = Client()
        client.force_login(user)

        listing = client.get("/admin/suprsend_celery/outboxevent/")
        assert listing.status_code == 200
        page = listing.content.decode()
        assert all(key in page for key in keys)
        assert "order_placed" in page
        assert MARKER not in page

        row = OutboxEvent.objects.first()
        assert row is not None
        detail = client.get(f"/admin/suprsend_celery/outboxevent/{row.pk}/change/")
        assert detail.status_code == 200
        assert row.idempotency_key in detail.content.decode()
        assert MARKER not in detail.content.decode()
        assert 'name="_save"' not in detail.content.decode()
        assert client.get("/admin/suprsend_celery/outboxevent/add/").status_code == 403
        deleting = client.post(f"/admin/suprsend_celery/outboxevent/{row.pk}/delete/")
        assert deleting.status_code == 403
        assert OutboxEvent.objects.count() == 3
        OutboxEvent.objects.all().delete()

    def test_depth_and_age_in_stats_status_exporter_and_check(self, sqlite_app: Celery) -> None:
        """A relay pass that could not move rows reports them; every verb shows them."""
        from datetime import timedelta

        from django.utils import timezone

        from suprsend_celery import buffer_stats
        from suprsend_celery.contrib.django import relay_outbox
        from suprsend_celery.contrib.django.models import OutboxEvent
        from suprsend_celery.ops.cli import cli
        from suprsend_celery.ops.exporter import BufferCollector
        from suprsend_celery.ops.health import Thresholds, check
        from suprsend_celery.pipeline.runtime import get_buffer

        fill(sqlite_app, "default", 7)
        OutboxEvent.objects.update(created_at=timezone.now() - timedelta(seconds=600))
        report = relay_outbox(sqlite_app, databases=["default"], time_budget=0)
        assert (report.moved, report.remaining) == (0, 7)

        stats = buffer_stats(app=sqlite_app)
        assert stats["outbox_pending"] == 7
        assert 590 < stats["outbox_oldest_age_seconds"] < 700
        status = CliRunner().invoke(cli, ["status", "--json"], obj=sqlite_app)
        assert json.loads(status.output[status.output.index("{") :])["outbox_pending"] == 7
        gauges = {m.name: m for m in BufferCollector(get_buffer(sqlite_app)).collect()}
        assert gauges["suprsend_celery_outbox_rows"].samples[0].value == 7
        problems = check(get_buffer(sqlite_app), Thresholds(flush_interval=5, max_age=300))
        assert any("Django outbox row waited" in p for p in problems), problems

        relay_outbox(sqlite_app, databases=["default"])
        assert buffer_stats(app=sqlite_app)["outbox_pending"] == 0
        assert buffer_stats(app=sqlite_app)["outbox_oldest_age_seconds"] == 0

    def test_django_only_modules_export_what_they_name(self, django_dbs: dict[str, Any]) -> None:
        """The architecture test skips these (they need Django set up): checked here."""
        import importlib

        for name in ("models", "admin", "apps", "tasks", "outbox"):
            module = importlib.import_module(f"suprsend_celery.contrib.django.{name}")
            for exported in module.__all__:
                assert hasattr(module, exported), f"{name}.{exported}"
