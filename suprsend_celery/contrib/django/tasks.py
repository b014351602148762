"""Found by Celery's ``app.autodiscover_tasks()`` in a Django project: registers
``track_event`` and ``flush_buffer`` there, so ``CELERY_IMPORTS`` is not needed."""

from __future__ import annotations

from ...tasks.direct import track_event
from ...tasks.flush import flush_buffer

__all__ = ["flush_buffer", "track_event"]
