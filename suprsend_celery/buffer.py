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
    {p}:dead         LIST   dead letters, newest first, trimmed to DEAD_LETTER_MAX
    {p}:breaker      HASH   the circuit breaker shared by every flusher
    {p}:journal      ZSET   direct-path records -> when to send them here if their task
                            went silent (a broker message lost; see ``journal``)

A record is the event's JSON exactly as it will be sent. A record that has failed
before carries its attempt count as a prefix, ``b"3|{...}"``: records start with
``{``, so the prefix is unambiguous and the flusher strips it without parsing JSON.
A dead letter is a JSON header, a newline, then the record, so requeueing restores
the original bytes (Lua's cjson would reorder keys).

Time always comes from Redis (``TIME``), so flushers on hosts with skewed clocks
agree on leases and due times.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.commands.core import Script

from . import defaults
from .exceptions import BufferFullError

__all__ = ["Claim", "DeadLetter", "RedisBuffer", "split_item"]

logger = logging.getLogger(__name__)

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n"

# KEYS: pending, inflight, retry
# ARGV: max_length, record...
# Accepts all records or none; returns the new pending length, or -1 when full.
PUSH_LUA = """
local n = #ARGV - 1
local held = redis.call('LLEN', KEYS[1]) + tonumber(redis.call('GET', KEYS[2]) or '0')
    + redis.call('ZCARD', KEYS[3])
if held + n > tonumber(ARGV[1]) then return -1 end
local len = 0
for i = 2, #ARGV, 1000 do
    len = redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return len
"""

# KEYS: pending, claims, claim key, inflight, retry, breaker
# ARGV: count, lease seconds, claim id, claim key prefix, probe lease seconds
# First returns expired claims and due retries to pending, then consults the breaker,
# then moves up to `count` records into a new claim.
# Returns {mode, wait, record...}: mode 'ok' | 'probe' | 'open' (wait = seconds left).
# Idempotent per claim id: redis-py re-sends a command after a connection error or a
# timeout, and a second run must hand back the same records rather than take more
# (which the flusher would never see, yet settle would delete).
CLAIM_LUA = (
    _NOW
    + """
if redis.call('TYPE', KEYS[3]).ok == 'list' then
    local out = {'ok', '0'}
    for _, item in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do out[#out + 1] = item end
    return out
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 50)
for _, id in ipairs(expired) do
    local key = ARGV[4] .. id
    local items = redis.call('LRANGE', key, 0, -1)
    for i = #items, 1, -1 do redis.call('LPUSH', KEYS[1], items[i]) end
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[2], id)
    redis.call('DECRBY', KEYS[4], #items)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 1000)
if #due > 0 then
    for i = 1, #due, 1000 do
        redis.call('RPUSH', KEYS[1], unpack(due, i, math.min(i + 999, #due)))
        redis.call('ZREM', KEYS[5], unpack(due, i, math.min(i + 999, #due)))
    end
end
local mode = 'ok'
local state = redis.call('HGET', KEYS[6], 'state')
if state == 'open' or state == 'half_open' then
    local until_ = tonumber(redis.call('HGET', KEYS[6], 'until') or '0')
    if now < until_ then return {'open', tostring(until_ - now)} end
    redis.call('HSET', KEYS[6], 'state', 'half_open', 'until', now + tonumber(ARGV[5]))
    mode = 'probe'
end
local count = tonumber(ARGV[1])
if mode == 'probe' then count = math.min(count, 10) end
local items = redis.call('LPOP', KEYS[1], count)
if not items then
    if mode == 'probe' then redis.call('HSET', KEYS[6], 'state', 'open', 'until', now) end
    return {mode, '0'}
end
redis.call('RPUSH', KEYS[3], unpack(items))
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
redis.call('INCRBY', KEYS[4], #items)
local out = {mode, '0'}
for i = 1, #items do out[i + 2] = items[i] end
return out
"""
)

# KEYS: claims, claim key, inflight, retry, dead, pending, breaker, settled key
# ARGV: claim id, dead max, n_retry, n_dead, n_back, breaker verdict, breaker threshold,
#       cooldown, cooldown max, open-for floor, reason,
#       then n_retry pairs (delay, item), n_dead entries, n_back items.
# breaker verdict: 'ok' (SuprSend answered), 'fail' (a whole-request failure), 'auth',
# or '' (no evidence either way).
# Returns -1 if the lease was lost (the records are already back in pending), else 1.
# A settled claim leaves a short-lived tombstone, so a re-sent SETTLE (redis-py retries
# after a connection error) answers 1 again instead of "lease lost" and does not feed
# the breaker twice.
SETTLE_LUA = (
    _NOW
    + """
local function breaker(verdict)
    if verdict == '' then return end
    local b = KEYS[7]
    if verdict == 'ok' then
        local state, fails = unpack(redis.call('HMGET', b, 'state', 'failures'))
        if (state and state ~= 'closed') or (fails and fails ~= '0') then
            redis.call('HSET', b, 'state', 'closed', 'failures', 0, 'cooldown', ARGV[8],
                'until', 0, 'reason', '')
        end
        return
    end
    local fails = redis.call('HINCRBY', b, 'failures', 1)
    local state = redis.call('HGET', b, 'state') or 'closed'
    local cooldown = tonumber(redis.call('HGET', b, 'cooldown') or ARGV[8])
    local threshold = tonumber(ARGV[7])
    local floor = tonumber(ARGV[10])
    local open_for
    if state == 'half_open' then
        -- the probe (or a straggler) failed: open again, for longer
        cooldown = math.min(cooldown * 2, tonumber(ARGV[9]))
        open_for = math.max(cooldown, floor)
    elseif state == 'closed' then
        if fails >= threshold or verdict == 'auth' then
            cooldown = tonumber(ARGV[8])
            open_for = math.max(cooldown, floor)
        elseif floor > 0 then
            -- a Retry-After alone pauses exactly as long as the server asked
            cooldown = tonumber(ARGV[8])
            open_for = floor
        else
            return
        end
    else
        -- already open: a longer Retry-After pushes the next probe out, never in
        local until_ = tonumber(redis.call('HGET', b, 'until') or '0')
        if now + floor > until_ then redis.call('HSET', b, 'until', now + floor) end
        if verdict == 'auth' then redis.call('HSET', b, 'reason', ARGV[11]) end
        return
    end
    redis.call('HSET', b, 'state', 'open', 'until', now + open_for, 'cooldown', cooldown,
        'reason', ARGV[11], 'opened_at', now)
end

if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
    if redis.call('EXISTS', KEYS[8]) == 1 then return 1 end
    breaker(ARGV[6])
    return -1
end
redis.call('DECRBY', KEYS[3], redis.call('LLEN', KEYS[2]))
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[8], '1', 'EX', 60)
local i = 12
for _ = 1, tonumber(ARGV[3]) do
    redis.call('ZADD', KEYS[4], now + tonumber(ARGV[i]), ARGV[i + 1])
    i = i + 2
end
local n_dead = tonumber(ARGV[4])
for _ = 1, n_dead do
    redis.call('LPUSH', KEYS[5], ARGV[i])
    i = i + 1
end
if n_dead > 0 then redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[2]) - 1) end
local back = {}
for _ = 1, tonumber(ARGV[5]) do
    back[#back + 1] = ARGV[i]
    i = i + 1
end
for j = #back, 1, -1 do redis.call('LPUSH', KEYS[6], back[j]) end
breaker(ARGV[6])
return 1
"""
)

# KEYS: claims
# ARGV: claim id, lease seconds. Returns 1 if the claim is still ours (lease extended).
EXTEND_LUA = (
    _NOW
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

# KEYS: dead, pending
# ARGV: count (0 = every letter), then optional exact entries to requeue.
# Moves the record part of each entry back to pending with its attempts reset.
REQUEUE_LUA = """
local moved = 0
local function requeue(entry)
    local nl = string.find(entry, '\\n', 1, true)
    if nl then
        redis.call('RPUSH', KEYS[2], string.sub(entry, nl + 1))
        moved = moved + 1
    end
end
if #ARGV > 1 then
    for i = 2, #ARGV do
        if redis.call('LREM', KEYS[1], 1, ARGV[i]) > 0 then requeue(ARGV[i]) end
    end
    return moved
end
local limit = tonumber(ARGV[1])
while limit == 0 or moved < limit do
    local entry = redis.call('RPOP', KEYS[1])
    if not entry then break end
    requeue(entry)
end
return moved
"""

# KEYS: dead, pending, inflight, retry  ARGV: max_length, record, dead entry
# For the direct path: put a record into pending (when credentials are wrong) respecting
# the bound, or dead-letter it when the bound is reached. Returns 1 pending, 0 dead.
REHOME_LUA = """
local held = redis.call('LLEN', KEYS[2]) + tonumber(redis.call('GET', KEYS[3]) or '0')
    + redis.call('ZCARD', KEYS[4])
if held < tonumber(ARGV[1]) then
    redis.call('RPUSH', KEYS[2], ARGV[2])
    return 1
end
redis.call('LPUSH', KEYS[1], ARGV[3])
return 0
"""

# KEYS: journal  ARGV: seconds, record
# Notes a published direct-path record, due after ``seconds`` (Redis TIME).
JOURNAL_LUA = (
    _NOW
    + """
return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
"""
)

# KEYS: journal, pending  ARGV: limit
# Moves journal records that are due (their task never settled them) to pending.
# Returns how many moved.
RECOVER_JOURNAL_LUA = (
    _NOW
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #due == 0 then return 0 end
redis.call('RPUSH', KEYS[2], unpack(due))
redis.call('ZREM', KEYS[1], unpack(due))
return #due
"""
)


def split_item(item: bytes) -> tuple[int, bytes]:
    """``(attempts, record)`` of a stored item: ``b"3|{...}"`` or a bare ``b"{...}"``."""
    if item[:1] == b"{":
        return 0, item
    head, _, record = item.partition(b"|")
    return int(head), record


def join_item(attempts: int, record: bytes) -> bytes:
    return record if attempts <= 0 else b"%d|%s" % (attempts, record)


@dataclass(slots=True)
class Claim:
    """Records one flusher owns until it settles them or its lease runs out.

    ``mode`` is ``"ok"``; ``"probe"`` when this claim is the breaker's probe; ``"open"``
    when the breaker refused (``wait`` seconds left, no records).
    """

    id: str
    mode: str
    wait: float
    items: list[bytes]


@dataclass(slots=True)
class DeadLetter:
    """A record that will not be delivered without help, with why."""

    idempotency_key: str | None
    event: str | None
    error: str
    status_code: int | None
    attempts: int
    failed_at: float
    source: str
    #: The record as it will be re-sent; kept out of repr, since it holds properties.
    record: bytes = field(repr=False)
    raw: bytes = field(repr=False)

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - self.failed_at)

    def record_json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.record)
        return value


def dead_letter_entry(
    record: bytes,
    *,
    error: str,
    status_code: int | None,
    attempts: int,
    source: str,
    idempotency_key: str | None = None,
    event: str | None = None,
) -> bytes:
    """Serialise a dead letter: a JSON header (no properties), a newline, the record."""
    if idempotency_key is None or event is None:
        try:
            parsed = json.loads(record)
        except ValueError:
            parsed = {}
        idempotency_key = idempotency_key or parsed.get("$idempotency_key")
        event = event or parsed.get("event")
    header = {
        "idempotency_key": idempotency_key,
        "event": event,
        "error": error,
        "status_code": status_code,
        "attempts": attempts,
        "failed_at": round(time.time(), 3),
        "source": source,
    }
    return json.dumps(header, ensure_ascii=False).encode("utf-8") + b"\n" + record


def parse_dead_letter(raw: bytes) -> DeadLetter:
    head, _, record = raw.partition(b"\n")
    try:
        meta = json.loads(head)
    except ValueError:
        meta = {}
    return DeadLetter(
        idempotency_key=meta.get("idempotency_key"),
        event=meta.get("event"),
        error=str(meta.get("error", "")),
        status_code=meta.get("status_code"),
        attempts=int(meta.get("attempts") or 0),
        failed_at=float(meta.get("failed_at") or 0.0),
        source=str(meta.get("source", "")),
        record=record,
        raw=raw,
    )


class RedisBuffer:
    """The buffer's Redis operations, each one round trip (one Lua script or pipeline)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = defaults.KEY_PREFIX,
        max_length: int = defaults.BUFFER_MAX_LENGTH,
        dead_letter_max: int = defaults.DEAD_LETTER_MAX,
        breaker_threshold: int = defaults.BREAKER_THRESHOLD,
        breaker_cooldown: float = defaults.BREAKER_COOLDOWN,
        breaker_cooldown_max: float = defaults.BREAKER_COOLDOWN_MAX,
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.max_length = max_length
        self.dead_letter_max = dead_letter_max
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
        self._idle: deque[Any] = deque()
        self._idle_pid = os.getpid()
        self._push = client.register_script(PUSH_LUA)
        self._claim = client.register_script(CLAIM_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._extend = client.register_script(EXTEND_LUA)
        self._requeue = client.register_script(REQUEUE_LUA)
        self._rehome = client.register_script(REHOME_LUA)
        self._journal = client.register_script(JOURNAL_LUA)
        self._recover_journal = client.register_script(RECOVER_JOURNAL_LUA)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisBuffer:
        client = redis.Redis.from_url(
            url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
        )
        return cls(client, **kwargs)

    # -- producers ---------------------------------------------------------------

    def push(self, records: Sequence[bytes]) -> int:
        """Append records in one atomic step; ``BufferFullError`` (nothing added) if full."""
        if not records:
            return 0
        result = self._producer_call(
            self._push,
            [self.pending_key, self.inflight_key, self.retry_key],
            [self.max_length, *records],
        )
        if result == -1:
            raise BufferFullError(
                f"the buffer holds suprsend_buffer_max_length={self.max_length} records; "
                f"{len(records)} event(s) were not accepted (is flush_buffer running?)"
            )
        return int(result)

    def _producer_call(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run a script on a connection of our own: the producers' fast path.

        ``buffer_event`` runs in the caller's request, where redis-py's per-command
        machinery (pool checkout, retry and observability wrappers) costs about as
        much as the round trip itself. Idle connections wait in a deque (thread-safe
        pop/append), are rebuilt after a fork, and are dropped on any error; the call
        is then made the ordinary way, which reconnects, retries and loads the script
        when Redis lost it (a restart). That retry may append a record a second time
        if the first reply was lost, exactly as redis-py's own retry would; the copy
        carries the same idempotency key and SuprSend skips it.
        """
        if self._idle_pid != os.getpid():
            self._idle, self._idle_pid = deque(), os.getpid()
        try:
            conn = self._idle.pop()
        except IndexError:
            pool = self.redis.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)
        try:
            conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
            result = conn.read_response()
        except redis.exceptions.NoScriptError:
            self._idle.append(conn)  # the connection is fine; Redis lost the script
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()
        except BaseException:
            conn.disconnect()  # a reply may still be on its way: never reuse it
            raise
        else:
            self._idle.append(conn)
            return result
        return script(keys=keys, args=args)

    # -- flushers ----------------------------------------------------------------

    def claim(self, count: int, lease: float, *, probe_lease: float = 30.0) -> Claim:
        """Atomically take up to ``count`` records under a lease (after recovering expired ones)."""
        claim_id = uuid.uuid4().hex
        reply = self._claim(
            keys=[
                self.pending_key,
                self.claims_key,
                self.claim_prefix + claim_id,
                self.inflight_key,
                self.retry_key,
                self.breaker_key,
            ],
            args=[count, lease, claim_id, self.claim_prefix, probe_lease],
        )
        mode = reply[0].decode()
        return Claim(claim_id, mode, float(reply[1]), reply[2:])

    def extend(self, claim_id: str, lease: float) -> bool:
        """Push a claim's deadline out; False if the lease already ran out."""
        return bool(self._extend(keys=[self.claims_key], args=[claim_id, lease]))

    def settle(
        self,
        claim_id: str,
        *,
        retries: Sequence[tuple[float, bytes]] = (),
        dead: Sequence[bytes] = (),
        back: Sequence[bytes] = (),
        verdict: str = "",
        open_for: float = 0.0,
        reason: str = "",
    ) -> bool:
        """Finish a claim in one step: drop the sent records, schedule retries, dead-letter.

        ``back`` returns records to the head of pending untouched (a request never
        reached SuprSend's judgement, e.g. wrong credentials). ``verdict`` feeds the
        breaker. Returns False when the lease had run out: the records were already
        returned to pending and will be re-sent, deduplicated by their keys.
        """
        args: list[Any] = [
            claim_id,
            self.dead_letter_max,
            len(retries),
            len(dead),
            len(back),
            verdict,
            self.breaker_threshold,
            self.breaker_cooldown,
            self.breaker_cooldown_max,
            open_for,
            reason,
        ]
        for delay, item in retries:
            args.append(delay)
            args.append(item)
        args.extend(dead)
        args.extend(back)
        result = self._settle(
            keys=[
                self.claims_key,
                self.claim_prefix + claim_id,
                self.inflight_key,
                self.retry_key,
                self.dead_key,
                self.pending_key,
                self.breaker_key,
                self.settled_prefix + claim_id,
            ],
            args=args,
        )
        return int(result) == 1

    # -- direct path -------------------------------------------------------------

    def dead_letter(self, entry: bytes) -> None:
        pipe = self.redis.pipeline()
        pipe.lpush(self.dead_key, entry)
        pipe.ltrim(self.dead_key, 0, self.dead_letter_max - 1)
        pipe.execute()

    def rehome(self, record: bytes, entry: bytes) -> bool:
        """Move a record into pending (True), or dead-letter it when the buffer is full."""
        result = self._rehome(
            keys=[self.dead_key, self.pending_key, self.inflight_key, self.retry_key],
            args=[self.max_length, record, entry],
        )
        return int(result) == 1

    def journal(self, record: bytes, seconds: float) -> None:
        """Keep a published direct-path record here until its task settles it.

        Celery's Redis transport pops a message (BRPOP) before it notes it as
        unacknowledged, so a worker or Redis killed in between loses the message. A
        record still here ``seconds`` after it was published (the broker's visibility
        timeout, plus any countdown) is sent by the flusher instead; if the task did
        run after all, SuprSend skips the repeat by its idempotency key.
        """
        self._producer_call(self._journal, [self.journal_key], [seconds, record])

    def settle_journal(self, record: bytes) -> None:
        """The task settled this record (sent, dead-lettered or moved to pending)."""
        self.redis.zrem(self.journal_key, record)

    def recover_journal(self, limit: int = 1000) -> int:
        """Move journal records whose task went silent to pending; returns how many."""
        return int(self._recover_journal(keys=[self.journal_key, self.pending_key], args=[limit]))

    # -- dead letters --------------------------------------------------------------

    def _dead_raw(self, start: int = 0, end: int = -1) -> list[bytes]:
        raw: list[bytes] = self.redis.lrange(self.dead_key, start, end)  # type: ignore[assignment]
        return raw

    def dead_letters(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Dead letters, newest first."""
        return [parse_dead_letter(r) for r in self._dead_raw(offset, offset + max(limit, 1) - 1)]

    def requeue_dead_letters(self, idempotency_keys: Iterable[str] | None = None) -> int:
        """Send dead letters again (all, or those with these keys), attempts reset."""
        keys = [self.dead_key, self.pending_key]
        if idempotency_keys is None:
            return int(self._requeue(keys=keys, args=[0]))
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
        return int(self._requeue(keys=keys, args=[0, *entries]))

    def purge_dead_letters(self, idempotency_keys: Iterable[str] | None = None) -> int:
        """Drop dead letters (all, or those with these keys); returns how many."""
        if idempotency_keys is None:
            pipe = self.redis.pipeline()
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

    def pending_count(self) -> int:
        return int(self.redis.llen(self.pending_key))

    def remaining(self) -> int:
        """Records not yet delivered nor dead: pending, in flight and scheduled for retry."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(self.pending_key)
        pipe.get(self.inflight_key)
        pipe.zcard(self.retry_key)
        pending, inflight, retries = pipe.execute()
        return int(pending) + int(inflight or 0) + int(retries)

    def stats(self) -> dict[str, Any]:
        """The SPEC's ``buffer_stats()`` figures, read in one pipeline."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(self.pending_key)
        pipe.get(self.inflight_key)
        pipe.zcard(self.retry_key)
        pipe.llen(self.dead_key)
        pipe.lindex(self.pending_key, 0)
        pipe.zrange(self.claims_key, 0, 0)
        pipe.zrange(self.retry_key, 0, 0)
        pipe.hgetall(self.breaker_key)
        pipe.time()
        (pending, inflight, retries, dead, head, oldest_claim, first_retry, breaker, now_pair) = (
            pipe.execute()
        )
        now = float(now_pair[0]) + float(now_pair[1]) / 1e6
        # Approximately the oldest record: the head of pending, the first record of the
        # claim due back first and the retry due first (records keep their $time).
        candidates = [head] if head else []
        candidates.extend(first_retry)
        if oldest_claim:
            first = self.redis.lindex(self.claim_prefix + oldest_claim[0].decode(), 0)
            if first:
                candidates.append(first)
        oldest_ms = [t for t in (_record_time(c) for c in candidates) if t is not None]
        oldest_age = max(0.0, time.time() - min(oldest_ms) / 1000) if oldest_ms else 0.0
        state = self._breaker_state(breaker, now)
        return {
            "pending": int(pending),
            "in_flight": max(0, int(inflight or 0)),
            "scheduled_retries": int(retries),
            "dead": int(dead),
            "oldest_age_seconds": round(oldest_age, 3),
            "breaker": state,
        }

    def breaker(self) -> dict[str, Any]:
        """The breaker's state with its reason and seconds until the next probe."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.breaker_key)
        pipe.time()
        raw, now_pair = pipe.execute()
        now = float(now_pair[0]) + float(now_pair[1]) / 1e6
        until = float(raw.get(b"until", 0) or 0)
        return {
            "state": self._breaker_state(raw, now),
            "failures": int(raw.get(b"failures", 0) or 0),
            "reason": raw.get(b"reason", b"").decode("utf-8", "replace"),
            "retry_in": round(max(0.0, until - now), 3),
        }

    @staticmethod
    def _breaker_state(raw: dict[bytes, bytes], now: float) -> str:
        state = raw.get(b"state", b"closed").decode()
        if state in ("open", "half_open"):
            until = float(raw.get(b"until", 0) or 0)
            return "open" if now < until and state == "open" else "half_open"
        return "closed"

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
        ]
        self.redis.delete(*keys)


def _record_time(item: bytes) -> int | None:
    """``$time`` (epoch ms) of a stored record, without parsing the whole JSON."""
    _, record = split_item(item)
    marker = b'"$time": '
    start = record.find(marker)
    if start < 0:
        return None
    start += len(marker)
    end = start
    while end < len(record) and 48 <= record[end] <= 57:
        end += 1
    return int(record[start:end]) if end > start else None
