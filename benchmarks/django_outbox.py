"""The Django outbox: what an event costs inside a view's transaction, and relay speed.

    python -m benchmarks.django_outbox                 # SQLite, and PostgreSQL if installed
    python -m benchmarks.django_outbox --orders 500 --rows 5000

Per database (a SQLite file; a private PostgreSQL server, ``PostgresServer``, durability
off as in the tests) and a private Redis (broker and buffer, no persistence), each
"order" is one transaction: an ``INSERT`` into an orders table, plus one event by

- nothing (the baseline),
- ``outbox_event`` (an ``INSERT`` into the outbox inside, the move to Redis after),
- ``buffer_event_on_commit`` (a Redis push after commit),
- ``track_event.delay_on_commit`` (a broker publish after commit).

Timed with ``perf_counter``: the event call alone (inside the transaction, where locks
are held), and the whole order (transaction, commit, on-commit work), whose excess
over the baseline is the event's full cost to the view. The modes are interleaved in
rounds after a warm-up. Then the relay: rows written straight into the outbox (no move
after commit), moved to Redis by ``relay_outbox`` at several batch sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import WORKSPACE_KEY, WORKSPACE_SECRET, properties
from suprsend_celery.dev.postgres_server import PostgresServer, find_postgres_bin
from suprsend_celery.dev.redis_server import RedisServer

MODES = ("baseline", "outbox_event", "buffer_event_on_commit", "track_event.delay_on_commit")


def configure(sqlite_path: str, postgres: dict[str, Any] | None) -> list[str]:
    import django
    from django.conf import settings

    databases: dict[str, Any] = {
        "sqlite": {"ENGINE": "django.db.backends.sqlite3", "NAME": sqlite_path},
    }
    if postgres:
        databases["postgresql"] = {"ENGINE": "django.db.backends.postgresql", **postgres}
    settings.configure(
        DATABASES={"default": databases["sqlite"], **databases},
        INSTALLED_APPS=["suprsend_celery.contrib.django"],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()
    return [alias for alias in databases]


def make_app(redis_url: str) -> Any:
    from celery import Celery

    app = Celery("bench-outbox", set_as_current=True)
    app.conf.update(
        broker_url=redis_url,
        suprsend_workspace_key=WORKSPACE_KEY,
        suprsend_workspace_secret=WORKSPACE_SECRET,
        suprsend_redis_url=redis_url,
        suprsend_flush_interval=0,
        suprsend_outbox_max_rows=10_000_000,
    )
    app.set_default()
    return app


def prepare(alias: str) -> None:
    from django.core.management import call_command
    from django.db import connections

    call_command("migrate", database=alias, verbosity=0)
    with connections[alias].cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_order")
        key = "SERIAL" if connections[alias].vendor == "postgresql" else "INTEGER"
        cursor.execute(f"CREATE TABLE bench_order (id {key} PRIMARY KEY, customer TEXT)")


def order(alias: str, mode: str, n: int) -> float:
    """One order with its event; returns the seconds the event call itself took."""
    from django.db import connections, transaction

    from suprsend_celery import Event, track_event
    from suprsend_celery.contrib.django import buffer_event_on_commit, outbox_event

    args = (f"user-{n}", "order_placed", properties(n))
    with transaction.atomic(using=alias):
        with connections[alias].cursor() as cursor:
            cursor.execute("INSERT INTO bench_order (customer) VALUES (%s)", [f"user-{n}"])
        started = time.perf_counter()
        if mode == "outbox_event":
            outbox_event(*args, using=alias)
        elif mode == "buffer_event_on_commit":
            buffer_event_on_commit(*args, using=alias)
        elif mode == "track_event.delay_on_commit":  # on this alias's commit
            event = Event(*args)
            transaction.on_commit(functools.partial(track_event.delay, event), using=alias)
        return time.perf_counter() - started


def per_event(alias: str, orders: int, rounds: int = 5) -> dict[str, dict[str, float]]:
    """Median µs per event call and per whole order, for each mode (interleaved rounds)."""
    calls: dict[str, list[float]] = {m: [] for m in MODES}
    totals: dict[str, list[float]] = {m: [] for m in MODES}
    n = 0
    for mode in MODES:  # warm-up: connections, scripts, imports
        for _ in range(50):
            order(alias, mode, n)
            n += 1
    for _ in range(rounds):
        for mode in MODES:
            for _ in range(orders // rounds):
                started = time.perf_counter()
                calls[mode].append(order(alias, mode, n))
                totals[mode].append(time.perf_counter() - started)
                n += 1
    return {
        mode: {
            "call_us": statistics.median(calls[mode]) * 1e6,
            "order_us": statistics.median(totals[mode]) * 1e6,
            "order_mean_us": statistics.fmean(totals[mode]) * 1e6,
        }
        for mode in MODES
    }


def fill(app: Any, alias: str, rows: int) -> None:
    from suprsend_celery.contrib.django.models import OutboxEvent
    from suprsend_celery.events.model import AcceptedRecord
    from suprsend_celery.pipeline.producers import accept_call

    objects = []
    for n in range(rows):
        record = accept_call(app, (f"user-{n}", "order_placed", properties(n)), {})
        assert isinstance(record, AcceptedRecord)
        objects.append(
            OutboxEvent(
                idempotency_key=record.idempotency_key,
                event_name=record.event_name,
                distinct_id=record.distinct_id,
                payload=record.payload,
            )
        )
    OutboxEvent.objects.using(alias).bulk_create(objects, batch_size=500)


def relay_rate(app: Any, alias: str, rows: int, batch: int) -> float:
    """Rows per second ``relay_outbox`` moves from a full outbox into Redis."""
    from suprsend_celery.contrib.django import relay_outbox

    fill(app, alias, rows)
    started = time.perf_counter()
    report = relay_outbox(app, databases=[alias], batch_size=batch, time_budget=600)
    seconds = time.perf_counter() - started
    assert report.moved == rows and report.remaining == 0, report
    return rows / seconds


@contextlib.contextmanager
def maybe_postgres() -> Iterator[dict[str, Any] | None]:
    if find_postgres_bin() is None:
        print("PostgreSQL not installed: SQLite only", file=sys.stderr)
        yield None
        return
    with PostgresServer() as server:
        yield server.django()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.django_outbox")
    parser.add_argument("--orders", type=int, default=2000, help="timed orders per mode")
    parser.add_argument("--rows", type=int, default=20_000, help="outbox rows per relay run")
    parser.add_argument("--batches", default="100,500,1000", help="relay batch sizes")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="suprsend-bench-outbox-"))
    with RedisServer(appendonly=False) as redis_server, maybe_postgres() as postgres:
        aliases = configure(str(workdir / "db.sqlite3"), postgres)
        app = make_app(redis_server.url)
        client = redis_server.client()
        ping = []
        for _ in range(200):
            started = time.perf_counter()
            client.ping()
            ping.append(time.perf_counter() - started)
        print(f"redis PING median {statistics.median(ping) * 1e6:.0f} µs")
        lines = ["| database | per event | call in the transaction | whole order | over baseline |"]
        lines.append("| --- | --- | ---: | ---: | ---: |")
        relay_lines = ["| database | batch | rows/s |", "| --- | ---: | ---: |"]
        for alias in (a for a in aliases if a != "default"):
            prepare(alias)
            figures = per_event(alias, args.orders)
            client.flushdb()
            base = figures["baseline"]["order_us"]
            for mode in MODES:
                f = figures[mode]
                over = "" if mode == "baseline" else f"+{f['order_us'] - base:.0f} µs"
                call = "" if mode == "baseline" else f"{f['call_us']:.0f} µs"
                lines.append(f"| {alias} | `{mode}` | {call} | {f['order_us']:.0f} µs | {over} |")
            for batch in batches:
                rate = relay_rate(app, alias, args.rows, batch)
                client.flushdb()
                relay_lines.append(f"| {alias} | {batch} | {rate:,.0f} |")
        client.close()
    shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(lines))
    print()
    print("\n".join(relay_lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
