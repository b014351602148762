"""The Redis buffer: push, claim under a lease, settle, retries, dead letters, breaker, stats.

No HTTP here (the flusher sends). Every multi-step change is one Lua script, so a crash
between two steps cannot lose or double a record. Keys, all in one Redis Cluster slot
thanks to the ``{prefix}`` hash tag::

    {p}:pending      LIST   records waiting to be sent (FIFO: RPUSH, LPOP)
    {p}:claims       ZSET   claim id -> lease deadline (Redis TIME, seconds)
    {p}:claim:<id>   LIST   the records one flusher is sending right now
    {p}:settled:<id> STRING a settled claim's tombstone, for a minute (see SETTLE_LUA)
    {p}:inflight     STRING how many records sit in claims (for stats and the bound)
    {p}:retry        ZSET   record -> when it is due again
    {p}:dead         LIST   dead letters, newest first; they count toward the bound
    {p}:breaker      HASH   the circuit breaker shared by every flusher
    {p}:journal      ZSET   direct-path records -> when to send them here if their task
                            went silent (a broker message lost; see ``journal``)
    {p}:journal_expires ZSET journal records of tasks published with ``expires`` ->
                            when they expire (never sent from the journal after that)
    {p}:metrics      HASH   counters, histograms and the last flush run's time, kept by
                            the scripts (see ``counters``)

A record is the event's JSON exactly as it will be sent. A record that has failed
before carries its attempt count as a prefix, ``b"3|{...}"``: records start with
``{``, so the prefix is unambiguous and the flusher strips it without parsing JSON.
Dead letters are in ``policy``'s format; the scripts, and the breaker's state machine,
are in ``scripts``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis

from .. import defaults
from ..delivery.dead_letters import DeadLetter, parse_dead_letter
from ..delivery.decisions import Verdict
from ..delivery.tally import PAST_WINDOW, Tally
from ..events.records import record_time, split_item
from ..exceptions import BufferFullError, ReplicationError
from . import scripts as lua
from .accept_connections import ProducerLane
from .eviction import PolicyCheck, describe_redis, read_memory_info

__all__ = ["Claim", "ClaimMode", "RedisBuffer", "check_push"]

logger = logging.getLogger(__name__)

ClaimMode = Literal["ok", "probe", "open"]
"""``ok``; ``probe`` when the claim is the breaker's probe; ``open`` when it refused."""


@dataclass(slots=True)
class Claim:
    """Records one flusher owns until it settles them or its lease runs out.

    ``mode`` is ``"ok"``; ``"probe"`` when this claim is the breaker's probe; ``"open"``
    when the breaker refused (``wait`` seconds left, no records).
    """

    id: str
    mode: ClaimMode
    wait: float
    items: list[bytes]


def check_push(result: Any, max_length: int, count: int) -> int:
    """The push script's reply as the new pending length; ``BufferFullError`` for -1."""
    if result == -1:
        raise BufferFullError(
            f"the buffer holds suprsend_buffer_max_length={max_length} records, dead "
            f"letters included; {count} event(s) were not accepted (is flush_buffer "
            "running? are dead letters piling up: suprsend-celery dead-letters list)"
        )
    return int(result)


class RedisBuffer:
    """The buffer's Redis operations, each one round trip (one Lua script or pipeline)."""

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        *,
        prefix: str = defaults.KEY_PREFIX,
        max_length: int = defaults.BUFFER_MAX_LENGTH,
        breaker_threshold: int = defaults.BREAKER_THRESHOLD,
        breaker_cooldown: float = defaults.BREAKER_COOLDOWN,
        breaker_cooldown_max: float = defaults.BREAKER_COOLDOWN_MAX,
        accept_timeout: float = defaults.ACCEPT_TIMEOUT,
        min_replicas: int = defaults.BUFFER_MIN_REPLICAS,
        policy_recheck: float = defaults.POLICY_RECHECK_SECONDS,
    ) -> None:
        self.redis = client
        self.accept_timeout = accept_timeout
        self.min_replicas = min_replicas
        self.prefix = prefix
        self.max_length = max_length
        self.breaker_threshold = breaker_threshold
        self.breaker_cooldown = breaker_cooldown
        self.breaker_cooldown_max = breaker_cooldown_max
        tag = "{" + prefix + "}"
        self.pending_key = f"{tag}:pending"
        self.claims_key = f"{tag}:claims"
        self.claim_prefix = f"{tag}:claim:"
        self.settled_prefix = f"{tag}:settled:"
        self.inflight_key = f"{tag}:inflight"
        self.retry_key = f"{tag}:retry"
        self.dead_key = f"{tag}:dead"
        self.breaker_key = f"{tag}:breaker"
        self.journal_key = f"{tag}:journal"
        self.journal_expires_key = f"{tag}:journal_expires"
        self.metrics_key = f"{tag}:metrics"
        self._lane = ProducerLane(client, self.pending_key, accept_timeout)
        #: Refuses accepting into a Redis that may evict our keys (read once a minute).
        self.policy_check = PolicyCheck(interval=policy_recheck)
        self._push = client.register_script(lua.PUSH_LUA)
        self._claim = client.register_script(lua.CLAIM_LUA)
        self._settle = client.register_script(lua.SETTLE_LUA)
        self._extend = client.register_script(lua.EXTEND_LUA)
        self._requeue = client.register_script(lua.REQUEUE_LUA)
        self._rehome = client.register_script(lua.REHOME_LUA)
        self._journal = client.register_script(lua.JOURNAL_LUA)
        self._recover_journal = client.register_script(lua.RECOVER_JOURNAL_LUA)
        self._settle_journal = client.register_script(lua.SETTLE_JOURNAL_LUA)
        self._finish_run = client.register_script(lua.FINISH_RUN_LUA)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisBuffer:
        client = redis.Redis.from_url(
            url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
        )
        return cls(client, **kwargs)

    # -- producers ---------------------------------------------------------------

    def push(self, records: Sequence[bytes]) -> int:
        """Append records in one atomic step; ``BufferFullError`` (nothing added) if full,
        ``BufferUnavailableError`` if Redis fails or does not answer in time, and
        ``ReplicationError`` (added, not confirmed) when fewer than ``min_replicas``
        replicas confirm them within a quarter of ``accept_timeout``, and
        ``ConfigurationError`` when this Redis may evict keys (see ``redis_policy``)."""
        if not records:
            return 0
        self._check_policy()
        call = lua.push_call(self, self.max_length, records)
        result, acked = self._lane.call(self._push, call, replicas=self.min_replicas)
        pushed = check_push(result, self.max_length, len(records))
        if acked < self.min_replicas:
            raise ReplicationError(
                f"{len(records)} event(s) reached the Redis master, but only {acked} of "
                f"suprsend_buffer_min_replicas={self.min_replicas} replica(s) confirmed them "
                f"within {self._lane.wait_seconds:g}s; they will most likely be sent, "
                "and calling again with the same idempotency keys is safe",
                replicas=acked,
                required=self.min_replicas,
            )
        return pushed

    # -- flushers ----------------------------------------------------------------

    def claim(
        self,
        count: int,
        lease: float,
        *,
        probe_lease: float = defaults.PROBE_LEASE,
        use_breaker: bool = True,
    ) -> Claim:
        """Atomically take up to ``count`` records under a lease (after recovering expired ones).

        ``use_breaker=False``: the caller already passed the breaker (a sharded buffer's).
        """
        claim_id = uuid.uuid4().hex
        keys, args = lua.claim_call(
            self, claim_id, count, lease, probe_lease, use_breaker=use_breaker
        )
        reply = self._claim(keys=keys, args=args)
        mode: ClaimMode = reply[0].decode()
        return Claim(claim_id, mode, float(reply[1]), reply[2:])

    def extend(self, claim_id: str, lease: float) -> bool:
        """Push a claim's deadline out; False if the lease already ran out."""
        keys, args = lua.extend_call(self, claim_id, lease)
        return bool(self._extend(keys=keys, args=args))

    def settle(
        self,
        claim_id: str,
        *,
        retries: Sequence[tuple[float, bytes]] = (),
        dead: Sequence[bytes] = (),
        back: Sequence[bytes] = (),
        verdict: Verdict = "",
        open_for: float = 0.0,
        reason: str = "",
        counts: Tally | None = None,
    ) -> lua.Settled:
        """Finish a claim in one step: drop the sent records, schedule retries, dead-letter.

        ``back`` returns records to the head of pending untouched (a request never
        reached SuprSend's judgement, e.g. wrong credentials). ``verdict`` feeds the
        breaker; ``counts`` (the claim's requests) go to the metrics hash in the same
        step, which also counts the records' outcomes. Returns False when the lease
        had run out: the records were already returned to pending and will be re-sent,
        deduplicated by their keys. ``.change`` says how it moved the breaker.
        """
        keys, args = lua.settle_call(
            self,
            claim_id,
            breaker=lua.Breaker(
                self.breaker_threshold, self.breaker_cooldown, self.breaker_cooldown_max
            ),
            retries=retries,
            dead=dead,
            back=back,
            verdict=verdict,
            open_for=open_for,
            reason=reason,
            counts=counts,
        )
        return lua.settled_reply(self._settle(keys=keys, args=args))

    # -- direct path -------------------------------------------------------------

    def _check_policy(self) -> None:
        self.policy_check.enforce(self._lane.run, lambda: describe_redis(self._lane.node_client()))

    def memory_info(self) -> dict[str, Any]:
        """This Redis's ``maxmemory_policy``, ``maxmemory`` and ``used_memory`` (``status``)."""
        return read_memory_info(self._lane.node_client())

    def dead_letter(self, entry: bytes) -> None:
        """Keep a record that will not be delivered without help (never trimmed: dead
        letters count toward ``max_length`` instead, see ``push``)."""
        self._lane.node_client().lpush(self.dead_key, entry)

    def rehome(self, record: bytes, entry: bytes) -> bool:
        """Move a record into pending (True), or dead-letter it when the buffer is full."""
        keys, args = lua.rehome_call(self, self.max_length, record, entry)
        result = self._rehome(keys=keys, args=args)
        return int(result) == 1

    def finish_run(self, counts: Tally) -> int:
        """Note the end of a flush run and count it; returns ``remaining()``, same trip."""
        keys, args = lua.finish_run_call(self, counts)
        return int(self._finish_run(keys=keys, args=args))

    def journal(
        self,
        record: bytes,
        seconds: float,
        counts: Tally | None = None,
        expires_in: float | None = None,
    ) -> None:
        """Keep a published direct-path record here until its task settles it.

        Celery's Redis transport pops a message (BRPOP) before it notes it as
        unacknowledged, so a worker or Redis killed in between loses the message. A
        record still here ``seconds`` after it was published (the broker's visibility
        timeout, plus any countdown) is sent by the flusher instead; if the task did
        run after all, SuprSend skips the repeat by its idempotency key. ``counts``
        are the metrics of the attempt this publish retries. A task published with
        ``expires`` passes ``expires_in``: once that has passed, the entry is dropped
        instead of sent, as Celery would discard the message.
        """
        call = lua.journal_call(self, record, seconds, counts, expires_in)
        self._check_policy()
        self._lane.call(self._journal, call)

    def reschedule_journal(self, record: bytes, seconds: float) -> None:
        """Make a journal entry due in ``seconds`` (a worker's connections, not a view's:
        its task could not publish a retry, so the flusher is to send it then)."""
        keys, args = lua.journal_call(self, record, seconds)
        self._journal(keys=keys, args=args)

    def settle_journal(self, record: bytes, counts: Tally | None = None) -> None:
        """The task settled this record (sent, dead-lettered or moved to pending)."""
        keys, args = lua.settle_journal_call(self, record, counts)
        self._settle_journal(keys=keys, args=args)

    def recover_journal(self, limit: int = defaults.JOURNAL_RECOVER_LIMIT) -> int:
        """Move journal records whose task went silent to pending; returns how many.

        Those whose task expired meanwhile are dropped (and logged), not sent.
        """
        keys, args = lua.recover_journal_call(self, limit)
        moved, dropped = self._recover_journal(keys=keys, args=args)
        if dropped:
            logger.warning(
                "%d direct-path record(s) expired (Celery expires) before any worker ran "
                "their task; dropped from the journal, not sent",
                dropped,
            )
        return int(moved)

    # -- dead letters --------------------------------------------------------------

    def _dead_raw(self, start: int = 0, end: int = -1) -> list[bytes]:
        raw: list[bytes] = self.redis.lrange(self.dead_key, start, end)  # type: ignore[assignment]
        return raw

    def dead_letters(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Dead letters, newest first."""
        return [parse_dead_letter(r) for r in self._dead_raw(offset, offset + max(limit, 1) - 1)]

    def requeue_dead_letters(self, idempotency_keys: Iterable[str] | None = None) -> int:
        """Send dead letters again (all, or those with these keys), attempts reset."""
        if idempotency_keys is None:
            keys, args = lua.requeue_call(self, None)
            return int(self._requeue(keys=keys, args=args))
        wanted = set(idempotency_keys)
        if not wanted:
            return 0
        entries = [
            raw
            for raw in self._dead_raw()
            if (parse_dead_letter(raw).idempotency_key or "") in wanted
        ]
        if not entries:
            return 0
        keys, args = lua.requeue_call(self, entries)
        return int(self._requeue(keys=keys, args=args))

    def purge_dead_letters(self, idempotency_keys: Iterable[str] | None = None) -> int:
        """Drop dead letters (all, or those with these keys); returns how many."""
        if idempotency_keys is None:
            pipe = self._lane.node_client().pipeline()
            pipe.llen(self.dead_key)
            pipe.delete(self.dead_key)
            count, _ = pipe.execute()
            return int(count)
        wanted = set(idempotency_keys)
        removed = 0
        for raw in self._dead_raw():
            if (parse_dead_letter(raw).idempotency_key or "") in wanted:
                removed += int(self.redis.lrem(self.dead_key, 1, raw))  # type: ignore[arg-type]
        return removed

    # -- inspection ----------------------------------------------------------------

    def parts(self) -> list[RedisBuffer]:
        """The single-slot buffers this one is made of: itself (a sharded one: its shards)."""
        return [self]

    def pipeline(self) -> Any:
        """A pipeline (no MULTI) on the server or cluster node holding this buffer's slot."""
        return self._lane.node_client().pipeline(transaction=False)

    def pending_count(self) -> int:
        return int(self.redis.llen(self.pending_key))

    def remaining(self) -> int:
        """Records not yet delivered nor dead: pending, in flight and scheduled for retry."""
        pipe = self._lane.node_client().pipeline(transaction=False)
        pipe.llen(self.pending_key)
        pipe.get(self.inflight_key)
        pipe.zcard(self.retry_key)
        pending, inflight, retries = pipe.execute()
        return int(pending) + int(inflight or 0) + int(retries)

    def stats(self) -> dict[str, Any]:
        """The ``buffer_stats()`` figures (README, Quick start), read in one pipeline."""
        pipe = self._lane.node_client().pipeline(transaction=False)
        pipe.llen(self.pending_key)
        pipe.get(self.inflight_key)
        pipe.zcard(self.retry_key)
        pipe.llen(self.dead_key)
        pipe.lindex(self.pending_key, 0)
        pipe.zrange(self.claims_key, 0, 0)
        pipe.zrange(self.retry_key, 0, 0)
        pipe.hgetall(self.breaker_key)
        pipe.hget(self.metrics_key, PAST_WINDOW)
        pipe.time()
        (pending, inflight, retries, dead, head, oldest_claim, first_retry, breaker, late, now) = (
            pipe.execute()
        )
        now = float(now[0]) + float(now[1]) / 1e6
        # Approximately the oldest record: the head of pending, the first record of the
        # claim due back first and the retry due first (records keep their $time).
        candidates = [head] if head else []
        candidates.extend(first_retry)
        if oldest_claim:
            first = self.redis.lindex(self.claim_prefix + oldest_claim[0].decode(), 0)
            if first:
                candidates.append(first)
        times = (record_time(split_item(c)[1]) for c in candidates)
        oldest_ms = [t for t in times if t is not None]
        oldest_age = max(0.0, time.time() - min(oldest_ms) / 1000) if oldest_ms else 0.0
        state = lua.breaker_state(breaker, now)
        return {
            "pending": int(pending),
            "in_flight": max(0, int(inflight or 0)),
            "scheduled_retries": int(retries),
            "sent_past_dedup_window": int(late or 0),
            "dead": int(dead),
            "oldest_age_seconds": round(oldest_age, 3),
            "breaker": state,
        }

    def breaker(self) -> dict[str, Any]:
        """The breaker's state with its reason and seconds until the next probe."""
        pipe = self._lane.node_client().pipeline(transaction=False)
        pipe.hgetall(self.breaker_key)
        pipe.time()
        raw, now_pair = pipe.execute()
        now = float(now_pair[0]) + float(now_pair[1]) / 1e6
        until = float(raw.get(b"until", 0) or 0)
        return {
            "state": lua.breaker_state(raw, now),
            "failures": int(raw.get(b"failures", 0) or 0),
            "reason": raw.get(b"reason", b"").decode("utf-8", "replace"),
            "retry_in": round(max(0.0, until - now), 3),
        }

    def reset_breaker(self) -> None:
        self.redis.delete(self.breaker_key)

    def clear(self) -> None:
        """Delete every key of this buffer (tests and ``dead-letters purge`` helpers)."""
        keys = list(self.redis.scan_iter(match=self.claim_prefix + "*", count=1000))
        keys += self.redis.scan_iter(match=self.settled_prefix + "*", count=1000)
        keys += [
            self.pending_key,
            self.claims_key,
            self.inflight_key,
            self.retry_key,
            self.dead_key,
            self.breaker_key,
            self.journal_key,
            self.journal_expires_key,
            self.metrics_key,
        ]
        self.redis.delete(*keys)
