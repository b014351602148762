"""``suprsend_before_send``: a user callable run once per event, when it is accepted.

The hook gets the ``Event`` and returns it (changed or not), or ``None`` to drop it.
It runs in the caller, before the record is built, so the record it leads to is fixed
once: every retry re-sends those bytes and the hook never runs again for that event.
A dropped event is neither buffered nor published; the producer calls still return
what they would have (the event's idempotency key, or for ``track_event.delay`` a
finished result whose value has ``"status": "dropped"``), so code around them and the
order of ``buffer_events``' keys do not change.
"""

from __future__ import annotations

import importlib
import logging
import uuid
from collections.abc import Callable
from typing import NamedTuple

from celery.result import EagerResult

from ..defaults import TRACK_TASK
from ..events.model import Event
from ..exceptions import ConfigurationError, SuprsendCeleryError

__all__ = ["BeforeSend", "Dropped", "dropped_result", "load_hook", "run_hook"]

logger = logging.getLogger(__name__)

BeforeSend = Callable[[Event], "Event | None"]

_KEY = "suprsend_before_send"


class Dropped(NamedTuple):
    """An event the hook dropped, with the key it would have carried."""

    idempotency_key: str


def dropped_result(dropped: Dropped) -> EagerResult:
    """What ``track_event.delay`` returns for a dropped event: a finished result (nothing
    was published) whose value has ``"status": "dropped"``, in the task result's shape."""
    value = {
        "status": "dropped",
        "status_code": None,
        "message_id": None,
        "idempotency_key": dropped.idempotency_key,
        "attempts": 0,
    }
    return EagerResult(str(uuid.uuid4()), value, "SUCCESS", name=TRACK_TASK)


def load_hook(key: str, value: object) -> BeforeSend:
    """The callable a setting names: ``"pkg.module.func"``, ``"pkg.module:func"`` or itself."""
    if callable(value):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{key} must be a dotted path to a callable; got {value!r}")
    path = value.strip()
    module_name, sep, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"{key} must look like 'package.module.function'; got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any failure to import is a configuration fault
        raise ConfigurationError(
            f"{key}: cannot import {module_name!r} ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        hook = getattr(module, attr)
    except AttributeError:
        raise ConfigurationError(f"{key}: {module_name!r} has no attribute {attr!r}") from None
    if not callable(hook):
        raise ConfigurationError(f"{key}: {path!r} is a {type(hook).__name__}, not a callable")
    return hook  # type: ignore[no-any-return]


def run_hook(hook: BeforeSend, event: Event) -> Event | Dropped:
    """Run the hook on one event; its result, re-checked, or ``Dropped``."""
    try:
        result = hook(event)
    except SuprsendCeleryError:
        raise  # e.g. InvalidEventError from setting a bad value on the event
    except Exception as exc:
        raise SuprsendCeleryError(
            f"{_KEY} raised {type(exc).__name__} for event {event.event_name!r}; nothing was "
            "accepted"
        ) from exc
    if result is None:
        key = event.idempotency_key or str(uuid.uuid4())
        logger.debug(
            "event %s (%s) dropped by %s",
            key,
            event.event_name,
            _KEY,
            extra={"idempotency_key": key, "outcome": "dropped"},
        )
        return Dropped(key)
    if not isinstance(result, Event):
        raise ConfigurationError(
            f"{_KEY} must return an Event or None; it returned a {type(result).__name__}"
        )
    return _rechecked(result)


def _rechecked(event: Event) -> Event:
    """The hook may have set any attribute: run the constructor's checks again."""
    fresh = Event(
        event.distinct_id,
        event.event_name,
        event.properties,
        event.idempotency_key,
        event.tenant_id,
        event.brand_id,
    )
    fresh.attachments = list(event.attachments)
    return fresh
