"""Our tasks' messages are acknowledged until the broker has taken the acknowledgement.

kombu's Redis transport frees a message's place in the consumer's prefetch window only
once its acknowledgement reached Redis. An acknowledgement that fails (the broker at
``maxclients``, a connection dropped) is logged by Celery and then forgotten: the
message keeps its place, and a worker whose window fills so takes no more tasks of any
kind until it is restarted, though it looks alive. The soak found it: two workers
stopped taking tasks after the broker refused connections for a few seconds, and 408
events waited in Redis (none lost) until the workers were restarted.

``AckRequest``, the worker's request class for ``track_event`` and ``flush_buffer``,
tries again on the worker's event loop every ``ACK_EVERY`` seconds, ``ACK_TRIES``
times: the place is freed as soon as the broker answers again. Past that the message
is left to the broker's redelivery (its visibility timeout), which is harmless (the
event's key); a worker that reconnected in the meantime has a new window anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from celery.worker.request import Request
from kombu.asynchronous import get_event_loop
from kombu.exceptions import KombuError, MessageStateError

__all__ = ["ACK_EVERY", "ACK_TRIES", "AckRequest"]

logger = logging.getLogger(__name__)

#: Seconds between two tries at an acknowledgement the broker did not take.
ACK_EVERY = 1.0
#: Tries after the first (about a minute).
ACK_TRIES = 60


def _later(seconds: float, call: Callable[[], None]) -> bool:
    """Run ``call`` on the worker's event loop in ``seconds``; False without a loop."""
    hub = get_event_loop()
    if hub is None:
        return False
    hub.call_later(seconds, call)  # type: ignore[no-untyped-call]
    return True


class AckRequest(Request):  # type: ignore[misc]
    """A worker's request whose acknowledgement is tried again until the broker takes it."""

    def acknowledge(self) -> None:
        if not self.acknowledged:
            self._ack(0)

    def _ack(self, tries: int) -> None:
        message: Any = self.message
        if message.acknowledged:  # acknowledged, rejected or requeued meanwhile
            self.acknowledged = True
            return
        try:
            message.ack()
        except MessageStateError:
            self.acknowledged = True
            return
        except (redis.RedisError, OSError, KombuError) as exc:  # it keeps its place
            self._not_taken(tries, exc)
            return
        self.acknowledged = True
        if tries:
            logger.warning(
                "task %s: its message is acknowledged (try %d)",
                self.id,
                tries + 1,
                extra={"task_id": self.id, "outcome": "acknowledged"},
            )

    def _not_taken(self, tries: int, exc: Exception) -> None:
        cause = f"{type(exc).__name__}: {exc}"
        if tries < ACK_TRIES and _later(ACK_EVERY, lambda: self._ack(tries + 1)):
            if tries == 0:
                logger.warning(
                    "task %s: the broker did not take its message's acknowledgement (%s); "
                    "trying again every %gs, so the worker keeps taking tasks",
                    self.id,
                    cause,
                    ACK_EVERY,
                    extra={"task_id": self.id, "outcome": "not_acknowledged"},
                )
            return
        logger.error(
            "task %s: its message is not acknowledged (%s, %d tries); the broker "
            "delivers it again after its visibility timeout (its event's key makes that "
            "harmless)",
            self.id,
            cause,
            tries + 1,
            extra={"task_id": self.id, "outcome": "not_acknowledged"},
        )
