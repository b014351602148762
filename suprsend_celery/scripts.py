"""The buffer's Lua scripts, each next to the one Python function that builds its call.

Every multi-step change to the buffer is one script, so a crash between two steps
cannot lose or double a record. Each script starts by binding every ``KEYS``/``ARGV``
entry to a named local; its builder (``push_call``, ``claim_call``, ...) is the only
place that orders them, so the two cannot drift. The limits a script applies come from
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
any         verdict ``ok`` (SETTLE)              closed, failures and cooldown reset
any         ``reset_breaker`` (CLI)              closed (the hash is deleted)
==========  ===================================  =====================================

Verdicts come from the flusher: ``ok`` (SuprSend judged a request), ``fail`` (a
whole request failed transiently), ``auth`` (credentials refused), or none. As
reported (``breaker_state``), a stored ``open`` whose ``until`` has passed reads
``half_open``: the next claim will probe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, Protocol

from . import defaults

__all__ = [
    "CLAIM_LUA",
    "EXTEND_LUA",
    "JOURNAL_LUA",
    "PUSH_LUA",
    "RECOVER_JOURNAL_LUA",
    "REHOME_LUA",
    "REQUEUE_LUA",
    "SETTLE_LUA",
    "Breaker",
    "BreakerState",
    "Call",
    "KeyNames",
    "Verdict",
    "breaker_state",
    "claim_call",
    "extend_call",
    "journal_call",
    "push_call",
    "recover_journal_call",
    "rehome_call",
    "requeue_call",
    "settle_call",
]

Verdict = Literal["ok", "fail", "auth", ""]
"""What a settled claim tells the breaker (``""``: nothing either way)."""

BreakerState = Literal["closed", "open", "half_open"]


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


_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n"

# Lua's unpack() has a stack limit: variadic commands take at most this many values.
_UNPACK = "local UNPACK_MAX = 1000\n"

# Records the buffer holds (pending + in claims + scheduled for retry), shared by
# PUSH and REHOME.
_HELD = """
local function held(pending, inflight, retry)
    return redis.call('LLEN', pending) + tonumber(redis.call('GET', inflight) or '0')
        + redis.call('ZCARD', retry)
end
"""

PUSH_LUA = (
    _UNPACK
    + _HELD
    + """
-- Append records, all or none. Returns the new pending length, or -1 when full.
local pending, inflight, retry = KEYS[1], KEYS[2], KEYS[3]
local max_length = tonumber(ARGV[1])
local first_record = 2

local n = #ARGV - first_record + 1
if held(pending, inflight, retry) + n > max_length then return -1 end
local len = 0
for i = first_record, #ARGV, UNPACK_MAX do
    len = redis.call('RPUSH', pending, unpack(ARGV, i, math.min(i + UNPACK_MAX - 1, #ARGV)))
end
return len
"""
)


def push_call(k: KeyNames, max_length: int, records: Sequence[bytes]) -> Call:
    return Call([k.pending_key, k.inflight_key, k.retry_key], [max_length, *records])


CLAIM_LUA = (
    _NOW
    + _UNPACK
    + """
-- Return expired claims and due retries to pending, consult the breaker, then move up
-- to `count` records into a new claim. Returns {mode, wait, record...}: mode 'ok' |
-- 'probe' | 'open' (wait = seconds until the next probe).
-- Idempotent per claim id: redis-py re-sends a command after a connection error or a
-- timeout, and a second run must hand back the same records rather than take more
-- (which the flusher would never see, yet settle would delete).
local pending, claims, claim, inflight, retry, breaker =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local count = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local claim_id = ARGV[3]
local claim_prefix = ARGV[4]
local probe_lease = tonumber(ARGV[5])
local expired_limit = tonumber(ARGV[6])
local due_limit = tonumber(ARGV[7])
local probe_records = tonumber(ARGV[8])

if redis.call('TYPE', claim).ok == 'list' then
    local out = {'ok', '0'}
    for _, item in ipairs(redis.call('LRANGE', claim, 0, -1)) do out[#out + 1] = item end
    return out
end
local expired = redis.call('ZRANGEBYSCORE', claims, '-inf', now, 'LIMIT', 0, expired_limit)
for _, id in ipairs(expired) do
    local key = claim_prefix .. id
    local items = redis.call('LRANGE', key, 0, -1)
    for i = #items, 1, -1 do redis.call('LPUSH', pending, items[i]) end
    redis.call('DEL', key)
    redis.call('ZREM', claims, id)
    redis.call('DECRBY', inflight, #items)
end
local due = redis.call('ZRANGEBYSCORE', retry, '-inf', now, 'LIMIT', 0, due_limit)
for i = 1, #due, UNPACK_MAX do
    local last = math.min(i + UNPACK_MAX - 1, #due)
    redis.call('RPUSH', pending, unpack(due, i, last))
    redis.call('ZREM', retry, unpack(due, i, last))
end
local mode = 'ok'
local state = redis.call('HGET', breaker, 'state')
if state == 'open' or state == 'half_open' then
    local until_ = tonumber(redis.call('HGET', breaker, 'until') or '0')
    if now < until_ then return {'open', tostring(until_ - now)} end
    redis.call('HSET', breaker, 'state', 'half_open', 'until', now + probe_lease)
    mode = 'probe'
    count = math.min(count, probe_records)
end
local items = redis.call('LPOP', pending, count)
if not items then
    if mode == 'probe' then redis.call('HSET', breaker, 'state', 'open', 'until', now) end
    return {mode, '0'}
end
redis.call('RPUSH', claim, unpack(items))
redis.call('ZADD', claims, now + lease, claim_id)
redis.call('INCRBY', inflight, #items)
local out = {mode, '0'}
for i = 1, #items do out[i + 2] = items[i] end
return out
"""
)


def claim_call(k: KeyNames, claim_id: str, count: int, lease: float, probe_lease: float) -> Call:
    return Call(
        [
            k.pending_key,
            k.claims_key,
            k.claim_prefix + claim_id,
            k.inflight_key,
            k.retry_key,
            k.breaker_key,
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
        ],
    )


SETTLE_LUA = (
    _NOW
    + """
-- Finish a claim in one step: drop its records, schedule retries, dead-letter, return
-- records to pending untouched, feed the breaker. Returns -1 if the lease was lost (the
-- records are already back in pending), else 1. A settled claim leaves a short-lived
-- tombstone, so a re-sent SETTLE (redis-py retries after a connection error) answers 1
-- again instead of "lease lost" and does not feed the breaker twice.
local claims, claim, inflight, retry, dead, pending, breaker_key, settled =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local claim_id = ARGV[1]
local dead_max = tonumber(ARGV[2])
local n_retry = tonumber(ARGV[3])
local n_dead = tonumber(ARGV[4])
local n_back = tonumber(ARGV[5])
local verdict = ARGV[6]
local threshold = tonumber(ARGV[7])
local cooldown_base = tonumber(ARGV[8])
local cooldown_max = tonumber(ARGV[9])
local floor = tonumber(ARGV[10])  -- Retry-After: the breaker opens for at least this
local reason = ARGV[11]
local tombstone_seconds = tonumber(ARGV[12])
local first_item = 13  -- then n_retry pairs (delay, item), n_dead entries, n_back items

local function open(until_, cooldown)
    redis.call('HSET', breaker_key, 'state', 'open', 'until', until_, 'cooldown', cooldown,
        'reason', reason, 'opened_at', now)
end

local function feed_breaker()
    if verdict == '' then return end
    if verdict == 'ok' then
        local state, fails = unpack(redis.call('HMGET', breaker_key, 'state', 'failures'))
        if (state and state ~= 'closed') or (fails and fails ~= '0') then
            redis.call('HSET', breaker_key, 'state', 'closed', 'failures', 0,
                'cooldown', cooldown_base, 'until', 0, 'reason', '')
        end
        return
    end
    local fails = redis.call('HINCRBY', breaker_key, 'failures', 1)
    local state = redis.call('HGET', breaker_key, 'state') or 'closed'
    local cooldown = tonumber(redis.call('HGET', breaker_key, 'cooldown') or cooldown_base)
    if state == 'half_open' then
        -- the probe (or a straggler) failed: open again, for longer
        cooldown = math.min(cooldown * 2, cooldown_max)
        open(now + math.max(cooldown, floor), cooldown)
    elseif state == 'closed' then
        if fails >= threshold or verdict == 'auth' then
            open(now + math.max(cooldown_base, floor), cooldown_base)
        elseif floor > 0 then
            -- a Retry-After alone pauses exactly as long as the server asked
            open(now + floor, cooldown_base)
        end
    else
        -- already open: a longer Retry-After pushes the next probe out, never in
        local until_ = tonumber(redis.call('HGET', breaker_key, 'until') or '0')
        if now + floor > until_ then redis.call('HSET', breaker_key, 'until', now + floor) end
        if verdict == 'auth' then redis.call('HSET', breaker_key, 'reason', reason) end
    end
end

if redis.call('ZREM', claims, claim_id) == 0 then
    if redis.call('EXISTS', settled) == 1 then return 1 end
    feed_breaker()
    return -1
end
redis.call('DECRBY', inflight, redis.call('LLEN', claim))
redis.call('DEL', claim)
redis.call('SET', settled, '1', 'EX', tombstone_seconds)
local i = first_item
for _ = 1, n_retry do
    redis.call('ZADD', retry, now + tonumber(ARGV[i]), ARGV[i + 1])
    i = i + 2
end
for _ = 1, n_dead do
    redis.call('LPUSH', dead, ARGV[i])
    i = i + 1
end
if n_dead > 0 then redis.call('LTRIM', dead, 0, dead_max - 1) end
-- back goes to the head of pending in its original order
for j = i + n_back - 1, i, -1 do redis.call('LPUSH', pending, ARGV[j]) end
feed_breaker()
return 1
"""
)


class Breaker(NamedTuple):
    """The breaker's tunables, passed to SETTLE."""

    threshold: int
    cooldown: float
    cooldown_max: float


def settle_call(
    k: KeyNames,
    claim_id: str,
    *,
    dead_letter_max: int,
    breaker: Breaker,
    retries: Sequence[tuple[float, bytes]],
    dead: Sequence[bytes],
    back: Sequence[bytes],
    verdict: Verdict,
    open_for: float,
    reason: str,
) -> Call:
    args: list[Any] = [
        claim_id,
        dead_letter_max,
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
    keys = [
        k.claims_key,
        k.claim_prefix + claim_id,
        k.inflight_key,
        k.retry_key,
        k.dead_key,
        k.pending_key,
        k.breaker_key,
        k.settled_prefix + claim_id,
    ]
    return Call(keys, args)


EXTEND_LUA = (
    _NOW
    + """
-- Push a claim's lease out. Returns 1 if the claim is still ours, else 0.
local claims = KEYS[1]
local claim_id = ARGV[1]
local lease = tonumber(ARGV[2])

if not redis.call('ZSCORE', claims, claim_id) then return 0 end
redis.call('ZADD', claims, now + lease, claim_id)
return 1
"""
)


def extend_call(k: KeyNames, claim_id: str, lease: float) -> Call:
    return Call([k.claims_key], [claim_id, lease])


REQUEUE_LUA = """
-- Move dead letters back to pending, attempts reset (the record part of each entry):
-- the given entries, or with no ARGV every letter. Returns how many moved.
local dead, pending = KEYS[1], KEYS[2]
local first_entry = 1

local moved = 0
local function requeue(entry)
    local nl = string.find(entry, '\\n', 1, true)
    if nl then
        redis.call('RPUSH', pending, string.sub(entry, nl + 1))
        moved = moved + 1
    end
end
if #ARGV >= first_entry then
    for i = first_entry, #ARGV do
        if redis.call('LREM', dead, 1, ARGV[i]) > 0 then requeue(ARGV[i]) end
    end
    return moved
end
while true do
    local entry = redis.call('RPOP', dead)
    if not entry then break end
    requeue(entry)
end
return moved
"""


def requeue_call(k: KeyNames, entries: Sequence[bytes] | None) -> Call:
    """``entries=None`` requeues every dead letter; an empty list would too, so refuse it."""
    if entries is not None and not entries:
        raise ValueError("requeue_call needs entries, or None for every dead letter")
    return Call([k.dead_key, k.pending_key], list(entries or ()))


REHOME_LUA = (
    _HELD
    + """
-- For the direct path: put a record into pending (when credentials are wrong) within
-- the bound, or dead-letter it when the buffer is full. Returns 1 pending, 0 dead.
local dead, pending, inflight, retry = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local max_length = tonumber(ARGV[1])
local record = ARGV[2]
local dead_entry = ARGV[3]

if held(pending, inflight, retry) < max_length then
    redis.call('RPUSH', pending, record)
    return 1
end
redis.call('LPUSH', dead, dead_entry)
return 0
"""
)


def rehome_call(k: KeyNames, max_length: int, record: bytes, dead_entry: bytes) -> Call:
    return Call(
        [k.dead_key, k.pending_key, k.inflight_key, k.retry_key], [max_length, record, dead_entry]
    )


JOURNAL_LUA = (
    _NOW
    + """
-- Note a published direct-path record, due after `seconds` (Redis TIME).
local journal = KEYS[1]
local seconds = tonumber(ARGV[1])
local record = ARGV[2]

return redis.call('ZADD', journal, now + seconds, record)
"""
)


def journal_call(k: KeyNames, record: bytes, seconds: float) -> Call:
    return Call([k.journal_key], [seconds, record])


RECOVER_JOURNAL_LUA = (
    _NOW
    + """
-- Move journal records that are due (their task never settled them) to pending.
-- Returns how many moved.
local journal, pending = KEYS[1], KEYS[2]
local limit = tonumber(ARGV[1])

local due = redis.call('ZRANGEBYSCORE', journal, '-inf', now, 'LIMIT', 0, limit)
if #due == 0 then return 0 end
redis.call('RPUSH', pending, unpack(due))
redis.call('ZREM', journal, unpack(due))
return #due
"""
)


def recover_journal_call(k: KeyNames, limit: int) -> Call:
    return Call([k.journal_key, k.pending_key], [limit])
