"""Django helpers: send events only when the view's transaction commits.

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

from typing import Any

from ...events.model import AcceptedRecord
from ...exceptions import ConfigurationError
from ...pipeline.producers import accept_call
from ...pipeline.runtime import get_buffer
from ...pipeline.settings import resolve_app
from ...tasks.direct import track_event

__all__ = ["buffer_event_on_commit", "track_event_on_commit"]


def _on_commit(callback: Any, using: str | None = None) -> None:
    try:
        from django.db import transaction  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigurationError("suprsend_celery.contrib.django needs Django installed") from None
    transaction.on_commit(callback, using=using)


def track_event_on_commit(*args: Any, **kwargs: Any) -> str:
    """``track_event.delay`` after commit; returns the idempotency key now."""
    key: str = track_event.delay_on_commit(*args, **kwargs)
    return key


def buffer_event_on_commit(*args: Any, using: str | None = None, **kwargs: Any) -> str:
    """``buffer_event`` after commit; validates now and returns the idempotency key."""
    app = resolve_app()
    record = accept_call(app, args, kwargs)
    if isinstance(record, AcceptedRecord):
        buffer = get_buffer(app)
        payload = record.payload
        _on_commit(lambda: buffer.push([payload]), using=using)
    return record.idempotency_key


# The transactional outbox (a Django app: add this package to INSTALLED_APPS).
from .outbox import OutboxFullError, outbox_event, outbox_events, relay_outbox  # noqa: E402

__all__ += ["OutboxFullError", "outbox_event", "outbox_events", "relay_outbox"]
