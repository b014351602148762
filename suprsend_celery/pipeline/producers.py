"""``buffer_event``/``buffer_events``/``buffer_stats``: the buffered path's producer side.

Validation and serialisation happen here, in the caller's process, so bad input fails
at the call site and the buffer only ever holds records ready to send.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from ..delivery.client import USER_AGENT
from ..delivery.tracing import with_trace_context
from ..events.model import AcceptedRecord, Event, accept, event_from_call
from ..exceptions import BufferUnavailableError, InvalidEventError, ReplicationError
from .hooks import Dropped, run_hook
from .runtime import get_buffer
from .settings import get_settings, resolve_app

__all__ = [
    "accept_call",
    "accept_events",
    "buffer_event",
    "buffer_events",
    "buffer_stats",
    "naming_keys",
]

logger = logging.getLogger(__name__)


def accept_call(
    app: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> AcceptedRecord | Dropped:
    """Validate call arguments, run ``suprsend_before_send`` once, and fix the event's
    identifiers for this app's workspace (``Dropped`` if the hook dropped it)."""
    settings = get_settings(app)
    event = event_from_call(args, kwargs)
    if settings.before_send is not None:
        hooked = run_hook(settings.before_send, event)
        if isinstance(hooked, Dropped):
            return hooked
        event = hooked
    return accept(
        event,
        sdk_version=USER_AGENT,
        max_event_bytes=settings.max_event_bytes,
        env_size=settings.env_size,
    )


@contextlib.contextmanager
def naming_keys(records: list[AcceptedRecord]) -> Iterator[None]:
    """An accept error raised inside (Redis unavailable, replicas not confirming) names
    the records' keys, so the caller can call again with the same ones."""
    try:
        yield
    except (BufferUnavailableError, ReplicationError) as exc:
        exc.idempotency_keys = tuple(r.idempotency_key for r in records)
        raise


def buffer_event(*args: Any, app: Any = None, **kwargs: Any) -> str:
    """Append one event to the Redis buffer in one round trip; return its idempotency key.

    ``buffer_event(distinct_id, event_name, properties=None, *, idempotency_key=None,
    tenant_id=None, brand_id=None)`` or ``buffer_event(event)``. Raises
    ``InvalidEventError`` for bad input, ``BufferFullError`` when the buffer is full and
    ``BufferUnavailableError`` when Redis fails or does not answer within
    ``suprsend_accept_timeout`` (see that error for a timeout's uncertain outcome).
    """
    app = resolve_app(app)
    record = accept_call(app, args, kwargs)
    if isinstance(record, AcceptedRecord):
        _push(app, [record])
    return record.idempotency_key


def accept_events(app: Any, events: Iterable[Event]) -> list[AcceptedRecord | Dropped]:
    """Accept every event of a batch, or raise for the first bad one (nothing accepted)."""
    records = []
    for index, event in enumerate(events):
        if not isinstance(event, Event):
            raise InvalidEventError(
                f"buffer_events takes Event instances; item {index} is a {type(event).__name__}"
            )
        records.append(accept_call(app, (event,), {}))
    return records


def buffer_events(events: Iterable[Event], *, app: Any = None) -> list[str]:
    """Append many events in one atomic round trip: all are buffered, or none."""
    app = resolve_app(app)
    records = accept_events(app, events)
    accepted = [r for r in records if isinstance(r, AcceptedRecord)]
    if accepted:
        _push(app, accepted)
    return [r.idempotency_key for r in records]


def _push(app: Any, records: list[AcceptedRecord]) -> None:
    with naming_keys(records):
        # The caller's trace context is stored beside each record, never sent.
        get_buffer(app).push(with_trace_context([r.payload for r in records]))


def buffer_stats(*, app: Any = None) -> dict[str, Any]:
    """``pending``, ``in_flight``, ``scheduled_retries``, ``dead``, ``oldest_age_seconds``,
    ``breaker`` ("closed" | "open" | "half_open")."""
    return get_buffer(app).stats()
