"""``flush_buffer``: the Celery task that runs the flusher, and puts itself on beat."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import redis
from celery import Task, shared_task

from .. import defaults
from ..defaults import FLUSH_TASK
from ..exceptions import ConfigurationError
from ..pipeline.runtime import get_flusher
from .beat import schedule_on_bind

__all__ = [
    "FLUSH_TASK",
    "FailureSummary",
    "FlushBufferTask",
    "before_run",
    "failures_of",
    "flush_buffer",
]

logger = logging.getLogger(__name__)

#: Called with the app as each run starts, before the buffer is drained: the Django
#: outbox's relay (``suprsend_celery.contrib.django``) adds itself here when Django loads it.
before_run: list[Callable[[Any], None]] = []


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


_summaries: weakref.WeakKeyDictionary[Any, FailureSummary] = weakref.WeakKeyDictionary()
_summaries_lock = threading.Lock()


def failures_of(app: Any) -> FailureSummary:
    """The app's flush failure summary in this process (kept beside the app, not on it)."""
    with _summaries_lock:
        summary = _summaries.get(app)
        if summary is None:
            summary = _summaries[app] = FailureSummary()
    return summary


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
    except (redis.RedisError, ConfigurationError) as exc:
        failures_of(self.app).failed(exc)
        raise
    failures_of(self.app).succeeded()
    return report.as_result()
