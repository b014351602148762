"""``flush_buffer`` on the beat schedule, without anyone asking.

Two documented Celery hooks, no private API:

- ``Task.on_bound(app)``, which Celery calls when it binds a task class to an app
  (every app that finalizes, since ``flush_buffer`` is a shared task; Celery's own
  ``PeriodicTask`` schedules itself the same way). ``FlushBufferTask`` in ``tasks``
  calls ``schedule_on_bind`` from there, so ``app.conf.beat_schedule`` has the entry.
- ``beat_init`` / ``beat_embedded_init``: the running scheduler read ``beat_schedule``
  before these signals, so an entry added now is handed to it directly.

Without a buffer (a broker that is not Redis and no ``suprsend_redis_url``) there is
nothing to flush: no entry. Either way the worker says at start (``worker_ready``), in
one line, what its buffer is: Redis (masked) and key prefix, the flush schedule or
that no beat runs in this worker, and the problems found (Redis unreachable or
evicting, settings that stop sending).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import redis
from celery.signals import beat_embedded_init, beat_init, worker_ready

from ..buffer.connection import connect
from ..buffer.eviction import read_memory_info, refusal
from ..defaults import FLUSH_TASK
from ..delivery.routing import mask_url
from ..exceptions import ConfigurationError
from ..pipeline.settings import Settings, get_settings, load_settings
from .redaction import mask_conf

__all__ = [
    "BEAT_ENTRY",
    "STARTUP_REDIS_TIMEOUT",
    "beat_entry",
    "register_beat_entry",
    "schedule_on_bind",
    "startup_report",
]

logger = logging.getLogger(__name__)

BEAT_ENTRY = "suprsend-celery-flush-buffer"
"""The name of our entry in ``app.conf.beat_schedule``."""


def beat_entry(app: Any, settings: Settings | None = None) -> dict[str, Any] | None:
    """The beat schedule entry for ``flush_buffer``, or None when the interval is 0 or
    there is no buffer to flush."""
    settings = settings or get_settings(app)
    interval = settings.flush_interval
    if interval <= 0 or not settings.redis_url:
        return None
    # Expiring after one interval keeps a backlog of runs from piling up behind a
    # slow worker: the next run will drain what the skipped one would have.
    return {"task": FLUSH_TASK, "schedule": interval, "options": {"expires": interval}}


def register_beat_entry(app: Any, settings: Settings | None = None) -> dict[str, Any] | None:
    """Add the flush schedule to ``app.conf.beat_schedule`` unless the user set one.

    Returns the flush entry now in the schedule (the user's own, if any), or None.
    """
    entry = beat_entry(app, settings)
    if entry is None:
        return None
    schedule = app.conf.beat_schedule
    if schedule is None:
        app.conf.beat_schedule = schedule = {}
    for existing in schedule.values():
        if existing.get("task") == FLUSH_TASK:
            return dict(existing)
    schedule[BEAT_ENTRY] = entry
    return entry


def schedule_on_bind(app: Any) -> None:
    """Register the schedule on an app as Celery binds our task to it, silently
    skipping apps that do not use SuprSend (no credentials configured); and make its
    ``suprsend_*`` URL settings print masked (``celery report``)."""
    try:
        mask_conf(app)
        register_beat_entry(app, load_settings(app.conf))
    except ConfigurationError as exc:
        logger.debug("flush_buffer not scheduled on %r: %s", app, exc)
    except Exception:  # finalizing the user's app must never fail because of us
        logger.debug("flush_buffer not scheduled on %r", app, exc_info=True)


@beat_init.connect  # type: ignore[untyped-decorator]
def _on_beat_init(sender: Any = None, **_: Any) -> None:
    """Make sure the running scheduler has the entry: it read ``beat_schedule`` before
    this signal, so an entry added to the config now would never run."""
    app = sender.app
    try:
        entry = register_beat_entry(app)
    except ConfigurationError as exc:
        logger.error("flush_buffer not scheduled: %s", exc)
        return
    if entry is None:
        return
    scheduler = sender.scheduler
    if not any(getattr(e, "task", None) == FLUSH_TASK for e in scheduler.schedule.values()):
        scheduler.update_from_dict({BEAT_ENTRY: entry})
        logger.info("flush_buffer scheduled every %ss", entry["schedule"])


@beat_embedded_init.connect  # type: ignore[untyped-decorator]
def _on_beat_embedded_init(sender: Any = None, **_: Any) -> None:
    _on_beat_init(sender)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    """Say in one line, as the worker starts, what its buffer is and what is wrong."""
    app = getattr(sender, "app", None)
    if app is None:
        return
    controller = getattr(sender, "controller", None)  # the WorkController; .beat with -B
    try:
        line, problems = startup_report(app, embedded_beat=bool(getattr(controller, "beat", None)))
    except Exception:  # starting the user's worker must never fail because of us
        logger.debug("suprsend-celery: no start report", exc_info=True)
        return
    if line:
        logger.log(logging.WARNING if problems else logging.INFO, "%s", line)


def startup_report(app: Any, *, embedded_beat: bool) -> tuple[str | None, list[str]]:
    """The worker's start line and its problems: the buffer's Redis (masked) and key
    prefix, the flush schedule (or no beat in this worker), whether Redis answers
    (within ``STARTUP_REDIS_TIMEOUT``) and may evict keys, and settings that stop
    sending. None for an app that does not use SuprSend (no ``suprsend_*`` setting in its
    config or environment): every ``celery`` worker of an environment with this package
    installed loads it (``ops.celery_command``), whatever app it runs."""
    if not _uses_suprsend(app):
        return None, []
    try:
        settings = load_settings(app.conf, require_credentials=False)
    except ConfigurationError as exc:
        return f"suprsend-celery: not configured: {exc}", [str(exc)]
    problems: list[str] = []
    try:
        get_settings(app)
    except ConfigurationError as exc:
        problems.append(f"nothing can be sent: {exc}")
    if not settings.redis_url:
        broker = app.conf.broker_url
        if problems:
            return None, []  # neither a buffer nor credentials: not a SuprSend app
        return (
            "suprsend-celery: the buffered path is off: the broker "
            f"({mask_url(broker) if isinstance(broker, str) else broker}) is not Redis and "
            "suprsend_redis_url is not set, so flush_buffer is not scheduled, buffer_event "
            "raises ConfigurationError and track_event keeps no journal or dead letters. "
            "Set suprsend_redis_url (SUPRSEND_REDIS_URL) to a Redis to turn it on.",
            ["no buffer"],
        )
    where = mask_url(settings.redis_url)
    interval = settings.flush_interval
    if interval <= 0:
        schedule = "flush schedule off (suprsend_flush_interval 0)"
    elif embedded_beat:
        schedule = f"flush_buffer every {interval:g}s by this worker's beat"
    else:
        schedule = (
            f"flush_buffer every {interval:g}s once a `celery beat` schedules it "
            "(no beat in this worker)"
        )
    problems += _redis_problems(settings, where)
    state = "problems: " + "; ".join(problems) if problems else "Redis answers"
    return (
        f"suprsend-celery: buffer on Redis {where}, key prefix {settings.key_prefix}; "
        f"{schedule}; {state}",
        problems,
    )


def _uses_suprsend(app: Any) -> bool:
    """Whether ``app`` is configured for SuprSend at all: the standalone relay, a
    ``suprsend_*`` key in its config, or a setting's ``SUPRSEND_*`` environment variable."""
    variables = {f"SUPRSEND_{name.upper()}" for name in Settings.__dataclass_fields__}
    if getattr(app, "main", None) == "suprsend_celery" or variables & set(os.environ):
        return True
    try:
        keys = list(app.conf.keys())
    except (AttributeError, TypeError):
        return True
    return any(isinstance(k, str) and "suprsend_" in k.lower() for k in keys)


STARTUP_REDIS_TIMEOUT = 2.0
"""Seconds the start report waits for the buffer's Redis."""


def _redis_problems(settings: Settings, where: str) -> list[str]:
    assert settings.redis_url is not None
    try:
        client = connect(
            settings.redis_url,
            master_name=settings.redis_master_name,
            sentinel_kwargs=settings.sentinel_kwargs,
            fail_fast=STARTUP_REDIS_TIMEOUT,
        )
        try:
            client.ping()
            why = refusal(read_memory_info(client).get("maxmemory_policy"), where)
        finally:
            client.close()
    except redis.RedisError as exc:
        return [f"Redis unreachable ({type(exc).__name__}: {exc})"]
    return [why] if why else []
