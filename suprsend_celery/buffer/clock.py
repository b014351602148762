"""Redis's clock: every host reads time from the server (``TIME``), never its own.

Flushers on hosts with skewed clocks then agree on leases, due times and the breaker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["redis_seconds"]


def redis_seconds(reply: Sequence[Any]) -> float:
    """A ``TIME`` reply (``[seconds, microseconds]``) as seconds since the epoch."""
    return float(reply[0]) + float(reply[1]) / 1e6
