"""Deprecated import path: the async producers are ``suprsend_celery.abuffer_event``,
``abuffer_events``, ``atrack_event`` and ``aclose``."""

import warnings

from .pipeline.async_producers import abuffer_event, abuffer_events, aclose
from .tasks.direct import atrack_event

__all__ = ["abuffer_event", "abuffer_events", "aclose", "atrack_event"]

warnings.warn(
    "suprsend_celery.aio is deprecated: import abuffer_event, abuffer_events, atrack_event "
    "and aclose from suprsend_celery",
    DeprecationWarning,
    stacklevel=2,
)
