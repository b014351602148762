"""Celery glue: the ``track_event`` and ``flush_buffer`` tasks and what they need.

``direct`` is the direct path's task (its parts: ``prepare`` in the caller, ``journal``
the safety net for lost broker messages, ``attempt`` one run in the worker), ``flush``
runs the flusher, ``beat`` puts it on the beat schedule, ``redaction`` keeps records
out of Flower and results. Every use of Celery's Task API is in the two Task classes.
``app.conf.imports = ("suprsend_celery.tasks",)`` registers both tasks with a worker.
"""

from ..defaults import FLUSH_TASK, TRACK_TASK
from .direct import PreparedEvent, TrackEventTask, atrack_event, prepare_track_event, track_event
from .flush import FlushBufferTask, flush_buffer

__all__ = [
    "FLUSH_TASK",
    "TRACK_TASK",
    "FlushBufferTask",
    "PreparedEvent",
    "TrackEventTask",
    "atrack_event",
    "flush_buffer",
    "prepare_track_event",
    "track_event",
]
