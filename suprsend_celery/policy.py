"""Delivery policy shared by both paths: backoff, when to retry, the dead-letter format.

Pure functions, no I/O: the direct path (``tasks``) and the buffered path
(``flusher``) apply them, so an event is retried and dead-lettered the same way
whichever path carried it.

A dead letter is a JSON header (no properties), a newline, then the record exactly as
it will be re-sent, so requeueing restores the original bytes (Lua's cjson would
reorder keys).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from . import defaults
from .events import accepted_before
from .exceptions import DeliveryError
from .responses import key_of

__all__ = [
    "DeadLetter",
    "DeadLetterSource",
    "backoff_delay",
    "dead_letter_entry",
    "direct_dead_letter",
    "failure_reason",
    "parse_dead_letter",
    "past_dedup_window",
    "should_retry",
]

logger = logging.getLogger(__name__)

DeadLetterSource = Literal["direct", "buffer"]


def past_dedup_window(payloads: Sequence[bytes]) -> list[int]:
    """Indices of records accepted over 24 h ago, said in a warning: SuprSend no longer
    deduplicates their keys, so one it processed before may be processed again."""
    late = accepted_before(payloads, int((time.time() - defaults.DEDUP_WINDOW) * 1000))
    if late:
        logger.warning(
            "%d record(s) sent more than 24 h after they were accepted (e.g. %s): SuprSend "
            "deduplicates a key for 24 h only, so one it already processed may be again",
            len(late),
            key_of(payloads[late[0]]),
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


@dataclass(slots=True)
class DeadLetter:
    """A record that will not be delivered without help, with why."""

    idempotency_key: str | None
    event: str | None
    error: str
    status_code: int | None
    attempts: int
    failed_at: float
    source: str
    #: The record as it will be re-sent; kept out of repr, since it holds properties.
    record: bytes = field(repr=False)
    raw: bytes = field(repr=False)

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - self.failed_at)

    def record_json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.record)
        return value


def dead_letter_entry(
    record: bytes,
    *,
    error: str,
    status_code: int | None,
    attempts: int,
    source: DeadLetterSource,
    idempotency_key: str | None = None,
    event: str | None = None,
) -> bytes:
    """Serialise a dead letter: a JSON header (no properties), a newline, the record."""
    if idempotency_key is None or event is None:
        try:
            parsed = json.loads(record)
        except ValueError:
            parsed = {}
        idempotency_key = idempotency_key or parsed.get("$idempotency_key")
        event = event or parsed.get("event")
    header = {
        "idempotency_key": idempotency_key,
        "event": event,
        "error": error,
        "status_code": status_code,
        "attempts": attempts,
        "failed_at": round(time.time(), 3),
        "source": source,
    }
    return json.dumps(header, ensure_ascii=False).encode("utf-8") + b"\n" + record


def parse_dead_letter(raw: bytes) -> DeadLetter:
    """The ``DeadLetter`` of a stored entry (a damaged header reads as empty fields)."""
    head, _, record = raw.partition(b"\n")
    try:
        meta = json.loads(head)
    except ValueError:
        meta = {}
    return DeadLetter(
        idempotency_key=meta.get("idempotency_key"),
        event=meta.get("event"),
        error=str(meta.get("error", "")),
        status_code=meta.get("status_code"),
        attempts=int(meta.get("attempts") or 0),
        failed_at=float(meta.get("failed_at") or 0.0),
        source=str(meta.get("source", "")),
        record=record,
        raw=raw,
    )


def direct_dead_letter(
    text: str, meta: dict[str, Any], reason: str, exc: DeliveryError, attempts: int
) -> bytes:
    """A direct-path dead letter, in the buffered path's format."""
    return dead_letter_entry(
        text.encode("utf-8"),
        error=reason,
        status_code=exc.status_code,
        attempts=attempts,
        source="direct",
        idempotency_key=meta["idempotency_key"],
        event=meta["event"],
    )
