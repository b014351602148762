"""The Django outbox's depth, as its relay last saw it, kept next to the buffer's keys.

The outbox lives in the project's database, which ``status``, ``check`` and the
exporter never open (they need Redis only). So every relay pass writes what it left
behind into one hash, and those verbs read it like any other figure::

    {p}:outbox   HASH   rows (outbox rows waiting), oldest (epoch seconds of the oldest
                        row's accept; 0 when none), at (when this was written)

The oldest row's age is computed when read, so it keeps growing while no relay runs:
``check --max-age`` notices a relay that stopped even though its row count is stale.
No hash (no outbox in use): both figures are 0.
"""

from __future__ import annotations

import time
from typing import Any

from .keys import Keys

__all__ = ["outbox_figures", "outbox_key", "report_outbox"]


def outbox_key(buffer: Any) -> str:
    """The hash's key, in the first shard's slot (``{prefix}``)."""
    return Keys.of(buffer.prefix).outbox


def report_outbox(buffer: Any, rows: int, oldest: float | None) -> None:
    """Record the outbox's depth after a relay pass (one round trip)."""
    buffer.redis.hset(
        outbox_key(buffer),
        mapping={"rows": rows, "oldest": repr(oldest or 0.0), "at": repr(time.time())},
    )


def outbox_figures(buffer: Any) -> dict[str, Any]:
    """``outbox_pending`` and ``outbox_oldest_age_seconds``, as the last relay pass saw them."""
    rows, oldest = buffer.redis.hmget(outbox_key(buffer), "rows", "oldest")
    pending = int(rows or 0)
    since = float(oldest or 0)
    age = max(0.0, time.time() - since) if pending and since else 0.0
    return {"outbox_pending": pending, "outbox_oldest_age_seconds": round(age, 3)}
