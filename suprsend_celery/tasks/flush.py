"""``flush_buffer``: the Celery task that runs the flusher, and puts itself on beat.

A run started while ``suprsend_flush_wait`` is on (the default) and a flush interval is
set stays on duty for about one interval (``pipeline.duty``), waiting on Redis for new
records; a warm shutdown of the worker (``worker_shutting_down``) ends its wait at once.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import redis
from celery import Task, shared_task
from celery.signals import worker_init, worker_shutting_down

from .. import defaults
from ..defaults import FLUSH_TASK
from ..exceptions import ConfigurationError
from ..pipeline.duty import DutyPlan, shutdown
from ..pipeline.runtime import get_flusher
from ..pipeline.settings import Settings, get_settings
from .acks import AckRequest
from .beat import schedule_on_bind

__all__ = [
    "FLUSH_TASK",
    "FailureSummary",
    "FlushBufferTask",
    "before_run",
    "duty_plan",
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
    #: Acknowledged until the broker takes it (``acks``): a lost acknowledgement would
    #: keep the message's place in the worker's prefetch window for good.
    Request = AckRequest

    @classmethod
    def on_bound(cls, app: Any) -> None:
        """Celery's documented hook, called as it binds this task to an app (at
        finalize, or at import for an app finalized before): schedule ourselves."""
        schedule_on_bind(app)

    @staticmethod
    def worker_stopping() -> bool:
        """Whether this process's worker is stopping. ``worker_shutting_down`` tells the
        real worker's main process at once; ``celery.worker.state`` (its module-level
        flags, Celery 5) also covers an embedded worker (``celery.contrib.testing``),
        which stops by setting ``should_terminate`` without that signal."""
        from celery.worker import state

        return shutdown.requested or any(
            getattr(state, flag, None) is not None for flag in ("should_stop", "should_terminate")
        )


@worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _on_worker_shutting_down(**_: Any) -> None:
    """A warm (or cold) shutdown: runs on duty in this process stop waiting now."""
    shutdown.request()


@worker_init.connect  # type: ignore[untyped-decorator]
def _on_worker_init(**_: Any) -> None:
    shutdown.clear()


def duty_plan(settings: Settings, time_budget: float) -> DutyPlan | None:
    """How long a run stays on duty: one flush interval plus a handover, within its
    time budget; None (drain and end) with ``suprsend_flush_wait`` off or no interval."""
    interval = settings.flush_interval
    if not settings.flush_wait or interval <= 0:
        return None
    seconds = min(time_budget, interval + min(defaults.DUTY_HANDOVER, interval))
    return DutyPlan(
        seconds,
        linger=settings.flush_linger,
        stopping=FlushBufferTask.worker_stopping,
        stopped=shutdown.future(),
    )


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
    claimed but not settled returns to the buffer when its lease runs out. With a
    flush interval set, the run stays on duty (``duty_plan``) unless ``max_batches``
    limits it.
    """
    for hook in before_run:
        try:
            hook(self.app)
        except Exception:  # a hook's failure must not stop the buffer's drain
            logger.exception("flush_buffer: %s failed; draining the buffer anyway", hook)
    budget = time_budget if time_budget is not None else defaults.FLUSH_TIME_BUDGET
    try:
        plan = None if max_batches is not None else duty_plan(get_settings(self.app), budget)
        report = get_flusher(self.app).run(budget, max_batches=max_batches, duty=plan)
    except (redis.RedisError, ConfigurationError) as exc:
        failures_of(self.app).failed(exc)
        raise
    failures_of(self.app).succeeded()
    return report.as_result()
