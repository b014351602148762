"""A standalone relay, configured only from environment variables.

    SUPRSEND_WORKSPACE_KEY=... SUPRSEND_WORKSPACE_SECRET=... \\
    CELERY_BROKER_URL=redis://localhost:6379/0 \\
    celery -A suprsend_celery.app worker --beat

Producers in other services publish ``suprsend_celery.track_event`` tasks, or call
``buffer_event`` against the same Redis; this worker sends them. Every ``suprsend_*``
key falls back to its upper-case environment variable (see ``config``).
"""

from __future__ import annotations

import os

from celery import Celery

from . import tasks as _tasks  # noqa: F401  (registers the tasks and the beat hook)

__all__ = ["app"]

_broker = (
    os.environ.get("CELERY_BROKER_URL")
    or os.environ.get("SUPRSEND_REDIS_URL")
    or "redis://127.0.0.1:6379/0"
)

app = Celery("suprsend_celery")
app.conf.update(
    broker_url=_broker,
    result_backend=os.environ.get("CELERY_RESULT_BACKEND") or _broker,
    broker_connection_retry_on_startup=True,
    task_default_queue=os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "celery"),
    # Results expire after a day: task results are only for monitoring (Flower).
    result_expires=int(os.environ.get("CELERY_RESULT_EXPIRES", "86400")),
    worker_prefetch_multiplier=int(os.environ.get("CELERY_WORKER_PREFETCH_MULTIPLIER", "4")),
    # Flower shows task events only when workers send them.
    worker_send_task_events=True,
    task_send_sent_event=True,
)
