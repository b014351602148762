"""``prepare_track_event``: a ``track_event`` call made ready to publish, in the caller.

Every way of publishing ``track_event`` (``delay``/``apply_async``,
``delay_on_commit``, ``atrack_event``, Django's ``track_event_on_commit``) prepares
the call here first: the input is validated (bad input raises ``InvalidEventError``
and nothing is published), ``suprsend_before_send`` runs once, and the record is
fixed for good, so the worker only sends bytes and every retry sends the same ones.
What Celery may show of the message (Flower, ``inspect``, result backends) is the
event name, distinct_id and idempotency key, never the properties.

No Celery here: publishing a ``PreparedEvent`` is ``TrackEventTask.publish_prepared``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..events.model import AcceptedRecord, Event
from ..pipeline.hooks import Dropped
from ..pipeline.producers import accept_call
from ..pipeline.settings import resolve_app
from .redaction import RECORD, meta_of, redacted

__all__ = ["PreparedEvent", "prepare_track_event"]


@dataclass(frozen=True, slots=True)
class PreparedEvent:
    """A validated ``track_event`` call: the finished record and what Celery may show."""

    #: The record as JSON text, exactly as it will be sent; it holds the properties.
    record: str = field(repr=False)
    #: ``event``, ``distinct_id``, ``idempotency_key``: all a message shows of itself.
    shown: dict[str, Any]

    @classmethod
    def of_record(cls, record: str) -> PreparedEvent:
        """A record prepared before (a retry, or a call published on commit)."""
        return cls(record, meta_of(record))

    @classmethod
    def of_accepted(cls, accepted: AcceptedRecord) -> PreparedEvent:
        return cls(accepted.payload.decode("utf-8"), redacted(accepted))

    @property
    def idempotency_key(self) -> str:
        return str(self.shown["idempotency_key"])

    @property
    def kwargs(self) -> dict[str, str]:
        """The task message's keyword arguments: the record and nothing else."""
        return {RECORD: self.record}

    @property
    def options(self) -> dict[str, str]:
        """Celery options that keep the record out of the message's shown arguments."""
        return {"argsrepr": "()", "kwargsrepr": repr(self.shown)}


def prepare_track_event(
    distinct_id: str | int | uuid.UUID | Event,
    event_name: str | None = None,
    properties: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    tenant_id: str | None = None,
    brand_id: str | None = None,
    app: Any = None,
) -> PreparedEvent | Dropped:
    """Validate a ``track_event`` call, run ``suprsend_before_send`` and fix its record.

    ``prepare_track_event(distinct_id, event_name, properties=None, *,
    idempotency_key=None, tenant_id=None, brand_id=None)`` or
    ``prepare_track_event(event)``, with ``app`` the Celery app whose settings apply
    (the current one by default). Returns the ``PreparedEvent`` to publish later with
    ``track_event.publish_prepared(prepared, **celery_options)``, or ``Dropped`` (with
    the key the event would have carried) when the hook dropped it. Raises
    ``InvalidEventError`` for bad input; nothing is published or stored here.
    """
    args: tuple[Any, ...] = (distinct_id,) if event_name is None else (distinct_id, event_name)
    named = {
        "properties": properties,
        "idempotency_key": idempotency_key,
        "tenant_id": tenant_id,
        "brand_id": brand_id,
    }
    given = {k: v for k, v in named.items() if v is not None}
    accepted = accept_call(resolve_app(app), args, given)
    if isinstance(accepted, Dropped):
        return accepted
    return PreparedEvent.of_accepted(accepted)
