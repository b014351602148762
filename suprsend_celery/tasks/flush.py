"""``flush_buffer``: the Celery task that runs the flusher, and puts itself on beat."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task, shared_task

from .. import defaults
from ..defaults import FLUSH_TASK
from ..pipeline.runtime import get_flusher
from .beat import schedule_on_bind

__all__ = ["FLUSH_TASK", "FlushBufferTask", "flush_buffer"]

logger = logging.getLogger(__name__)


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
