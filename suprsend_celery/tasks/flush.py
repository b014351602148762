"""``flush_buffer``: the Celery task that runs the flusher, and puts itself on beat."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from celery import Task, shared_task

from .. import defaults
from ..defaults import FLUSH_TASK
from ..exceptions import ConfigurationError
from ..pipeline.runtime import get_flusher
from ..pipeline.settings import cached_on_app
from .beat import schedule_on_bind

__all__ = ["FLUSH_TASK", "FailureSummary", "FlushBufferTask", "failures_of", "flush_buffer"]

logger = logging.getLogger(__name__)


class FlushBufferTask(Task):  # type: ignore[misc]
    """Runs the flusher; puts itself on the beat schedule of every app it joins."""

    #: Failures every beat would repeat (Redis down, settings wrong): the run still
    #: fails, but Celery logs them without a traceback; ``failures_of`` summarises them.
    throws = (redis.RedisError, ConfigurationError)

    @classmethod
    def on_bound(cls, app: Any) -> None:
        """Celery's documented hook, called as it binds this task to an app (at
        finalize, or at import for an app finalized before): schedule ourselves."""
        schedule_on_bind(app)


class FailureSummary:
    """Repeated flush failures of one app in this process, said once rather than once
    per beat: the first with its cause, then one line per ``every`` seconds while they
    go on, and one when a run succeeds again."""

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self.count = 0  # failed runs in a row
        self._said_at = 0.0
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> None:
        cause = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        with self._lock:
            self.count += 1
            count = self.count
            due = count == 1 or now - self._said_at >= self.every
            if due:
                self._said_at = now
        if count == 1 and isinstance(exc, redis.RedisError):
            logger.error(
                "flush_buffer stopped: Redis failed (%s); claimed records return to the "
                "buffer after their lease and the next run resumes (repeats are "
                "summarised every %gs)",
                cause,
                self.every,
                extra={"outcome": "failed", "failed_runs": count},
            )
        elif count == 1:
            logger.error(
                "flush_buffer failed: %s (repeats are summarised every %gs)",
                cause,
                self.every,
                extra={"outcome": "failed", "failed_runs": count},
            )
        elif due:
            logger.error(
                "flush_buffer has failed %d runs in a row; the latest: %s",
                count,
                cause,
                extra={"outcome": "failed", "failed_runs": count},
            )

    def succeeded(self) -> None:
        with self._lock:
            count, self.count = self.count, 0
        if count:
            logger.warning(
                "flush_buffer runs again after %d failed run(s)",
                count,
                extra={"outcome": "recovered", "failed_runs": count},
            )


def failures_of(app: Any) -> FailureSummary:
    """The app's flush failure summary (``reset_settings`` forgets it, like the rest)."""
    return cached_on_app(app, "_suprsend_flush_failures", FailureSummary)


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
    except (redis.RedisError, ConfigurationError) as exc:
        failures_of(self.app).failed(exc)
        raise
    failures_of(self.app).succeeded()
    return report.as_result()
