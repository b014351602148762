"""The transactional outbox: an event commits, or rolls back, with the rows it is about.

    from suprsend_celery.contrib.django import outbox_event

    with transaction.atomic():
        order = Order.objects.create(...)
        outbox_event(user.pk, "order_placed", {"order_id": order.pk})

``outbox_event`` validates at once (bad input raises in the view) and INSERTs the
accepted record, with its ``$insert_id``, ``$time`` and ``$idempotency_key`` fixed now,
into the outbox table in the caller's transaction: no Redis, broker or network inside
it. The event is then exactly as durable as the order: a rollback removes both, a
commit keeps both, whatever Redis is doing.

Moving rows to the Redis buffer (``relay_outbox``), in id order, one batch at a time:
take a batch so that no other relay can (``SELECT ... FOR UPDATE SKIP LOCKED`` on
PostgreSQL and MySQL 8, where a second relay skips the rows the first holds; a lease
column on SQLite), push it to the buffer in one atomic step (the very bytes
``buffer_event`` would have pushed), and let the rows' deletion commit only once the
push succeeded (on PostgreSQL one ``DELETE ... RETURNING`` locks, deletes and reads a
batch; a failed push rolls it back).
A relay killed between push and delete leaves rows that are pushed again later: the
same records under the same keys, which SuprSend skips. Two paths move rows:

- right after the commit (``transaction.on_commit``), the rows that transaction wrote,
  best effort, bounded by ``suprsend_accept_timeout``: with everything up an outbox
  event reaches the buffer as soon as a ``buffer_event`` would. A failure is logged
  (keys only) and the rows wait; after one, this process skips the eager move for a
  few seconds, so views stay fast through a Redis outage;
- at the start of every ``flush_buffer`` run in a worker where Django is set up (the
  app's ``ready()`` adds the relay there): the safety net, for whatever the eager move
  could not do (Redis down, a process killed just after its commit).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

from ... import defaults
from ...buffer.outbox_figures import report_outbox
from ...delivery.tracing import with_trace_context
from ...events.model import AcceptedRecord, Event
from ...exceptions import BufferFullError
from ...pipeline.producers import DistinctId, accept_batch, accept_one, event_call, event_of
from ...pipeline.runtime import get_buffer, runtime_of
from ...pipeline.settings import get_settings, resolve_app

__all__ = [
    "EAGER_BACKOFF",
    "OutboxFullError",
    "RelayReport",
    "outbox_event",
    "outbox_events",
    "relay_before_flush",
    "relay_outbox",
]

logger = logging.getLogger(__name__)

EAGER_BACKOFF = 5.0
"""Seconds a process skips moving rows after commit once such a move failed: during a
Redis outage a view pays for one failed attempt, not one per request."""

ROOM_RECHECK = 1.0
"""Seconds an outbox seen less than half full is taken to have room without looking."""

RELAY_TIME_BUDGET = 10.0
"""Seconds one flush run spends relaying a backlog before it drains the buffer."""


class OutboxFullError(BufferFullError):
    """The outbox holds ``suprsend_outbox_max_rows`` rows; the event was not written.

    Raised inside the caller's transaction, before anything is written: rows pile up
    only when no relay can move them (Redis down, or no worker set up with Django).
    """


@overload
def outbox_event(
    distinct_id: DistinctId,
    event_name: str,
    properties: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    tenant_id: str | None = None,
    brand_id: str | None = None,
    using: str | None = None,
    app: Any = None,
) -> str: ...
@overload
def outbox_event(event: Event, /, *, using: str | None = None, app: Any = None) -> str: ...
@event_call
def outbox_event(
    distinct_id: DistinctId | Event,
    event_name: str | None = None,
    properties: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    tenant_id: str | None = None,
    brand_id: str | None = None,
    using: str | None = None,
    app: Any = None,
) -> str:
    """Write one event into the outbox, in the caller's transaction; return its key.

    ``outbox_event(distinct_id, event_name, properties=None, *, idempotency_key=None,
    tenant_id=None, brand_id=None, using=None)`` or ``outbox_event(event)``, as
    ``buffer_event``. ``using`` is the database alias (default: the router's choice for
    writing the outbox). Raises ``InvalidEventError`` for bad input and
    ``OutboxFullError`` when the outbox is full; never touches Redis before commit.
    """
    app = resolve_app(app)
    event = event_of(distinct_id, event_name, properties, idempotency_key, tenant_id, brand_id)
    accepted = accept_one(get_settings(app), event, built=event is not distinct_id)
    if accepted.records:
        _write(app, accepted.records, using)
    return accepted.keys[0]


def outbox_events(
    events: Iterable[Event], *, using: str | None = None, app: Any = None
) -> list[str]:
    """Write many events in one INSERT, in the caller's transaction: all or none."""
    app = resolve_app(app)
    accepted = accept_batch(get_settings(app), events)
    if accepted.records:
        _write(app, accepted.records, using)
    return accepted.keys


def _write(app: Any, records: Sequence[AcceptedRecord], using: str | None) -> None:
    from django.db import router, transaction  # type: ignore[import-untyped]

    from .models import OutboxEvent

    db = using or router.db_for_write(OutboxEvent)
    _check_room(OutboxEvent, db, len(records), get_settings(app).outbox_max_rows)
    # Stored as the buffer stores them: with the caller's trace context, never sent.
    payloads = with_trace_context([r.payload for r in records])
    rows = [
        OutboxEvent(
            idempotency_key=r.idempotency_key,
            event_name=r.event_name,
            distinct_id=r.distinct_id,
            payload=payload,
        )
        for r, payload in zip(records, payloads, strict=True)
    ]
    if len(rows) == 1:
        rows[0].save(using=db, force_insert=True)
    else:
        OutboxEvent.objects.using(db).bulk_create(rows)
    ids = [row.pk for row in rows if row.pk is not None]  # MySQL's bulk INSERT returns none
    if ids:
        keys = [r.idempotency_key for r in records]
        transaction.on_commit(functools.partial(_move_after_commit, app, db, ids, keys), using=db)


#: Database alias -> (when its outbox was last looked at, the rows it held at most).
_last_seen: dict[str, tuple[float, int]] = {}


def _check_room(model: Any, db: str, adding: int, max_rows: int) -> None:
    """``OutboxFullError`` unless ``adding`` more rows keep the outbox within bounds.

    An outbox seen less than half full within the last ``ROOM_RECHECK`` seconds is not
    looked at again (no process fills half of it that fast); otherwise the span of ids
    (two index lookups) bounds the row count from above, and only when it exceeds the
    limit (a backlog, or gaps left by rollbacks) are the rows counted, no further than
    the limit.
    """
    from django.db.models import Max, Min  # type: ignore[import-untyped]

    seen = _last_seen.get(db)
    now = time.monotonic()
    if seen is not None and now - seen[0] < ROOM_RECHECK and seen[1] + adding <= max_rows // 2:
        return
    span = model.objects.using(db).aggregate(low=Min("id"), high=Max("id"))
    held = 0 if span["low"] is None else span["high"] - span["low"] + 1
    if held + adding > max_rows:
        held = model.objects.using(db).order_by()[:max_rows].count()
    _last_seen[db] = (now, held)
    if held + adding > max_rows:
        raise OutboxFullError(
            f"the outbox holds {held} row(s), suprsend_outbox_max_rows={max_rows}; "
            f"{adding} event(s) were not written (is Redis up, and does a worker set up "
            "with Django run flush_buffer? see suprsend-celery status)"
        )


# -- moving rows to the buffer -------------------------------------------------------


def _move_after_commit(app: Any, db: str, ids: list[int], keys: list[str]) -> None:
    """The eager move of one transaction's rows; any failure leaves them to the relay."""
    runtime = runtime_of(app)
    failed_at = runtime.outbox_failed_at
    if failed_at is not None and time.monotonic() - failed_at < EAGER_BACKOFF:
        return
    try:
        _Mover(app, db).step(len(ids), ids)
    except Exception as exc:  # noqa: BLE001 - the rows are committed: nothing is lost
        runtime.outbox_failed_at = time.monotonic()
        logger.warning(
            "outbox: %d committed event(s) not moved to the buffer yet (%s); they wait "
            "in the outbox for the next flush_buffer run",
            len(ids),
            type(exc).__name__,
            extra={"idempotency_keys": keys[:20], "database": db},
        )
    else:
        runtime.outbox_failed_at = None


@dataclass(slots=True)
class RelayReport:
    """What one relay pass did, and what it left (over every database it covered)."""

    moved: int = 0
    remaining: int = 0
    #: Epoch seconds of the oldest remaining row's accept (None: none remain).
    oldest: float | None = None
    seconds: float = 0.0


class _Mover:
    """Moves one database's outbox rows to one app's buffer, a batch per ``step``."""

    def __init__(self, app: Any, db: str, lease: float = defaults.OUTBOX_LEASE) -> None:
        from django.db import connections

        from .models import OutboxEvent

        self.model = OutboxEvent
        self.db = db
        self.lease = lease
        self.buffer = get_buffer(app)
        self.skip_locked = connections[db].features.has_select_for_update_skip_locked

    def step(self, count: int, ids: Sequence[int] | None = None) -> int:
        """Move up to ``count`` rows (only these ``ids`` if given); how many were moved."""
        if self.skip_locked:
            return self._step_locked(count, ids)
        return self._step_leased(count, ids)

    def _rows(self) -> Any:
        return self.model.objects.using(self.db)

    def _step_locked(self, count: int, ids: Sequence[int] | None) -> int:
        """Rows locked in a transaction while pushed: a second relay skips them, and a
        relay that dies (or a push that fails) rolls the transaction back, rows intact."""
        from django.db import connections, transaction

        with transaction.atomic(using=self.db):
            if connections[self.db].vendor == "postgresql":
                rows = self._take_postgresql(count, ids)
            else:
                taken = self._rows().select_for_update(skip_locked=True).order_by("id")
                if ids is not None:
                    taken = taken.filter(id__in=ids)
                rows = list(taken.values_list("id", "payload")[:count])
                if rows:
                    self._rows().filter(id__in=[pk for pk, _ in rows]).delete()
            if rows:
                self.buffer.push([bytes(payload) for _, payload in rows])
        return len(rows)

    def _take_postgresql(self, count: int, ids: Sequence[int] | None) -> list[Any]:
        """Lock and delete a batch in one statement (one round trip instead of three);
        the transaction's rollback restores it if the push then fails."""
        from django.db import connections

        connection = connections[self.db]
        table = connection.ops.quote_name(self.model._meta.db_table)
        where = "WHERE id = ANY(%s) " if ids is not None else ""
        params: list[Any] = [list(ids)] if ids is not None else []
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} {where}"  # noqa: S608 - our table's name
                "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id, payload",
                [*params, count],
            )
            rows: list[Any] = cursor.fetchall()
        rows.sort(key=lambda row: row[0])  # RETURNING follows no order
        return rows

    def _step_leased(self, count: int, ids: Sequence[int] | None) -> int:
        """Rows taken by one UPDATE (a token and a deadline), pushed, then deleted; on a
        failure they are handed back at once, and a killed relay's lease runs out."""
        from django.db.models import Q

        now = time.time()
        token = uuid.uuid4().hex
        free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
        candidates = self._rows().filter(free)
        if ids is not None:
            candidates = candidates.filter(id__in=ids)
        picked = candidates.order_by("id").values("id")[:count]
        taken = self._rows().filter(free, id__in=picked)
        if not taken.update(lease_token=token, lease_until=now + self.lease):
            return 0
        rows = list(
            self._rows().filter(lease_token=token).order_by("id").values_list("id", "payload")
        )
        try:
            self.buffer.push([bytes(payload) for _, payload in rows])
        except BaseException:
            self._hand_back(token)
            raise
        self._rows().filter(id__in=[pk for pk, _ in rows]).delete()
        return len(rows)

    def _hand_back(self, token: str) -> None:
        """Free rows this relay took but could not push (else they wait out the lease)."""
        try:
            self._rows().filter(lease_token=token).update(lease_token=None, lease_until=None)
        except Exception:
            logger.debug("outbox: could not hand rows back early", exc_info=True)

    def depth(self) -> tuple[int, float | None]:
        """Rows left, and the oldest one's accept time (epoch seconds)."""
        from django.utils import timezone  # type: ignore[import-untyped]

        rows = self._rows().order_by()
        first = rows.order_by("id").values_list("created_at", flat=True).first()
        if first is None:
            return 0, None
        if timezone.is_naive(first):  # USE_TZ = False: the database holds local times
            first = timezone.make_aware(first)
        return rows.count(), first.timestamp()


def relay_outbox(
    app: Any = None,
    *,
    databases: Sequence[str] | None = None,
    batch_size: int = defaults.OUTBOX_RELAY_BATCH,
    time_budget: float = RELAY_TIME_BUDGET,
    lease: float = defaults.OUTBOX_LEASE,
) -> RelayReport:
    """Move committed outbox rows to the buffer, oldest first, until none are left or
    ``time_budget`` runs out; then record the outbox's depth for ``status``.

    ``databases`` defaults to ``suprsend_outbox_databases``. Raises what the database
    or Redis raised (rows not moved stay in the outbox); safe to run in many processes
    at once.
    """
    app = resolve_app(app)
    started = time.monotonic()
    deadline = started + time_budget
    report = RelayReport()
    movers = [_Mover(app, db, lease) for db in databases or get_settings(app).outbox_databases]
    for mover in movers:
        while time.monotonic() < deadline:
            moved = mover.step(batch_size)
            report.moved += moved
            if moved < batch_size:
                break
    for mover in movers:
        rows, oldest = mover.depth()
        report.remaining += rows
        if oldest is not None and (report.oldest is None or oldest < report.oldest):
            report.oldest = oldest
    report_outbox(movers[0].buffer, report.remaining, report.oldest)
    report.seconds = time.monotonic() - started
    return report


def relay_before_flush(app: Any) -> None:
    """The relay as ``flush_buffer`` runs it: failures are logged, never raised, and
    this thread's database connections are closed afterwards if obsolete, as Django
    does after a request (a worker without Celery's Django fix-up keeps none open
    between runs); never one inside a transaction (a run called eagerly in a view)."""
    from django.db import connections

    try:
        report = relay_outbox(app)
    except Exception as exc:  # noqa: BLE001 - the rows wait for the next run
        logger.warning(
            "outbox: relay stopped (%s: %s); the rows wait for the next flush_buffer run",
            type(exc).__name__,
            _short(exc),
            extra={"outcome": "relay_failed"},
        )
    else:
        if report.moved or report.remaining:
            logger.info(
                "outbox: moved %d event(s) to the buffer in %.2fs, %d left",
                report.moved,
                report.seconds,
                report.remaining,
                extra={
                    "outcome": "relayed",
                    "records": report.moved,
                    "remaining": report.remaining,
                    "seconds": round(report.seconds, 3),
                },
            )
    finally:
        for connection in connections.all(initialized_only=True):
            if not connection.in_atomic_block:
                connection.close_if_unusable_or_obsolete()


def _short(exc: BaseException) -> str:
    """An error's first line: a database error's detail lines may quote row values."""
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
