"""One push into one single-slot buffer, decided once for every client that runs it.

A push decides three things around its round trips: whether the Redis's eviction
policy is due for a reading (and refuses an evicting one, see ``eviction``), the push
script's keys and arguments, and what the script's reply means (the new pending length,
or ``BufferFullError``). ``PushPlan`` holds those decisions and does no I/O; a client
runs it, so the sync and the async push differ only in how each round trip is waited
for::

    plan = PushPlan(buffer, records)
    if plan.reading_due():
        plan.take_reading(where, memory_info)      # INFO memory, on this client
    reply = run(PUSH, plan.call())                 # the one round trip that pushes
    return plan.pushed(reply)

``AsyncBuffer`` (``async_push``) runs it on ``redis.asyncio``. ``RedisBuffer.push``
takes the same steps on its producers' connections (``ProducerConnections``) through the same
pieces (``PolicyCheck``, ``push_call``, ``check_push``), plus ``WAIT`` for replicas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import scripts as lua
from .eviction import PolicyCheck
from .keys import Keys
from .queue import check_push

__all__ = ["PushPlan", "PushTarget"]


class PushTarget(Protocol):
    """What a push needs of a buffer: its key names, its bound and its policy check."""

    keys: Keys
    max_length: int
    policy_check: PolicyCheck


@dataclass(slots=True)
class PushPlan:
    """The decisions of one push of ``records`` into ``target`` (no I/O here)."""

    target: PushTarget
    records: Sequence[bytes]

    def reading_due(self) -> bool:
        """Whether the client is to read ``INFO memory`` first (once a minute, not per push)."""
        return self.target.policy_check.due()

    def take_reading(self, where: str, memory_info: Mapping[str, Any]) -> None:
        """Note the reading (empty when Redis refused ``INFO``); ``where`` names the Redis
        in a refusal's message."""
        check = self.target.policy_check
        check.where = where
        check.update(memory_info)

    def call(self) -> lua.Call:
        """The push script's keys and arguments; ``ConfigurationError`` instead when the
        last reading found a policy that may evict the buffer's keys."""
        self.target.policy_check.refuse()
        return lua.push_call(self.target.keys, self.target.max_length, self.records)

    def pushed(self, reply: Any) -> int:
        """The script's reply as the new pending length; ``BufferFullError`` when full."""
        return check_push(reply, self.target.max_length, len(self.records))
