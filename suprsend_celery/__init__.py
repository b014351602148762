"""suprsend-celery: deliver SuprSend events from Django and Celery, reliably and fast.

Two paths, one contract: every event is validated where it is created and gets a
stable idempotency key when it is accepted, so SuprSend processes it at most once.

- ``track_event.delay(...)``: one Celery task per event.
- ``buffer_event(...)``: one Redis round trip; ``flush_buffer`` sends in bulk.
- ``await abuffer_event(...)``, ``await atrack_event(...)``: the same from async code.
"""

from .__about__ import __version__
from .delivery.client import SuprsendClient
from .delivery.responses import BulkResult, RecordResult
from .events.model import Event
from .exceptions import (
    BufferFullError,
    BufferUnavailableError,
    ConfigurationError,
    DeliveryError,
    InvalidEventError,
    PermanentDeliveryError,
    PublishError,
    SuprsendCeleryError,
    TransientDeliveryError,
)
from .pipeline.async_producers import abuffer_event, abuffer_events, aclose
from .pipeline.producers import buffer_event, buffer_events, buffer_stats
from .tasks import atrack_event, flush_buffer, track_event

__all__ = [
    "BufferFullError",
    "BufferUnavailableError",
    "BulkResult",
    "ConfigurationError",
    "DeliveryError",
    "Event",
    "InvalidEventError",
    "PermanentDeliveryError",
    "PublishError",
    "RecordResult",
    "SuprsendCeleryError",
    "SuprsendClient",
    "TransientDeliveryError",
    "__version__",
    "abuffer_event",
    "abuffer_events",
    "aclose",
    "atrack_event",
    "buffer_event",
    "buffer_events",
    "buffer_stats",
    "flush_buffer",
    "track_event",
]
