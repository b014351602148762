"""``buffer_event``/``buffer_events``/``buffer_stats``: the buffered path's producer side.

Validation and serialisation happen here, in the caller's process, so bad input fails
at the call site and the buffer only ever holds records ready to send. The accept step
(``event_of``, ``accept_call``, ``accept_batch``: validation, the
``suprsend_before_send`` hook, the record's bytes, the keys an error names) is shared
with the async producers (``async_producers``) and the Django helpers; those differ
only in how the push's round trip is waited for.
"""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

from ..buffer.outbox_figures import outbox_figures
from ..delivery.client import USER_AGENT
from ..delivery.tracing import with_trace_context
from ..events.model import AcceptedRecord, Event, accept, event_from_call
from ..exceptions import BufferUnavailableError, InvalidEventError, ReplicationError
from .hooks import Dropped, run_hook
from .runtime import Runtime, runtime_of
from .settings import Settings

__all__ = [
    "Accepted",
    "DistinctId",
    "accept_batch",
    "accept_call",
    "accept_event",
    "accept_one",
    "async_event_call",
    "buffer_event",
    "buffer_events",
    "buffer_stats",
    "event_call",
    "event_of",
    "naming_keys",
]

logger = logging.getLogger(__name__)

DistinctId = str | int | uuid.UUID
"""What ``distinct_id`` may be (sent as a string)."""

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: The parameters of a producer that describe the event (``Event``'s, in its order).
_EVENT_FIELDS = (
    "distinct_id",
    "event_name",
    "properties",
    "idempotency_key",
    "tenant_id",
    "brand_id",
)


def event_call(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Make a producer refuse a call of the wrong shape (arity, an unknown or repeated
    keyword) with ``InvalidEventError`` naming the argument, as every producer does,
    rather than Python's ``TypeError``. Costs nothing on a good call."""
    own = _own_parameters(func)

    @functools.wraps(func)
    def checked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return func(*args, **kwargs)
        except TypeError as exc:
            _refuse_call_shape(exc, args, kwargs, own)
            raise

    return checked


def async_event_call(func: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
    """``event_call`` for a coroutine function (the refusal is raised when awaited)."""
    own = _own_parameters(func)

    @functools.wraps(func)
    async def checked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            awaitable = func(*args, **kwargs)
        except TypeError as exc:
            _refuse_call_shape(exc, args, kwargs, own)
            raise
        return await awaitable

    return checked


def _own_parameters(func: Callable[..., Any]) -> frozenset[str]:
    """A producer's parameters that are not the event's (``app``; Django's ``using``)."""
    return frozenset(inspect.signature(func).parameters) - set(_EVENT_FIELDS)


def _refuse_call_shape(
    exc: TypeError, args: tuple[Any, ...], kwargs: Mapping[str, Any], own: frozenset[str]
) -> None:
    """Raise ``event_from_call``'s ``InvalidEventError`` when ``exc`` is the call itself
    failing to bind (its traceback has no frame of the callee), else return."""
    if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
        event_from_call(args, {k: v for k, v in kwargs.items() if k not in own})


def event_of(
    distinct_id: DistinctId | Event,
    event_name: str | None,
    properties: Mapping[str, Any] | None,
    idempotency_key: str | None,
    tenant_id: str | None,
    brand_id: str | None,
) -> Event:
    """The event a producer call names: an ``Event`` passed alone, or one built (and
    validated) from the fields."""
    if event_name is None:
        fields = (properties, idempotency_key, tenant_id, brand_id)
        if isinstance(distinct_id, Event) and all(f is None for f in fields):
            return distinct_id
        raise InvalidEventError("event_name is required", field="event_name")
    return Event.checked(distinct_id, event_name, properties, idempotency_key, tenant_id, brand_id)


def accept_event(
    settings: Settings, event: Event, *, built: bool = False
) -> AcceptedRecord | Dropped:
    """Run ``suprsend_before_send`` once and fix the event's identifiers and bytes for this
    workspace (``Dropped`` if the hook dropped it). ``built``: the producer built the
    event from its arguments just now, so (unless a hook held it) its properties are as
    validated and are not checked a second time."""
    if settings.before_send is not None:
        hooked = run_hook(settings.before_send, event)
        if isinstance(hooked, Dropped):
            return hooked
        event, built = hooked, False
    return accept(
        event,
        sdk_version=USER_AGENT,
        max_event_bytes=settings.max_event_bytes,
        env_size=settings.env_size,
        checked=built,
    )


def accept_call(
    app: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> AcceptedRecord | Dropped:
    """``accept_event`` for ``track_event``-style call arguments."""
    event = event_from_call(args, kwargs)
    built = event is not (args[0] if args else None)  # not an Event the caller passed
    return accept_event(runtime_of(app).settings, event, built=built)


@dataclass(frozen=True, slots=True)
class Accepted:
    """Events accepted at the call site: the records to push (one the hook dropped has
    none) and every event's idempotency key, in call order."""

    records: list[AcceptedRecord]
    keys: list[str]

    @property
    def payloads(self) -> list[bytes]:
        return [r.payload for r in self.records]


def accept_batch(settings: Settings, events: Iterable[Event], *, built: bool = False) -> Accepted:
    """Accept every event, or raise for the first bad one (nothing accepted); ``built``:
    the producer built them from its arguments just now (see ``accept_event``)."""
    records: list[AcceptedRecord] = []
    keys: list[str] = []
    for index, event in enumerate(events):
        if not isinstance(event, Event):
            raise InvalidEventError(
                f"buffer_events takes Event instances; item {index} is a {type(event).__name__}"
            )
        result = accept_event(settings, event, built=built)
        if isinstance(result, AcceptedRecord):
            records.append(result)
        keys.append(result.idempotency_key)
    return Accepted(records, keys)


def accept_one(settings: Settings, event: Event, *, built: bool) -> Accepted:
    """``accept_batch`` of the one event a producer call names, without its loop."""
    result = accept_event(settings, event, built=built)
    records = [result] if isinstance(result, AcceptedRecord) else []
    return Accepted(records, [result.idempotency_key])


class naming_keys:
    """An accept error raised inside (Redis unavailable, replicas not confirming) names
    the records' keys, so the caller can call again with the same ones. A class, not a
    generator: entered once per accept, in the caller's request (a tenth of the cost)."""

    __slots__ = ("records",)

    def __init__(self, records: list[AcceptedRecord]) -> None:
        self.records = records

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if isinstance(exc, (BufferUnavailableError, ReplicationError)):
            exc.idempotency_keys = tuple(r.idempotency_key for r in self.records)


def _push(runtime: Runtime, accepted: Accepted) -> None:
    if accepted.records:
        with naming_keys(accepted.records):
            # The caller's trace context is stored beside each record, never sent.
            runtime.buffer().push(with_trace_context(accepted.payloads))


@overload
def buffer_event(
    distinct_id: DistinctId,
    event_name: str,
    properties: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    tenant_id: str | None = None,
    brand_id: str | None = None,
    app: Any = None,
) -> str: ...
@overload
def buffer_event(event: Event, /, *, app: Any = None) -> str: ...
@event_call
def buffer_event(
    distinct_id: DistinctId | Event,
    event_name: str | None = None,
    properties: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    tenant_id: str | None = None,
    brand_id: str | None = None,
    app: Any = None,
) -> str:
    """Append one event to the Redis buffer in one round trip; return its idempotency key.

    ``buffer_event(distinct_id, event_name, properties=None, *, idempotency_key=None,
    tenant_id=None, brand_id=None)`` or ``buffer_event(event)``; ``app`` defaults to
    Celery's current app. Raises ``InvalidEventError`` for bad input, ``BufferFullError``
    when the buffer is full and ``BufferUnavailableError`` when Redis fails or does not
    answer within ``suprsend_accept_timeout`` (see that error for a timeout's uncertain
    outcome).
    """
    runtime = runtime_of(app)
    settings = runtime.settings  # a configuration error first, as for any call
    event = event_of(distinct_id, event_name, properties, idempotency_key, tenant_id, brand_id)
    accepted = accept_one(settings, event, built=event is not distinct_id)
    _push(runtime, accepted)
    return accepted.keys[0]


def buffer_events(events: Iterable[Event], *, app: Any = None) -> list[str]:
    """Append many events in one atomic round trip: all are buffered, or none."""
    runtime = runtime_of(app)
    accepted = accept_batch(runtime.settings, events)
    _push(runtime, accepted)
    return accepted.keys


def buffer_stats(*, app: Any = None) -> dict[str, Any]:
    """``pending``, ``in_flight``, ``scheduled_retries``, ``dead``, ``oldest_age_seconds``,
    ``breaker`` ("closed" | "open" | "half_open"); and the Django outbox's
    ``outbox_pending`` and ``outbox_oldest_age_seconds`` (0 without one)."""
    buffer = runtime_of(app).buffer()
    return {**buffer.stats(), **outbox_figures(buffer)}
