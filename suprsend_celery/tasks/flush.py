"""``flush_buffer``: the Celery task that runs the flusher, and puts itself on beat."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from celery import Task, shared_task

from .. import defaults
from ..defaults import FLUSH_TASK
from ..pipeline.runtime import get_flusher
from .beat import schedule_on_bind

__all__ = ["FLUSH_TASK", "FlushBufferTask", "before_run", "flush_buffer"]

logger = logging.getLogger(__name__)

#: Called with the app as each run starts, before the buffer is drained: the Django
#: outbox's relay (``suprsend_celery.contrib.django``) adds itself here when Django loads it.
before_run: list[Callable[[Any], None]] = []


class FlushBufferTask(Task):  # type: ignore[misc]
    """Runs the flusher; puts itself on the beat schedule of every app it joins."""

    @classmethod
    def on_bound(cls, app: Any) -> None:
        """Celery's documented hook, called as it binds this task to an app (at
        finalize, or at import for an app finalized before): schedule ourselves."""
        schedule_on_bind(app)


@shared_task(bind=True, base=FlushBufferTask, name=FLUSH_TASK, ignore_result=False)  # type: ignore[untyped-decorator]
def flush_buffer(
    self: Task, time_budget: float | None = None, max_batches: int | None = None
) -> dict[str, Any]:
    """Drain the Redis buffer into bulk requests; safe to run on many workers at once.

    Returns ``{"sent", "retry_scheduled", "dead_lettered", "remaining", "seconds"}``.
    A Redis failure fails the run (the next one resumes): whatever this run had
    claimed but not settled returns to the buffer when its lease runs out.
    """
    for hook in before_run:
        try:
            hook(self.app)
        except Exception:  # a hook's failure must not stop the buffer's drain
            logger.exception("flush_buffer: %s failed; draining the buffer anyway", hook)
    try:
        report = get_flusher(self.app).run(
            time_budget if time_budget is not None else defaults.FLUSH_TIME_BUDGET,
            max_batches=max_batches,
        )
    except redis.RedisError as exc:
        logger.error(
            "flush_buffer stopped: Redis failed (%s: %s); claimed records return to the "
            "buffer after their lease and the next run resumes",
            type(exc).__name__,
            exc,
        )
        raise
    return report.as_result()
