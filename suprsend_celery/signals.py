"""Outcome signals: ``event_dead_lettered``, ``flush_completed``, ``breaker_opened``,
``breaker_closed`` (see ``suprsend_celery.pipeline.signals`` for their arguments)."""

from .pipeline.signals import breaker_closed, breaker_opened, event_dead_lettered, flush_completed

__all__ = ["breaker_closed", "breaker_opened", "event_dead_lettered", "flush_completed"]
