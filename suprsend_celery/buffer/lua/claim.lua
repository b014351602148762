-- Called only through scripts.claim_call(); prelude: now, unpack, count, gate.
-- Return expired claims and due retries to pending, consult the breaker, then move up
-- to `count` records into a new claim. Returns {mode, wait, record...}: mode 'ok' |
-- 'probe' | 'open' (wait = seconds until the next probe) | 'short' (some records
-- wait, but fewer than `fill`, so none were taken: a run lingers for a batch to fill;
-- fill 0 takes any). With no record, wait is the seconds until the next retry or lease is due (-1:
-- none), which bounds how long a flush run on duty blocks. A sharded buffer passes
-- use_breaker = '0': it consults its one breaker (on shard 0) first, with GATE.
-- Idempotent per claim id: redis-py re-sends a command after a connection error or a
-- timeout, and a second run must hand back the same records rather than take more
-- (which the flusher would never see, yet settle would delete).
local pending, claims, claim, inflight, retry, breaker, metrics =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local count = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local claim_id = ARGV[3]
local claim_prefix = ARGV[4]
local probe_lease = tonumber(ARGV[5])
local expired_limit = tonumber(ARGV[6])
local due_limit = tonumber(ARGV[7])
local probe_records = tonumber(ARGV[8])
local use_breaker = ARGV[9] == '1'
local fill = tonumber(ARGV[10])

if redis.call('TYPE', claim).ok == 'list' then
    local out = {'ok', '0'}
    for _, item in ipairs(redis.call('LRANGE', claim, 0, -1)) do out[#out + 1] = item end
    return out
end
-- an in-flight count that is not a whole number (written by hand) is counted again
local held_now = redis.call('GET', inflight)
if held_now and not string.match(held_now, '^%-?%d+$') then
    local n = 0
    for _, id in ipairs(redis.call('ZRANGE', claims, 0, -1)) do
        n = n + redis.call('LLEN', claim_prefix .. id)
    end
    redis.call('SET', inflight, n)
end
local expired = redis.call('ZRANGEBYSCORE', claims, '-inf', now, 'LIMIT', 0, expired_limit)
for _, id in ipairs(expired) do
    local key = claim_prefix .. id
    local items = redis.call('LRANGE', key, 0, -1)
    for i = #items, 1, -1 do redis.call('LPUSH', pending, items[i]) end
    redis.call('DEL', key)
    redis.call('ZREM', claims, id)
    redis.call('DECRBY', inflight, #items)
    if #items > 0 then add(metrics, 'records:lease_expired', #items) end
end
local due = redis.call('ZRANGEBYSCORE', retry, '-inf', now, 'LIMIT', 0, due_limit)
for i = 1, #due, UNPACK_MAX do
    local last = math.min(i + UNPACK_MAX - 1, #due)
    redis.call('RPUSH', pending, unpack(due, i, last))
    redis.call('ZREM', retry, unpack(due, i, last))
end
-- seconds until the first retry or lease falls due here (-1: none)
local function next_due()
    local due_at
    for _, key in ipairs({retry, claims}) do
        local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
        if first[2] and (not due_at or tonumber(first[2]) < due_at) then
            due_at = tonumber(first[2])
        end
    end
    if not due_at then return '-1' end
    return tostring(math.max(0, due_at - now))
end
if fill > 0 then
    local waiting = redis.call('LLEN', pending)
    if waiting > 0 and waiting < fill then return {'short', '0'} end
end
local mode = 'ok'
if use_breaker then
    local wait
    mode, wait = breaker_gate(breaker, probe_lease)
    if mode == 'open' then return {'open', tostring(wait)} end
    if mode == 'probe' then count = math.min(count, probe_records) end
end
local items = redis.call('LPOP', pending, count)
if not items then
    if mode == 'probe' then redis.call('HSET', breaker, 'state', 'open', 'until', now) end
    return {mode, next_due()}
end
redis.call('RPUSH', claim, unpack(items))
redis.call('ZADD', claims, now + lease, claim_id)
redis.call('INCRBY', inflight, #items)
local out = {mode, '0'}
for i = 1, #items do out[i + 2] = items[i] end
return out
