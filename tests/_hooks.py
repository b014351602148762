"""``suprsend_before_send`` hooks for the tests, importable by dotted path."""

from __future__ import annotations

from suprsend_celery import Event

#: Every event each hook saw, in order (tests clear it).
CALLS: list[str] = []

NOT_CALLABLE = 42


def scrub(event: Event) -> Event:
    """Drops the ``ssn`` property and tags the event."""
    CALLS.append(event.event_name)
    event.properties.pop("ssn", None)
    event.properties["scrubbed"] = True
    return event


def drop_internal(event: Event) -> Event | None:
    """Drops events whose name starts with ``internal_``."""
    CALLS.append(event.event_name)
    return None if event.event_name.startswith("internal_") else event


def replace(event: Event) -> Event:
    """Returns a new Event with another name."""
    return Event(event.distinct_id, "replaced_event", {"from": event.event_name})


def bad_identifier(event: Event) -> Event:
    """Sets an identifier the constructor would have refused."""
    event.distinct_id = "   "
    return event


def returns_a_dict(event: Event) -> object:
    return {"event": event.event_name}


def raises(event: Event) -> Event:
    raise RuntimeError("hook failed")
