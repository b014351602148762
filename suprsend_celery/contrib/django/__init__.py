"""Django: events that commit with the business rows they belong to.

Two ways, both validating at once (bad input raises in the view):

- the transactional outbox (add ``"suprsend_celery.contrib.django"`` to
  ``INSTALLED_APPS`` and migrate): ``outbox_event``/``outbox_events`` write the accepted
  record in the caller's transaction; flush runs relay committed rows to the buffer;
- after commit: ``track_event_on_commit``/``buffer_event_on_commit`` publish or buffer
  in ``transaction.on_commit`` (nothing if the transaction rolls back), for when a
  Redis outage at that moment may cost the event.

    from suprsend_celery.contrib.django import buffer_event_on_commit, track_event_on_commit

    with transaction.atomic():
        order = Order.objects.create(...)
        track_event_on_commit(user.pk, "order_placed", {"order_id": order.pk})

Input is validated immediately, so a bad event still raises inside the view; the
publish (or the Redis append) waits for ``transaction.on_commit`` and never happens
if the transaction rolls back. Django is imported lazily: this module is safe to
import where Django is not configured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, overload

from ...delivery.tracing import with_trace_context
from ...events.model import Event
from ...exceptions import ConfigurationError
from ...pipeline.producers import DistinctId, accept_one, event_call, event_of, naming_keys
from ...pipeline.runtime import runtime_of
from ...tasks.direct import track_event
from .outbox import OutboxFullError, outbox_event, outbox_events, relay_outbox

__all__ = [
    "OutboxFullError",
    "buffer_event_on_commit",
    "outbox_event",
    "outbox_events",
    "relay_outbox",
    "track_event_on_commit",
]


def _on_commit(callback: Callable[[], object], using: str | None = None) -> None:
    try:
        from django.db import transaction  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigurationError("suprsend_celery.contrib.django needs Django installed") from None
    transaction.on_commit(callback, using=using)


@overload
def track_event_on_commit(
    distinct_id: DistinctId,
    event_name: str,
    properties: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    tenant_id: str | None = None,
    brand_id: str | None = None,
) -> str: ...
@overload
def track_event_on_commit(event: Event, /) -> str: ...
@event_call
def track_event_on_commit(
    distinct_id: DistinctId | Event,
    event_name: str | None = None,
    properties: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    tenant_id: str | None = None,
    brand_id: str | None = None,
) -> str:
    """``track_event.delay`` after commit; validates now and returns the idempotency key."""
    event = event_of(distinct_id, event_name, properties, idempotency_key, tenant_id, brand_id)
    key: str = track_event.delay_on_commit(event)
    return key


@overload
def buffer_event_on_commit(
    distinct_id: DistinctId,
    event_name: str,
    properties: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    tenant_id: str | None = None,
    brand_id: str | None = None,
    using: str | None = None,
) -> str: ...
@overload
def buffer_event_on_commit(event: Event, /, *, using: str | None = None) -> str: ...
@event_call
def buffer_event_on_commit(
    distinct_id: DistinctId | Event,
    event_name: str | None = None,
    properties: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    tenant_id: str | None = None,
    brand_id: str | None = None,
    using: str | None = None,
) -> str:
    """``buffer_event`` after commit of the ``using`` database's transaction; validates
    now and returns the idempotency key."""
    runtime = runtime_of()
    settings = runtime.settings
    event = event_of(distinct_id, event_name, properties, idempotency_key, tenant_id, brand_id)
    accepted = accept_one(settings, event, built=event is not distinct_id)
    if accepted.records:
        buffer = runtime.buffer()
        # The caller's trace context, taken now (in the view's span), stored, never sent.
        payloads = with_trace_context(accepted.payloads)

        def push() -> None:
            with naming_keys(accepted.records):  # an accept error names the key
                buffer.push(payloads)

        _on_commit(push, using=using)
    return accepted.keys[0]
