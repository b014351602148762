"""The event model and its rules: ``Event``, the input checks, and a record's bytes.

The bottom layer: pure, no I/O, no Celery, no Redis. An event becomes a record once,
when it is accepted (``model.accept``); ``records`` reads and writes the few fields
that later layers touch without parsing JSON.
"""

from .model import AcceptedRecord, Event, accept, event_from_call
from .records import accepted_before, env_field, record_time, with_env
from .validation import BUILTIN_EVENT_NAMES

__all__ = [
    "BUILTIN_EVENT_NAMES",
    "AcceptedRecord",
    "Event",
    "accept",
    "accepted_before",
    "env_field",
    "event_from_call",
    "record_time",
    "with_env",
]
