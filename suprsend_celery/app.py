"""A standalone relay, configured only from environment variables.

    SUPRSEND_WORKSPACE_KEY=... SUPRSEND_WORKSPACE_SECRET=... \\
    CELERY_BROKER_URL=redis://localhost:6379/0 \\
    celery -A suprsend_celery.app worker --beat

Producers in other services publish ``suprsend_celery.track_event`` tasks, or call
``buffer_event`` against the same Redis; this worker sends them. Every ``suprsend_*``
key falls back to its upper-case environment variable (see ``pipeline.settings``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery

from . import tasks as _tasks  # noqa: F401  (registers the tasks and the beat hook)
from .exceptions import ConfigurationError

__all__ = ["app"]


def _transport_options() -> dict[str, Any]:
    """``CELERY_BROKER_TRANSPORT_OPTIONS`` (a JSON object), plus the visibility timeout
    from ``CELERY_BROKER_VISIBILITY_TIMEOUT`` (seconds), which retry countdowns stay under.
    """
    raw = os.environ.get("CELERY_BROKER_TRANSPORT_OPTIONS") or "{}"
    try:
        options = json.loads(raw)
    except ValueError:
        options = None
    if not isinstance(options, dict):
        raise ConfigurationError(
            f"CELERY_BROKER_TRANSPORT_OPTIONS must be a JSON object; got {raw!r}"
        )
    timeout = os.environ.get("CELERY_BROKER_VISIBILITY_TIMEOUT")
    if timeout:
        try:
            options["visibility_timeout"] = float(timeout)
        except ValueError:
            raise ConfigurationError(
                f"CELERY_BROKER_VISIBILITY_TIMEOUT must be a number of seconds; got {timeout!r}"
            ) from None
    return options


def _task_routes() -> dict[str, Any]:
    """``CELERY_TASK_ROUTES`` (a JSON object), e.g. the flush task to a queue of its own."""
    raw = os.environ.get("CELERY_TASK_ROUTES") or "{}"
    try:
        routes = json.loads(raw)
    except ValueError:
        routes = None
    if not isinstance(routes, dict):
        raise ConfigurationError(f"CELERY_TASK_ROUTES must be a JSON object; got {raw!r}")
    return routes


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
    broker_transport_options=_transport_options(),
    task_default_queue=os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "celery"),
    task_routes=_task_routes(),
    # Results expire after a day: task results are only for monitoring (Flower).
    result_expires=int(os.environ.get("CELERY_RESULT_EXPIRES", "86400")),
    worker_prefetch_multiplier=int(os.environ.get("CELERY_WORKER_PREFETCH_MULTIPLIER", "4")),
    # Flower shows task events only when workers send them.
    worker_send_task_events=True,
    task_send_sent_event=True,
)
