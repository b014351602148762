"""suprsend-celery: deliver SuprSend events from Django and Celery, reliably and fast."""

from .__about__ import __version__
from .client import BulkResult, RecordResult, SuprsendClient
from .events import Event
from .exceptions import (
    BufferFullError,
    ConfigurationError,
    DeliveryError,
    InvalidEventError,
    PermanentDeliveryError,
    SuprsendCeleryError,
    TransientDeliveryError,
)

__all__ = [
    "BufferFullError",
    "BulkResult",
    "ConfigurationError",
    "DeliveryError",
    "Event",
    "InvalidEventError",
    "PermanentDeliveryError",
    "RecordResult",
    "SuprsendCeleryError",
    "SuprsendClient",
    "TransientDeliveryError",
    "__version__",
]
