"""The dead-letter format, shared by both paths.

A dead letter is a JSON header (no properties), a newline, then the record exactly as
it will be re-sent, so requeueing restores the original bytes (Lua's cjson would
reorder keys).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from ..exceptions import DeliveryError

__all__ = [
    "DeadLetter",
    "DeadLetterSource",
    "dead_letter_entry",
    "direct_dead_letter",
    "parse_dead_letter",
]

DeadLetterSource = Literal["direct", "buffer"]


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

    def record_dict(self) -> dict[str, Any]:
        """The record, parsed (``ValueError`` if it is not JSON): it holds properties."""
        value: dict[str, Any] = json.loads(self.record)
        return value

    def record_json(self) -> str:
        """The record as JSON text, exactly the bytes that will be re-sent."""
        return self.record.decode("utf-8")


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
        if not isinstance(parsed, dict):  # not a record: a list, a number, a string
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
