"""The circuit breaker shared by every flusher: its state table, reading it, resetting it.

One Redis hash (``{p}:breaker``: ``state``, ``failures``, ``cooldown``, ``until``,
``reason``, ``opened_at``, ``open_since``) shared by every flusher; CLAIM, GATE and
SETTLE (``scripts``) move it. A missing hash is ``closed``.

==========  ===================================  =====================================
from        event (script)                       to
==========  ===================================  =====================================
closed      verdict ``fail``, failures reach     open for ``cooldown`` (at least the
            the threshold, or verdict ``auth``   Retry-After), cooldown reset (SETTLE)
closed      verdict ``fail`` with a Retry-After  open for exactly the Retry-After
            (below the threshold)                (SETTLE)
open        a claim after ``until`` (CLAIM)      half_open; that claim is the probe
                                                 (at most ``PROBE_RECORDS``), leased
                                                 for ``probe_lease``
half_open   a claim after the probe's lease ran  half_open, a new probe (the first
            out (CLAIM)                          prober died)
half_open   the probe found nothing to send      open with ``until`` = now: the next
            (CLAIM)                              claim probes again
half_open   verdict ``fail`` or ``auth``         open for the doubled cooldown (at
            (SETTLE)                             most ``cooldown_max``)
open        verdict ``fail`` or ``auth``         open; a longer Retry-After pushes
            (SETTLE, a straggler)                ``until`` out, never in
open        verdict ``ok`` before ``until``      open (a straggler sent before the
            (SETTLE, a straggler)                breaker opened: it cannot cut short
                                                 a Retry-After or a cool-down)
any other   verdict ``ok`` (SETTLE)              closed, failures and cooldown reset
any         ``reset_breaker`` (CLI)              closed (the hash is deleted)
==========  ===================================  =====================================

Verdicts come from the flusher: ``ok`` (SuprSend judged a request), ``fail`` (a
whole request failed transiently), ``auth`` (credentials refused), or none. As
reported (``breaker_state``), a stored ``open`` whose ``until`` has passed reads
``half_open``: the next claim will probe. A sharded buffer keeps its one breaker on
shard 0 and consults it with GATE before claiming from any shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .clock import redis_seconds
from .keys import Keys, stored_number
from .scripts import GATE, GateAction, gate_call
from .slot import Slot

__all__ = ["BreakerReading", "BreakerState", "CircuitBreaker", "breaker_state"]

BreakerState = Literal["closed", "open", "half_open"]


def breaker_state(raw: dict[bytes, bytes], now: float) -> BreakerState:
    """The breaker as reported, from its stored hash (see the table above)."""
    state = raw.get(b"state", b"closed")
    if state == b"half_open":
        return "half_open"
    if state == b"open":
        return "open" if now < stored_number(raw.get(b"until")) else "half_open"
    return "closed"


@dataclass(frozen=True, slots=True)
class BreakerReading:
    """The breaker as read at Redis time ``now`` (from its hash, ``HGETALL``)."""

    state: BreakerState
    failures: int
    reason: str
    #: Seconds until the next probe may go (0 when it may go now, or closed).
    retry_in: float
    #: Redis time it opened, kept through failed probes (None while closed).
    open_since: float | None

    @classmethod
    def of(cls, raw: dict[bytes, bytes], now: float) -> BreakerReading:
        until = stored_number(raw.get(b"until"))
        since = stored_number(raw.get(b"open_since"), -1)
        return cls(
            state=breaker_state(raw, now),
            failures=int(stored_number(raw.get(b"failures"))),
            reason=raw.get(b"reason", b"").decode("utf-8", "replace"),
            retry_in=round(max(0.0, until - now), 3),
            open_since=since if since > 0 else None,
        )

    def as_dict(self) -> dict[str, Any]:
        """``state``, ``failures``, ``reason`` and ``retry_in`` (``buffer.breaker()``)."""
        return {
            "state": self.state,
            "failures": self.failures,
            "reason": self.reason,
            "retry_in": self.retry_in,
        }


class CircuitBreaker:
    """The breaker hash of one shard: read it, reset it, or pass it (GATE)."""

    def __init__(self, slot: Slot, keys: Keys) -> None:
        self.slot = slot
        self.keys = keys
        self._gate = slot.client.register_script(GATE.source)

    def read(self) -> BreakerReading:
        """The breaker now, in one round trip."""
        pipe = self.slot.pipeline()
        pipe.hgetall(self.keys.breaker)
        pipe.time()
        raw, now = pipe.execute()
        return BreakerReading.of(raw, redis_seconds(now))

    def reset(self) -> None:
        """Close it at once (the CLI, once the cause is fixed)."""
        self.slot.client.delete(self.keys.breaker)

    def gate(self, action: GateAction, probe_lease: float) -> tuple[str, float]:
        """GATE: ``enter`` answers ``(mode, wait)`` as CLAIM would decide it; ``empty``
        says the probe found nothing on any shard."""
        keys, args = gate_call(self.keys, action, probe_lease)
        reply = self._gate(keys=keys, args=args)
        return reply[0].decode(), float(reply[1])
