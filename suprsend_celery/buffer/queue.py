"""The queue and its claims: push, claim under a lease, extend, settle, finish a run.

Producers append to ``{p}:pending``; a flusher moves a batch into a claim under a lease
(CLAIM), sends it, and settles it in one step (SETTLE): sent records vanish, retries
are scheduled in ``{p}:retry``, dead letters kept, untouched records put back, the
breaker fed and the metrics counted. A claim whose lease runs out returns to pending
at the next claim, so a flusher killed at any instant loses nothing. Each operation is
one round trip (one script).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .. import defaults
from ..delivery.decisions import Settlement
from ..delivery.tally import Tally
from ..exceptions import ReplicationError
from . import scripts as lua
from .keys import Keys
from .push_plan import PushPlan
from .slot import Slot

__all__ = ["Claim", "ClaimMode", "Queue"]

ClaimMode = Literal["ok", "probe", "open", "short"]
"""``ok``; ``probe`` when the claim is the breaker's probe; ``open`` when it refused;
``short`` when fewer records than asked to ``fill`` wait, so none were taken."""


@dataclass(slots=True)
class Claim:
    """Records one flusher owns until it settles them or its lease runs out.

    ``mode`` is ``"ok"``; ``"probe"`` when this claim is the breaker's probe; ``"open"``
    when the breaker refused (``wait`` seconds left, no records); ``"short"`` when
    records wait but fewer than the claim's ``fill`` (none taken: the run lingers).
    """

    id: str
    mode: ClaimMode
    wait: float
    items: list[bytes]
    #: With no records: seconds until a retry or a lease falls due (None: none is).
    due_in: float | None = None


_DEFAULT_BREAKER = lua.Breaker()


class Queue:
    """Pending records and the claims on them, for one shard."""

    def __init__(
        self,
        slot: Slot,
        keys: Keys,
        *,
        max_length: int = defaults.BUFFER_MAX_LENGTH,
        min_replicas: int = defaults.BUFFER_MIN_REPLICAS,
        breaker: lua.Breaker = _DEFAULT_BREAKER,
    ) -> None:
        self.slot = slot
        self.keys = keys
        self.max_length = max_length
        self.min_replicas = min_replicas
        self.breaker = breaker
        #: Refuses accepting into a Redis that may evict our keys (the async push shares it).
        self.policy_check = slot.policy_check
        self._push = slot.client.register_script(lua.PUSH.source)  # its sha and body
        # A flusher's scripts, run once per batch: without redis-py's command layers.
        self._claim = slot.script(lua.CLAIM.source)
        self._extend = slot.script(lua.EXTEND.source)
        self._settle = slot.script(lua.SETTLE.source)
        self._finish_run = slot.script(lua.FINISH_RUN.source)

    def push(self, records: Sequence[bytes]) -> int:
        """Append records in one atomic step; ``BufferFullError`` (nothing added) if full,
        ``BufferUnavailableError`` if Redis fails or does not answer in time, and
        ``ReplicationError`` (added, not confirmed) when fewer than ``min_replicas``
        replicas confirm them within a quarter of ``accept_timeout``, and
        ``ConfigurationError`` when this Redis may evict keys (see ``eviction``).

        The push's decisions are ``PushPlan``'s, as the async push's; the round trips
        run on the producers' own connections, with ``WAIT`` in the push's, all within
        one ``AcceptAttempt`` (one bound; what an error's ``accepted`` reports)."""
        if not records:
            return 0
        plan = PushPlan(self, records)
        producers = self.slot.producers
        attempt = producers.attempt()
        if plan.reading_due():
            plan.take_reading(*self.slot.policy_reading(attempt))
        reply, acked = producers.call(
            self._push, plan.call(), replicas=self.min_replicas, attempt=attempt
        )
        pushed = plan.pushed(reply)
        if acked < self.min_replicas:
            raise ReplicationError.because(
                f"{len(records)} event(s) reached the Redis master, but only {acked} of "
                f"suprsend_buffer_min_replicas={self.min_replicas} replica(s) confirmed them "
                f"within {producers.wait_seconds:g}s (only a failover before the master "
                "replicates them would lose them)",
                accepted=True,
                replicas=acked,
                required=self.min_replicas,
            )
        return pushed

    def claim(
        self,
        count: int,
        lease: float,
        *,
        probe_lease: float = defaults.PROBE_LEASE,
        use_breaker: bool = True,
        fill: int = 0,
    ) -> Claim:
        """Atomically take up to ``count`` records under a lease (after recovering expired
        ones and due retries). ``use_breaker=False``: the caller passed the breaker.
        ``fill``: take none (mode ``short``) while some but fewer than this many wait."""
        claim_id = uuid.uuid4().hex
        keys, args = lua.claim_call(
            self.keys, claim_id, count, lease, probe_lease, use_breaker=use_breaker, fill=fill
        )
        reply = self._claim(keys=keys, args=args)
        mode: ClaimMode = reply[0].decode()
        value, items = float(reply[1]), reply[2:]
        if mode == "open" or items:
            return Claim(claim_id, mode, value if mode == "open" else 0.0, items)
        return Claim(claim_id, mode, 0.0, items, None if value < 0 else value)

    def extend(self, claim_id: str, lease: float) -> bool:
        """Push a claim's deadline out; False if the lease already ran out."""
        keys, args = lua.extend_call(self.keys, claim_id, lease)
        return bool(self._extend(keys=keys, args=args))

    def settle(
        self, claim_id: str, settlement: Settlement, counts: Tally | None = None
    ) -> lua.Settled:
        """Finish a claim in one step as ``settlement`` says: drop the sent records,
        schedule retries, dead-letter, return ``back`` to the head of pending untouched
        (a request never reached SuprSend's judgement), feed the breaker its verdict, and
        count ``counts`` (the claim's requests) and the records' outcomes.

        Returns False when the lease had run out: the records were already returned to
        pending and will be re-sent, deduplicated by their keys. ``.change`` says how it
        moved the breaker.
        """
        keys, args = lua.settle_call(
            self.keys, claim_id, settlement, breaker=self.breaker, counts=counts
        )
        return lua.settled_reply(self._settle(keys=keys, args=args))

    def finish_run(self, counts: Tally) -> int:
        """Note the end of a flush run and count it; returns ``remaining()``, same trip."""
        keys, args = lua.finish_run_call(self.keys, counts)
        return int(self._finish_run(keys=keys, args=args))

    def pending_count(self) -> int:
        return int(self.slot.client.llen(self.keys.pending))

    def remaining(self) -> int:
        """Records not yet delivered nor dead: pending, in flight and scheduled for retry."""
        pipe = self.slot.pipeline()
        pipe.llen(self.keys.pending)
        pipe.get(self.keys.inflight)
        pipe.zcard(self.keys.retry)
        pending, inflight, retries = pipe.execute()
        return int(pending) + int(inflight or 0) + int(retries)
