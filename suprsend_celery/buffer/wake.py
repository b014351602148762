"""Waking flush runs on duty: each shard's wake list, and the roster of runs on duty.

A flush run that found the buffer empty does not end (``pipeline.duty``): it blocks
on each shard's ``{p}:wake`` list with ``BLPOP``. Every script that makes records
claimable (PUSH, SETTLE returning records, REHOME, REQUEUE, RECOVER_JOURNAL) leaves
one token there in the same atomic step (``lua/prelude/wake.lua``), so a waiting run
claims within a round trip of the accept, and a token left while no run waited makes
the next wait return at once: no wake-up is lost between a claim and a block. The
list lives in the shard's own hash tag, so this works on a Redis Cluster, one
blocking connection per shard and waiting run.

``{p}:duty`` (shard 0) holds the runs on duty under leases (``lua/duty.lua``): at most
``cap`` wait at once whatever beat does, a killed run's place frees itself, and each
call notes that a flush run is alive, for ``check``.
"""

from __future__ import annotations

from .keys import Keys
from .scripts import DUTY, DutyAction, duty_call
from .slot import Slot

__all__ = ["MIN_BLOCK", "DutyRoster", "WakeList"]

MIN_BLOCK = 0.01
"""The shortest block, in seconds: ``BLPOP`` reads a timeout of 0 as "forever"."""


class WakeList:
    """One shard's wake list."""

    def __init__(self, slot: Slot, keys: Keys) -> None:
        self.slot = slot
        self.key = keys.wake

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a token (taking it); True when one came.

        Holds one connection of the client's pool while it blocks (the client's socket
        timeout is well above any timeout the flusher asks for)."""
        reply = self.slot.client.blpop([self.key], timeout=max(MIN_BLOCK, round(timeout, 3)))
        return reply is not None

    def give_back(self) -> None:
        """Put back a token taken by a run that left before it could claim."""
        self.slot.client.rpush(self.key, b"1")


class DutyRoster:
    """The runs on duty (``{p}:duty`` on shard 0), each under a lease."""

    def __init__(self, slot: Slot, keys: Keys) -> None:
        self.keys = keys
        self._duty = slot.client.register_script(DUTY.source)

    def _call(self, action: DutyAction, member: str, lease: float, cap: int = 0) -> list[object]:
        keys, args = duty_call(self.keys, action, member, lease, cap)
        reply: list[object] = self._duty(keys=keys, args=args)
        return reply

    def join(self, run_id: str, lease: float, cap: int) -> str | None:
        """Take a place on duty for ``lease`` seconds: the member name, or None when
        ``cap`` runs are on duty already."""
        ok, member = self._call("join", run_id, lease, cap)
        return member.decode() if ok and isinstance(member, bytes) else None

    def renew(self, member: str, lease: float) -> int | None:
        """Keep the place: how many runs joined after this one, or None when it was lost."""
        ok, newer = self._call("renew", member, lease)
        return int(newer) if ok else None  # type: ignore[call-overload]

    def leave(self, member: str) -> None:
        self._call("leave", member, 0)

    def alive(self) -> None:
        """Note that a flush run is alive without a place (``check`` reads it)."""
        self._call("alive", "", 0)
