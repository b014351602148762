"""The buffer's Redis key names, defined once: one ``Keys`` per shard's hash tag.

Every key of a shard carries the hash tag ``{prefix}``, so they all live in one Redis
Cluster slot and one script may touch several. Shard 0 is ``{prefix}`` (a buffer that
was never sharded is shard 0 as it stands), shard ``i`` is ``{prefix:i}``::

    {p}:pending      LIST   records waiting to be sent (FIFO: RPUSH, LPOP)
    {p}:claims       ZSET   claim id -> lease deadline (Redis TIME, seconds)
    {p}:claim:<id>   LIST   the records one flusher is sending right now
    {p}:settled:<id> STRING a settled claim's tombstone, for a minute (see settle.lua)
    {p}:inflight     STRING how many records sit in claims (for stats and the bound)
    {p}:retry        ZSET   record -> when it is due again
    {p}:dead         LIST   dead letters, newest first; they count toward the bound
    {p}:breaker      HASH   the circuit breaker shared by every flusher (``breaker``)
    {p}:concurrency  HASH   the requests in flight every flusher shares (shard 0's only;
                            ``concurrency_limit``)
    {p}:flushers     ZSET   flushers sharing it -> when they last merged (shard 0's only)
    {p}:journal      ZSET   direct-path records -> when to send them here if their task
                            went silent (a broker message lost; see ``journal``)
    {p}:journal_expires ZSET journal records of tasks published with ``expires`` ->
                            when they expire (never sent from the journal after that)
    {p}:journal_taken ZSET  SHA1 of each record the flusher took over from the journal ->
                            when (a redelivery of its task then skips it; ``journal``)
    {p}:metrics      HASH   counters, histograms and the last flush run's time, kept by
                            the scripts (see ``delivery.tally``)
    {p}:shards       SET    every shard index ever used (shard 0's only; ``sharded``)
    {p}:outbox       HASH   the Django outbox's depth as its relay last saw it (shard 0's
                            only; ``outbox_figures``)
    {p}:wake         LIST   at most one token: records became claimable here since a
                            waiting flush run last looked (``wake``; BLPOP wakes it)
    {p}:duty         ZSET   flush runs on duty, waiting for records -> lease deadline
                            (shard 0's only; ``wake.DutyRoster``)

A record is the event's JSON exactly as it will be sent. A record that has failed
before carries its attempt count as a prefix, ``b"3|{...}"``: records start with
``{``, so the prefix is unambiguous and the flusher strips it without parsing JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["KINDS", "Keys", "registry_key", "shard_prefix", "stored_number"]


#: The Redis type each key of a fixed name holds (``TYPE`` answers), as listed above.
KINDS = {
    "pending": "list",
    "claims": "zset",
    "inflight": "string",
    "retry": "zset",
    "dead": "list",
    "breaker": "hash",
    "concurrency": "hash",
    "flushers": "zset",
    "journal": "zset",
    "journal_expires": "zset",
    "journal_taken": "zset",
    "metrics": "hash",
    "shards": "set",
    "outbox": "hash",
    "wake": "list",
    "duty": "zset",
}


def stored_number(raw: bytes | None, default: float = 0) -> float:
    """A number our keys hold (a counter, a time), ``default`` when absent or not a
    number: anything can be written into Redis, and no value stops a reader."""
    try:
        number = default if raw is None else float(raw)
    except ValueError:
        return default
    return number if math.isfinite(number) else default


def shard_prefix(prefix: str, index: int) -> str:
    """The key prefix (hash tag) of shard ``index``: ``prefix`` itself for shard 0."""
    return prefix if index == 0 else f"{prefix}:{index}"


def registry_key(prefix: str) -> str:
    """The SET of every shard index ever used, in shard 0's slot."""
    return Keys.of(prefix).shards


@dataclass(frozen=True, slots=True)
class Keys:
    """The key names of one shard (build with ``Keys.of``)."""

    prefix: str
    pending: str
    claims: str
    #: ``claim(id)`` is this plus the id; CLAIM gets it too, to find expired claims.
    claim_prefix: str
    settled_prefix: str
    inflight: str
    retry: str
    dead: str
    breaker: str
    #: The shared concurrency limit and its flushers: shard 0 only (``concurrency_limit``).
    concurrency: str
    flushers: str
    journal: str
    journal_expires: str
    journal_taken: str
    metrics: str
    #: The shard registry: used on shard 0 only (``registry_key``).
    shards: str
    #: The Django outbox's depth as its relay last saw it: shard 0 only (``outbox_figures``).
    outbox: str
    #: One token when records became claimable: what a waiting flush run blocks on.
    wake: str
    #: The runs on duty: used on shard 0 only.
    duty: str

    @classmethod
    def of(cls, prefix: str, shard: int = 0) -> Keys:
        """The keys of ``prefix``'s shard ``shard`` (0: the unsharded buffer's)."""
        tag = "{" + shard_prefix(prefix, shard) + "}"
        return cls(
            prefix=shard_prefix(prefix, shard),
            pending=f"{tag}:pending",
            claims=f"{tag}:claims",
            claim_prefix=f"{tag}:claim:",
            settled_prefix=f"{tag}:settled:",
            inflight=f"{tag}:inflight",
            retry=f"{tag}:retry",
            dead=f"{tag}:dead",
            breaker=f"{tag}:breaker",
            concurrency=f"{tag}:concurrency",
            flushers=f"{tag}:flushers",
            journal=f"{tag}:journal",
            journal_expires=f"{tag}:journal_expires",
            journal_taken=f"{tag}:journal_taken",
            metrics=f"{tag}:metrics",
            shards=f"{tag}:shards",
            outbox=f"{tag}:outbox",
            wake=f"{tag}:wake",
            duty=f"{tag}:duty",
        )

    def __hash__(self) -> int:
        # Every name follows from the prefix: equal keys have equal prefixes. Hashed once
        # per accept (the push's key list is cached per shard), so one field, not 19.
        return hash(self.prefix)

    def claim(self, claim_id: str) -> str:
        """The LIST of one claim's records."""
        return self.claim_prefix + claim_id

    def settled(self, claim_id: str) -> str:
        """The tombstone of one settled claim."""
        return self.settled_prefix + claim_id

    def fixed(self) -> tuple[str, ...]:
        """Every key of a fixed name but the registry (``clear`` deletes these)."""
        return (
            self.pending,
            self.claims,
            self.inflight,
            self.retry,
            self.dead,
            self.breaker,
            self.concurrency,
            self.flushers,
            self.journal,
            self.journal_expires,
            self.journal_taken,
            self.metrics,
            self.outbox,
            self.wake,
            self.duty,
        )

    def kinds(self) -> tuple[tuple[str, str], ...]:
        """Every key of a fixed name with the Redis type it holds (``KINDS``)."""
        return tuple((getattr(self, field), kind) for field, kind in KINDS.items())
