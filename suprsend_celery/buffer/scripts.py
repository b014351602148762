"""The buffer's Lua scripts (``lua/*.lua``, loaded once), each with the one Python
function that builds its call.

Every multi-step change to the buffer is one script, so a crash between two steps
cannot lose or double a record. Each script starts by binding every ``KEYS``/``ARGV``
entry to a named local; its ``Script`` here declares those names in the same order,
and its builder (``push_call``, ``claim_call``, ...) fills them by name, so the order
is written once per side and ``tests/test_scripts.py`` holds the two sides together.
The limits a script applies come from ``defaults.py`` as arguments. Time always comes
from Redis (``TIME``), so flushers on hosts with skewed clocks agree on leases and due
times. The circuit breaker these scripts drive is described in ``breaker``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, NamedTuple, cast

from .. import defaults
from ..delivery.decisions import Settlement
from ..delivery.tally import Tally
from .keys import Keys

__all__ = [
    "CLAIM",
    "CONCURRENCY",
    "DUTY",
    "EXTEND",
    "FINISH_RUN",
    "GATE",
    "HOLD_JOURNAL",
    "JOURNAL",
    "PUSH",
    "RECOVER_JOURNAL",
    "REHOME",
    "REQUEUE",
    "SCRIPTS",
    "SETTLE",
    "SETTLE_JOURNAL",
    "Breaker",
    "BreakerChange",
    "Call",
    "DutyAction",
    "GateAction",
    "Script",
    "Settled",
    "claim_call",
    "concurrency_call",
    "duty_call",
    "extend_call",
    "finish_run_call",
    "gate_call",
    "hold_journal_call",
    "journal_call",
    "push_call",
    "recover_journal_call",
    "rehome_call",
    "requeue_call",
    "settle_call",
    "settle_journal_call",
    "settled_reply",
]

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


class Call(NamedTuple):
    """One script invocation: its ``KEYS`` and its ``ARGV``, in the script's order."""

    keys: list[str]
    args: list[Any]


def _load(name: str, preludes: Sequence[str]) -> str:
    """The source of ``lua/<name>.lua``, after the preludes it uses."""
    folder = resources.files(__package__) / "lua"
    parts = [(folder / "prelude" / f"{p}.lua").read_text("utf-8") for p in preludes]
    return "".join(parts) + (folder / f"{name}.lua").read_text("utf-8")


@dataclass(frozen=True, slots=True)
class Script:
    """One script: its file, and the names its header binds ``KEYS`` and ``ARGV`` to.

    ``tail`` names what follows the named ``ARGV`` entries (records, metric
    increments...), or is empty when nothing does.
    """

    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...] = ()
    tail: str = ""
    preludes: tuple[str, ...] = ()
    source: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", _load(self.name, self.preludes))

    def call(
        self, keys: Mapping[str, str], args: Mapping[str, Any], tail: Sequence[Any] = ()
    ) -> Call:
        """``KEYS`` and ``ARGV`` ordered as declared; ``KeyError``/``ValueError`` when
        the names given are not exactly the declared ones."""
        if len(keys) != len(self.keys) or len(args) != len(self.args):
            raise ValueError(f"{self.name}: wants {self.keys} and {self.args}")
        if tail and not self.tail:
            raise ValueError(f"{self.name} takes nothing after {self.args}")
        return Call([keys[n] for n in self.keys], [*(args[n] for n in self.args), *tail])


# The names below are the scripts' own locals, in their order (lua/<name>.lua).
_HELD = ("pending", "inflight", "retry", "dead")
_JOURNAL = ("journal", "metrics", "expiring", "taken")

PUSH = Script("push", (*_HELD, "wake_key"), ("max_length",), "records", ("unpack", "held", "wake"))
CLAIM = Script(
    "claim",
    ("pending", "claims", "claim", "inflight", "retry", "breaker", "metrics"),
    (
        "count",
        "lease",
        "claim_id",
        "claim_prefix",
        "probe_lease",
        "expired_limit",
        "due_limit",
        "probe_records",
        "use_breaker",
        "fill",
    ),
    preludes=("now", "unpack", "count", "gate"),
)
GATE = Script("gate", ("breaker",), ("action", "probe_lease"), preludes=("now", "gate"))
SETTLE = Script(
    "settle",
    (
        "claims",
        "claim",
        "inflight",
        "retry",
        "dead",
        "pending",
        "breaker_key",
        "settled",
        "metrics",
        "wake_key",
    ),
    (
        "claim_id",
        "n_retry",
        "n_dead",
        "n_back",
        "verdict",
        "threshold",
        "cooldown_base",
        "cooldown_max",
        "floor",
        "reason",
        "tombstone_seconds",
    ),
    "retries, dead letters, returned records, metric increments",
    ("now", "count", "wake"),
)
EXTEND = Script("extend", ("claims",), ("claim_id", "lease"), preludes=("now",))
REQUEUE = Script("requeue", ("dead", "pending", "wake_key"), (), "dead-letter entries", ("wake",))
REHOME = Script(
    "rehome",
    ("dead", "pending", "inflight", "retry", "wake_key"),
    ("max_length", "record", "dead_entry"),
    preludes=("held", "wake"),
)
JOURNAL = Script(
    "journal", _JOURNAL, ("seconds", "record", "expires_in"), "metric increments", ("now", "count")
)
SETTLE_JOURNAL = Script("settle_journal", _JOURNAL, ("record",), "metric increments", ("count",))
HOLD_JOURNAL = Script(
    "hold_journal", ("journal", "expiring", "taken"), ("record", "seconds"), preludes=("now",)
)
FINISH_RUN = Script(
    "finish_run",
    ("pending", "inflight", "retry", "metrics"),
    (),
    "metric increments",
    ("now", "count"),
)
RECOVER_JOURNAL = Script(
    "recover_journal",
    ("journal", "pending", "expiring", "taken", "metrics", "wake_key"),
    ("limit", "keep_seconds"),
    preludes=("now", "count", "wake"),
)
DUTY = Script("duty", ("duty", "metrics"), ("action", "member", "lease", "cap"), preludes=("now",))

CONCURRENCY = Script(
    "concurrency",
    ("concurrency", "flushers"),
    (
        "flusher",
        "delta",
        "refused",
        "start",
        "floor",
        "ceiling",
        "leaving",
        "active_seconds",
        "keep_seconds",
    ),
    preludes=("now",),
)

SCRIPTS = (
    PUSH,
    CLAIM,
    GATE,
    CONCURRENCY,
    SETTLE,
    EXTEND,
    REQUEUE,
    REHOME,
    JOURNAL,
    HOLD_JOURNAL,
    SETTLE_JOURNAL,
    FINISH_RUN,
    RECOVER_JOURNAL,
    DUTY,
)
"""Every script, for the test that reads their headers."""


def _held(k: Keys) -> dict[str, str]:
    """The keys whose lengths make up the bound (``held`` in the prelude)."""
    return {"pending": k.pending, "inflight": k.inflight, "retry": k.retry, "dead": k.dead}


@functools.lru_cache(maxsize=256)
def _push_keys(k: Keys) -> tuple[str, ...]:
    return tuple(PUSH.call({**_held(k), "wake_key": k.wake}, {"max_length": 0}).keys)


def push_call(k: Keys, max_length: int, records: Sequence[bytes]) -> Call:
    # Once per event in the caller's request: the keys, ordered by name once per shard.
    return Call(list(_push_keys(k)), [max_length, *records])


def claim_call(
    k: Keys,
    claim_id: str,
    count: int,
    lease: float,
    probe_lease: float,
    *,
    use_breaker: bool = True,
    fill: int = 0,
) -> Call:
    """CLAIM; ``fill``: take nothing (``short``) while fewer than that many wait."""
    keys = {
        "pending": k.pending,
        "claims": k.claims,
        "claim": k.claim(claim_id),
        "inflight": k.inflight,
        "retry": k.retry,
        "breaker": k.breaker,
        "metrics": k.metrics,
    }
    args = {
        "count": count,
        "lease": lease,
        "claim_id": claim_id,
        "claim_prefix": k.claim_prefix,
        "probe_lease": probe_lease,
        "expired_limit": defaults.CLAIM_EXPIRED_LIMIT,
        "due_limit": defaults.CLAIM_DUE_RETRIES_LIMIT,
        "probe_records": defaults.PROBE_RECORDS,
        "use_breaker": "1" if use_breaker else "0",
        "fill": fill,
    }
    return CLAIM.call(keys, args)


GateAction = Literal["enter", "empty"]


def gate_call(k: Keys, action: GateAction, probe_lease: float) -> Call:
    return GATE.call({"breaker": k.breaker}, {"action": action, "probe_lease": probe_lease})


def concurrency_call(
    k: Keys,
    flusher: str,
    delta: float,
    *,
    refused: float | None = None,
    start: float,
    floor: float,
    ceiling: float,
    leaving: bool,
    active_seconds: float,
    keep_seconds: int,
) -> Call:
    """CONCURRENCY: merge one flusher's news into the shared limit (shard 0's keys);
    ``refused``: where the API refused (0: nowhere any more; None: no news)."""
    keys = {"concurrency": k.concurrency, "flushers": k.flushers}
    args = {
        "flusher": flusher,
        "delta": round(delta, 4),
        "refused": "" if refused is None else refused,
        "start": start,
        "floor": floor,
        "ceiling": ceiling,
        "leaving": "1" if leaving else "0",
        "active_seconds": active_seconds,
        "keep_seconds": keep_seconds,
    }
    return CONCURRENCY.call(keys, args)


class Breaker(NamedTuple):
    """The breaker's tunables, passed to SETTLE."""

    threshold: int = defaults.BREAKER_THRESHOLD
    cooldown: float = defaults.BREAKER_COOLDOWN
    cooldown_max: float = defaults.BREAKER_COOLDOWN_MAX


def settle_call(
    k: Keys,
    claim_id: str,
    settlement: Settlement,
    *,
    breaker: Breaker,
    counts: Tally | None = None,
) -> Call:
    """SETTLE for ``decide``'s settlement of one claim, and the claim's request metrics."""
    retries = settlement.retry_items()
    dead = settlement.dead_entries()
    tail: list[Any] = []
    for delay, item in retries:
        tail += (delay, item)
    tail += dead
    tail += settlement.back
    if counts:
        tail += counts.args()
    keys = {
        "claims": k.claims,
        "claim": k.claim(claim_id),
        "inflight": k.inflight,
        "retry": k.retry,
        "dead": k.dead,
        "pending": k.pending,
        "breaker_key": k.breaker,
        "settled": k.settled(claim_id),
        "metrics": k.metrics,
        "wake_key": k.wake,
    }
    args = {
        "claim_id": claim_id,
        "n_retry": len(retries),
        "n_dead": len(dead),
        "n_back": len(settlement.back),
        "verdict": settlement.verdict,
        "threshold": breaker.threshold,
        "cooldown_base": breaker.cooldown,
        "cooldown_max": breaker.cooldown_max,
        "floor": settlement.open_for,
        "reason": settlement.reason,
        "tombstone_seconds": defaults.SETTLED_TOMBSTONE_SECONDS,
    }
    return SETTLE.call(keys, args, tail)


def extend_call(k: Keys, claim_id: str, lease: float) -> Call:
    return EXTEND.call({"claims": k.claims}, {"claim_id": claim_id, "lease": lease})


def requeue_call(k: Keys, entries: Sequence[bytes] | None) -> Call:
    """``entries=None`` requeues every dead letter; an empty list would too, so refuse it."""
    if entries is not None and not entries:
        raise ValueError("requeue_call needs entries, or None for every dead letter")
    keys = {"dead": k.dead, "pending": k.pending, "wake_key": k.wake}
    return REQUEUE.call(keys, {}, entries or ())


def rehome_call(k: Keys, max_length: int, record: bytes, dead_entry: bytes) -> Call:
    keys = {
        "dead": k.dead,
        "pending": k.pending,
        "inflight": k.inflight,
        "retry": k.retry,
        "wake_key": k.wake,
    }
    args = {"max_length": max_length, "record": record, "dead_entry": dead_entry}
    return REHOME.call(keys, args)


def _journal_keys(k: Keys) -> dict[str, str]:
    return {
        "journal": k.journal,
        "metrics": k.metrics,
        "expiring": k.journal_expires,
        "taken": k.journal_taken,
    }


def journal_call(
    k: Keys,
    record: bytes,
    seconds: float,
    counts: Tally | None = None,
    expires_in: float | None = None,
) -> Call:
    expiry = "" if expires_in is None else expires_in
    args = {"seconds": seconds, "record": record, "expires_in": expiry}
    return JOURNAL.call(_journal_keys(k), args, counts.args() if counts else ())


def settle_journal_call(k: Keys, record: bytes, counts: Tally | None) -> Call:
    tail = counts.args() if counts else ()
    return SETTLE_JOURNAL.call(_journal_keys(k), {"record": record}, tail)


def hold_journal_call(k: Keys, record: bytes, seconds: float) -> Call:
    keys = {"journal": k.journal, "expiring": k.journal_expires, "taken": k.journal_taken}
    return HOLD_JOURNAL.call(keys, {"record": record, "seconds": seconds})


def finish_run_call(k: Keys, counts: Tally) -> Call:
    keys = {"pending": k.pending, "inflight": k.inflight, "retry": k.retry, "metrics": k.metrics}
    return FINISH_RUN.call(keys, {}, counts.args())


def recover_journal_call(
    k: Keys, limit: int, keep_seconds: float = defaults.JOURNAL_TAKEN_KEEP
) -> Call:
    keys = {
        "journal": k.journal,
        "pending": k.pending,
        "expiring": k.journal_expires,
        "taken": k.journal_taken,
        "metrics": k.metrics,
        "wake_key": k.wake,
    }
    return RECOVER_JOURNAL.call(keys, {"limit": limit, "keep_seconds": keep_seconds})


DutyAction = Literal["join", "renew", "leave", "alive"]


def duty_call(k: Keys, action: DutyAction, member: str, lease: float, cap: int) -> Call:
    """DUTY on shard 0's roster; ``member`` is the run's id to ``join``, else what
    ``join`` answered."""
    args = {"action": action, "member": member, "lease": lease, "cap": cap}
    return DUTY.call({"duty": k.duty, "metrics": k.metrics}, args)
