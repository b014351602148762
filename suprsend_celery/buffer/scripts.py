"""The buffer's Lua scripts (``lua/*.lua``, loaded once), each with the one Python
function that builds its call.

Every multi-step change to the buffer is one script, so a crash between two steps
cannot lose or double a record. Each script starts by binding every ``KEYS``/``ARGV``
entry to a named local; its builder here (``push_call``, ``claim_call``, ...) is the
only place that orders them, so the two cannot drift. The limits a script applies come from
``defaults.py`` as arguments. Time always comes from Redis (``TIME``), so flushers on
hosts with skewed clocks agree on leases and due times.

The circuit breaker
-------------------

One Redis hash (``{p}:breaker``: ``state``, ``failures``, ``cooldown``, ``until``,
``reason``, ``opened_at``) shared by every flusher. A missing hash is ``closed``.

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
``half_open``: the next claim will probe.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any, Literal, NamedTuple, Protocol, cast

from .. import defaults
from ..delivery.decisions import Verdict
from ..delivery.tally import Tally

__all__ = [
    "CLAIM_LUA",
    "EXTEND_LUA",
    "FINISH_RUN_LUA",
    "GATE_LUA",
    "JOURNAL_LUA",
    "PUSH_LUA",
    "RECOVER_JOURNAL_LUA",
    "REHOME_LUA",
    "REQUEUE_LUA",
    "SETTLE_JOURNAL_LUA",
    "SETTLE_LUA",
    "Breaker",
    "BreakerChange",
    "BreakerState",
    "Call",
    "GateAction",
    "KeyNames",
    "Settled",
    "Verdict",
    "breaker_state",
    "claim_call",
    "extend_call",
    "finish_run_call",
    "gate_call",
    "journal_call",
    "push_call",
    "recover_journal_call",
    "rehome_call",
    "requeue_call",
    "settle_call",
    "settle_journal_call",
    "settled_reply",
]

BreakerState = Literal["closed", "open", "half_open"]

BreakerChange = Literal["opened", "closed", ""]
"""How one SETTLE moved the breaker: closed → open, open or half_open → closed, or not."""


class Settled(NamedTuple):
    """SETTLE's answer; true unless the lease had run out."""

    settled: bool
    change: BreakerChange

    def __bool__(self) -> bool:
        return self.settled


def settled_reply(reply: Any) -> Settled:
    status, change = reply
    return Settled(int(status) == 1, cast(BreakerChange, change.decode()))


class KeyNames(Protocol):
    """The buffer's Redis key names (``RedisBuffer`` defines them)."""

    pending_key: str
    claims_key: str
    claim_prefix: str
    settled_prefix: str
    inflight_key: str
    retry_key: str
    dead_key: str
    breaker_key: str
    journal_key: str
    journal_expires_key: str
    metrics_key: str


class Call(NamedTuple):
    """One script invocation: its ``KEYS`` and its ``ARGV``, in the script's order."""

    keys: list[str]
    args: list[Any]


def breaker_state(raw: dict[bytes, bytes], now: float) -> BreakerState:
    """The breaker as reported, from its stored hash (see the table above)."""
    state = raw.get(b"state", b"closed").decode()
    if state == "half_open":
        return "half_open"
    if state == "open":
        until = float(raw.get(b"until", 0) or 0)
        return "open" if now < until else "half_open"
    return "closed"


def _load(name: str, *preludes: str) -> str:
    """The source of ``lua/<name>.lua``, after the preludes it uses."""
    folder = resources.files(__package__) / "lua"
    parts = [(folder / "prelude" / f"{p}.lua").read_text("utf-8") for p in preludes]
    return "".join(parts) + (folder / f"{name}.lua").read_text("utf-8")


PUSH_LUA = _load("push", "unpack", "held")


def push_call(k: KeyNames, max_length: int, records: Sequence[bytes]) -> Call:
    return Call([k.pending_key, k.inflight_key, k.retry_key, k.dead_key], [max_length, *records])


CLAIM_LUA = _load("claim", "now", "unpack", "gate")


def claim_call(
    k: KeyNames,
    claim_id: str,
    count: int,
    lease: float,
    probe_lease: float,
    *,
    use_breaker: bool = True,
) -> Call:
    return Call(
        [
            k.pending_key,
            k.claims_key,
            k.claim_prefix + claim_id,
            k.inflight_key,
            k.retry_key,
            k.breaker_key,
            k.metrics_key,
        ],
        [
            count,
            lease,
            claim_id,
            k.claim_prefix,
            probe_lease,
            defaults.CLAIM_EXPIRED_LIMIT,
            defaults.CLAIM_DUE_RETRIES_LIMIT,
            defaults.PROBE_RECORDS,
            "1" if use_breaker else "0",
        ],
    )


GATE_LUA = _load("gate", "now", "gate")

GateAction = Literal["enter", "empty"]


def gate_call(k: KeyNames, action: GateAction, probe_lease: float) -> Call:
    return Call([k.breaker_key], [action, probe_lease])


SETTLE_LUA = _load("settle", "now", "count")


class Breaker(NamedTuple):
    """The breaker's tunables, passed to SETTLE."""

    threshold: int
    cooldown: float
    cooldown_max: float


def settle_call(
    k: KeyNames,
    claim_id: str,
    *,
    breaker: Breaker,
    retries: Sequence[tuple[float, bytes]],
    dead: Sequence[bytes],
    back: Sequence[bytes],
    verdict: Verdict,
    open_for: float,
    reason: str,
    counts: Tally | None = None,
) -> Call:
    args: list[Any] = [
        claim_id,
        len(retries),
        len(dead),
        len(back),
        verdict,
        breaker.threshold,
        breaker.cooldown,
        breaker.cooldown_max,
        open_for,
        reason,
        defaults.SETTLED_TOMBSTONE_SECONDS,
    ]
    for delay, item in retries:
        args += (delay, item)
    args += dead
    args += back
    if counts:
        args += counts.args()
    keys = [
        k.claims_key,
        k.claim_prefix + claim_id,
        k.inflight_key,
        k.retry_key,
        k.dead_key,
        k.pending_key,
        k.breaker_key,
        k.settled_prefix + claim_id,
        k.metrics_key,
    ]
    return Call(keys, args)


EXTEND_LUA = _load("extend", "now")


def extend_call(k: KeyNames, claim_id: str, lease: float) -> Call:
    return Call([k.claims_key], [claim_id, lease])


REQUEUE_LUA = _load("requeue")


def requeue_call(k: KeyNames, entries: Sequence[bytes] | None) -> Call:
    """``entries=None`` requeues every dead letter; an empty list would too, so refuse it."""
    if entries is not None and not entries:
        raise ValueError("requeue_call needs entries, or None for every dead letter")
    return Call([k.dead_key, k.pending_key], list(entries or ()))


REHOME_LUA = _load("rehome", "held")


def rehome_call(k: KeyNames, max_length: int, record: bytes, dead_entry: bytes) -> Call:
    return Call(
        [k.dead_key, k.pending_key, k.inflight_key, k.retry_key], [max_length, record, dead_entry]
    )


JOURNAL_LUA = _load("journal", "now", "count")


def journal_call(
    k: KeyNames,
    record: bytes,
    seconds: float,
    counts: Tally | None = None,
    expires_in: float | None = None,
) -> Call:
    tail = counts.args() if counts else []
    expiry = "" if expires_in is None else expires_in
    return Call(
        [k.journal_key, k.metrics_key, k.journal_expires_key], [seconds, record, expiry, *tail]
    )


SETTLE_JOURNAL_LUA = _load("settle_journal", "count")


def settle_journal_call(k: KeyNames, record: bytes, counts: Tally | None) -> Call:
    tail = counts.args() if counts else []
    return Call([k.journal_key, k.metrics_key, k.journal_expires_key], [record, *tail])


FINISH_RUN_LUA = _load("finish_run", "now", "count")


def finish_run_call(k: KeyNames, counts: Tally) -> Call:
    return Call([k.pending_key, k.inflight_key, k.retry_key, k.metrics_key], counts.args())


RECOVER_JOURNAL_LUA = _load("recover_journal", "now")


def recover_journal_call(k: KeyNames, limit: int) -> Call:
    return Call([k.journal_key, k.pending_key, k.journal_expires_key], [limit])
