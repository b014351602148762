"""Counters and histograms kept in Redis, so every worker and every exporter agrees.

One HASH, ``{p}:metrics``, in the buffer's hash tag: the scripts that settle records
increment it in the same atomic step (``SETTLE``, ``CLAIM``, the journal's), so a
count can neither be lost by a restart nor doubled by a second worker or exporter,
and counting costs no round trip of its own. Fields::

    records:<outcome>            buffered records: sent, retried, dead_lettered,
                                 returned (unsent, untouched), lease_expired
    direct:<outcome>             direct-path events: sent, retried, dead_lettered, kept,
                                 taken_over (by the flusher, from the journal)
    requests:<path>:<class>      HTTP requests: path bulk|direct, class 2xx..5xx|error
    hist:<name>:<le>             observations in one histogram bucket (not cumulative;
                                 the exporter accumulates), le as in ``BUCKETS``
    hist:<name>:sum              their sum, seconds (HINCRBYFLOAT)
    records:past_dedup_window    sends of records accepted more than 24 h before
    last_flush_at                Redis TIME at the end of the latest flush run

No Prometheus here (it is an optional extra): ``metrics.py`` turns this hash into
exposition, ``health.py`` reads ``last_flush_at``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

__all__ = [
    "BUCKETS",
    "FLUSH_SECONDS",
    "LAST_FLUSH_AT",
    "PAST_WINDOW",
    "REQUEST_SECONDS",
    "Tally",
    "bucket_field",
    "status_class",
]

RequestPath = Literal["bulk", "direct"]

REQUEST_SECONDS = "request_seconds"
"""Histogram of one HTTP request to SuprSend (``request_seconds:<path>``)."""

FLUSH_SECONDS = "flush_seconds"
"""Histogram of one flush run (claim, send, settle until empty or out of time)."""

BUCKETS: dict[str, tuple[float, ...]] = {
    # Prometheus' default buckets plus 30 s: a request is bounded by the read timeout
    # (10 s by default), and SuprSend answers in tens to hundreds of milliseconds.
    REQUEST_SECONDS: (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    # A run drains until the buffer is empty or its 25 s budget is spent.
    FLUSH_SECONDS: (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 30.0, 60.0),
}
"""Upper bounds (``le``) of each histogram's buckets, in seconds; ``+Inf`` is implied."""

LAST_FLUSH_AT = "last_flush_at"

PAST_WINDOW = "records:past_dedup_window"
"""Sends of buffered records first accepted more than ``DEDUP_WINDOW`` ago (SuprSend
no longer deduplicates their keys); ``buffer_stats()["sent_past_dedup_window"]``."""


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def bucket_field(histogram: str, bound: float) -> str:
    """The hash field counting one bucket of ``histogram`` (``hist:<name>:<le>``)."""
    return f"hist:{histogram}:{_le(bound)}"


def status_class(status_code: int | None) -> str:
    """``"2xx"`` .. ``"5xx"`` for an HTTP status, ``"error"`` when there was no answer."""
    if status_code is None or not 100 <= status_code <= 599:
        return "error"
    return f"{status_code // 100}xx"


class Tally:
    """Increments gathered while a claim (or a ``track_event`` run) goes, applied in the
    step that settles it: the claim's settle, the task's journal settle, or the journal
    entry of the retry it publishes. Handed along explicitly, never kept in a global."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, float] = {}

    def add(self, field: str, amount: float = 1) -> None:
        self.counts[field] = self.counts.get(field, 0) + amount

    def observe(self, histogram: str, seconds: float) -> None:
        """One observation of ``histogram`` (``request_seconds:bulk``, ``flush_seconds``)."""
        bounds = BUCKETS[histogram.partition(":")[0]]
        bound = next((b for b in bounds if seconds <= b), float("inf"))
        self.add(bucket_field(histogram, bound))
        self.add(f"hist:{histogram}:sum", seconds)

    def request(self, path: RequestPath, status_code: int | None, seconds: float) -> None:
        """One HTTP request to SuprSend: its status class and its duration."""
        self.add(f"requests:{path}:{status_class(status_code)}")
        self.observe(f"{REQUEST_SECONDS}:{path}", seconds)

    def args(self) -> list[str | float]:
        """``field, amount, ...`` as ``lua/prelude/count.lua`` reads them."""
        out: list[str | float] = []
        for field, amount in self:
            out.append(field)
            # whole counts as integers (HINCRBY refuses "3.0"); sums as floats
            out.append(amount if field.endswith(":sum") else int(amount))
        return out

    def __iter__(self) -> Iterator[tuple[str, float]]:
        return iter(self.counts.items())

    def __bool__(self) -> bool:
        return bool(self.counts)
