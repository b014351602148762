"""Celery glue: the ``track_event`` and ``flush_buffer`` tasks and what they need.

``direct`` is the direct path's task, ``flush`` runs the flusher, ``beat`` puts it
on the beat schedule, ``redaction`` keeps records out of Flower and results. Every
use of Celery's Task API is in the two Task classes. ``app.conf.imports =
("suprsend_celery.tasks",)`` registers both tasks with a worker.
"""

from ..defaults import FLUSH_TASK, TRACK_TASK
from .direct import TrackEventTask, atrack_event, track_event
from .flush import FlushBufferTask, flush_buffer

__all__ = [
    "FLUSH_TASK",
    "TRACK_TASK",
    "FlushBufferTask",
    "TrackEventTask",
    "atrack_event",
    "flush_buffer",
    "track_event",
]
