"""One push into one shard, decided once for every client that runs it.

A push decides three things around its round trips: whether the Redis's eviction
policy is due for a reading (and refuses an evicting one, see ``eviction``), the push
script's keys and arguments, and what the script's reply means (the new pending length,
or ``BufferFullError``). ``PushPlan`` holds those decisions and does no I/O; a client
runs it, so the sync and the async push differ only in how each round trip is made::

    plan = PushPlan(queue, records)
    if plan.reading_due():
        plan.take_reading(where, memory_info)      # INFO memory, on this client
    reply = run(PUSH, plan.call())                 # the one round trip that pushes
    return plan.pushed(reply)

``queue.Queue.push`` runs it on the producers' own connections (``ProducerConnections``,
with ``WAIT`` for replicas in the same round trip); ``AsyncBuffer`` (``async_push``) on
``redis.asyncio``. They differ in one more way: an ACL that refuses ``INFO`` fails a
sync push (``BufferUnavailableError``, as any failure on those connections), while the
async push takes it as "cannot tell", warns and pushes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..exceptions import BufferFullError
from . import scripts as lua
from .eviction import PolicyCheck
from .keys import Keys

__all__ = ["PushPlan", "PushTarget", "check_push"]


def check_push(result: Any, max_length: int, count: int) -> int:
    """The push script's reply as the new pending length; ``BufferFullError`` for -1."""
    if result == -1:
        raise BufferFullError(
            f"the buffer holds suprsend_buffer_max_length={max_length} records, dead "
            f"letters included; {count} event(s) were not accepted (is flush_buffer "
            "running? are dead letters piling up: suprsend-celery dead-letters list)"
        )
    return int(result)


class PushTarget(Protocol):
    """What a push needs of a shard (``queue.Queue``): its key names, its bound and its
    policy check."""

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
        self.target.policy_check.update(where, memory_info)

    def call(self) -> lua.Call:
        """The push script's keys and arguments; ``ConfigurationError`` instead when the
        last reading found a policy that may evict the buffer's keys."""
        self.target.policy_check.refuse()
        return lua.push_call(self.target.keys, self.target.max_length, self.records)

    def pushed(self, reply: Any) -> int:
        """The script's reply as the new pending length; ``BufferFullError`` when full."""
        return check_push(reply, self.target.max_length, len(self.records))
