"""Outcome signals, so users can alert (or report to Sentry) without polling.

Celery-style signals (``celery.utils.dispatch.Signal``): connect a receiver with
``@event_dead_lettered.connect`` and it is called in the process where the outcome
happened (a worker, the flusher, ``suprsend-celery flush``). A receiver that raises
is logged by Celery and never disturbs delivery.

- ``event_dead_lettered(sender, dead_letter, stored)``: an event was given up for
  good. ``sender`` is ``"buffer"`` or ``"direct"``; ``dead_letter`` is a
  ``DeadLetter`` (``idempotency_key``, ``event``, ``error``, ``status_code``,
  ``attempts``, ``source``); ``stored`` is False when no Redis was configured to keep
  it (a direct-path event then only fails its task). Its repr shows no properties; the
  record itself is there only for a receiver that asks for it:
  ``dead_letter.record_dict()`` (or ``record_json()``, its text).
- ``flush_completed(sender, sent, retry_scheduled, dead_lettered, remaining,
  seconds)``: a flush run ended (the ``flush_buffer`` result's counts).
- ``breaker_opened(sender, reason)`` / ``breaker_closed(sender)``: the shared
  circuit breaker opened (an outage began) or closed again. A failed probe re-opens
  an already open breaker silently, so one outage gives one of each.

``sender`` of the flush and breaker signals is the buffer's key prefix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery.utils.dispatch import Signal

from ..delivery.dead_letters import parse_dead_letter

__all__ = [
    "breaker_closed",
    "breaker_opened",
    "event_dead_lettered",
    "flush_completed",
    "send_dead_lettered",
]

logger = logging.getLogger(__name__)

event_dead_lettered = Signal(name="suprsend_celery.event_dead_lettered")
flush_completed = Signal(name="suprsend_celery.flush_completed")
breaker_opened = Signal(name="suprsend_celery.breaker_opened")
breaker_closed = Signal(name="suprsend_celery.breaker_closed")


def send_dead_lettered(entries: Iterable[bytes], *, stored: bool = True) -> None:
    """Announce dead-letter entries (as stored in the dead-letter list)."""
    if not event_dead_lettered.receivers:
        return
    for entry in entries:
        dead_letter = parse_dead_letter(entry)
        event_dead_lettered.send(sender=dead_letter.source, dead_letter=dead_letter, stored=stored)


def send_breaker_change(prefix: str, change: str, reason: str = "") -> None:
    """Announce a breaker transition the settle script reported (``opened``/``closed``)."""
    if change == "opened":
        breaker_opened.send(sender=prefix, reason=reason)
    elif change == "closed":
        breaker_closed.send(sender=prefix)
