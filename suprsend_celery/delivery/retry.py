"""When and how late to try again, for both paths: backoff, the retry rule, reasons.

Pure functions, no I/O: the direct path (``tasks``) and the buffered path
(``flusher``) apply them, so an event is retried and dead-lettered the same way
whichever path carried it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .. import defaults
from ..events.records import accepted_before, key_of
from ..exceptions import DeliveryError

__all__ = [
    "RetryPolicy",
    "backoff_delay",
    "failure_reason",
    "past_dedup_window",
    "should_retry",
]

logger = logging.getLogger(__name__)


def past_dedup_window(payloads: Sequence[bytes]) -> list[int]:
    """Indices of records accepted over 24 h ago, said in a warning: SuprSend no longer
    deduplicates their keys, so one it processed before may be processed again."""
    late = accepted_before(payloads, int((time.time() - defaults.DEDUP_WINDOW) * 1000))
    if late:
        key = key_of(payloads[late[0]])
        logger.warning(
            "%d record(s) sent more than 24 h after they were accepted (e.g. %s): SuprSend "
            "deduplicates a key for 24 h only, so one it already processed may be again",
            len(late),
            key,
            extra={"records": len(late), "idempotency_key": key, "outcome": "past_window"},
        )
    return late


def backoff_delay(
    attempt: int,
    *,
    base: float = defaults.RETRY_BACKOFF_BASE,
    cap: float = defaults.RETRY_BACKOFF_MAX,
    floor: float | None = None,
) -> float:
    """Exponential backoff with full jitter (attempt 1 → up to ``base``), ``floor`` honoured.

    Full jitter spreads the retries of many records and workers over the whole window,
    so a recovering API is not hit by a synchronised wave.
    """
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    delay = random.uniform(0.0, ceiling)
    if floor is not None:
        delay = max(delay, min(floor, cap))
    return delay


def should_retry(error: DeliveryError, attempt: int, max_retries: int) -> bool:
    """Whether a record whose ``attempt``-th send (1-based) failed with ``error`` goes again."""
    return error.retryable and attempt <= max_retries


def failure_reason(error: DeliveryError, attempt: int) -> str:
    """Why a record is dead-lettered: the error, and for a transient one the attempts spent."""
    if error.retryable:
        return f"gave up after {attempt} attempts: {error}"
    return str(error)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how late a failed record is tried again."""

    max_retries: int = defaults.MAX_RETRIES
    backoff_base: float = defaults.RETRY_BACKOFF_BASE
    backoff_max: float = defaults.RETRY_BACKOFF_MAX

    def delay(self, attempt: int, floor: float | None) -> float:
        return backoff_delay(attempt, base=self.backoff_base, cap=self.backoff_max, floor=floor)
