-- Called only through scripts.settle_call(); prelude: now, count, wake.
-- Finish a claim in one step: drop its records, schedule retries, dead-letter, return
-- records to pending untouched (waking a waiting flush run), feed the breaker, count
-- the outcomes (metrics).
-- Returns {status, change}: status -1 if the lease was lost (the records are already
-- back in pending, counted as lease_expired by CLAIM), else 1; change is how this call
-- moved the breaker: 'opened' (closed -> open), 'closed' (open or half_open -> closed)
-- or '' (a re-sent call answers ''), so exactly one flusher announces a transition. Either way the claim leaves a short-lived
-- tombstone holding that answer, so a re-sent SETTLE (redis-py retries after a
-- connection error) answers the same without feeding the breaker or counting twice.
local claims, claim, inflight, retry, dead, pending, breaker_key, settled, metrics, wake_key =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local claim_id = ARGV[1]
local n_retry = tonumber(ARGV[2])
local n_dead = tonumber(ARGV[3])
local n_back = tonumber(ARGV[4])
local verdict = ARGV[5]
local threshold = tonumber(ARGV[6])
local cooldown_base = tonumber(ARGV[7])
local cooldown_max = tonumber(ARGV[8])
local floor = tonumber(ARGV[9])  -- Retry-After: the breaker opens for at least this
local reason = ARGV[10]
local tombstone_seconds = tonumber(ARGV[11])
local first_item = 12  -- then n_retry pairs (delay, item), n_dead entries, n_back items,
-- then the metric increments of this claim's requests (field, amount pairs)
local first_count = first_item + 2 * n_retry + n_dead + n_back

local change = ''

local function open(until_, cooldown)
    redis.call('HSET', breaker_key, 'state', 'open', 'until', until_, 'cooldown', cooldown,
        'reason', reason, 'opened_at', now)
end

local function feed_breaker()
    if verdict == '' then return end
    if verdict == 'ok' then
        local state, fails, until_ = unpack(redis.call('HMGET', breaker_key, 'state',
            'failures', 'until'))
        -- a request sent before the breaker opened (another claim in flight) answered
        -- during the pause: it does not cut short a Retry-After or a cool-down
        if state == 'open' and now < (tonumber(until_) or 0) then return end
        if (state and state ~= 'closed') or (fails and fails ~= '0') then
            redis.call('HSET', breaker_key, 'state', 'closed', 'failures', 0,
                'cooldown', cooldown_base, 'until', 0, 'reason', '')
            redis.call('HDEL', breaker_key, 'open_since')
            if state and state ~= 'closed' then change = 'closed' end
        end
        return
    end
    local fails = redis.pcall('HINCRBY', breaker_key, 'failures', 1)
    if type(fails) == 'table' then  -- not a number (written by hand): count from 1
        fails = 1
        redis.call('HSET', breaker_key, 'failures', fails)
    end
    local state = redis.call('HGET', breaker_key, 'state') or 'closed'
    local cooldown = tonumber(redis.call('HGET', breaker_key, 'cooldown')) or cooldown_base
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
        -- since when it has been open, kept through failed probes (health checks)
        if redis.call('HGET', breaker_key, 'state') == 'open' then
            redis.call('HSET', breaker_key, 'open_since', now)
            change = 'opened'
        end
    else
        -- already open: a longer Retry-After pushes the next probe out, never in
        local until_ = tonumber(redis.call('HGET', breaker_key, 'until')) or 0
        if now + floor > until_ then redis.call('HSET', breaker_key, 'until', now + floor) end
        if verdict == 'auth' then redis.call('HSET', breaker_key, 'reason', reason) end
    end
end

if redis.call('ZREM', claims, claim_id) == 0 then
    local answered = redis.call('GET', settled)
    if answered then return {tonumber(answered), ''} end
    feed_breaker()
    count(metrics, first_count)  -- the requests were made, whatever became of the lease
    redis.call('SET', settled, '-1', 'EX', tombstone_seconds)
    return {-1, change}
end
local claimed = redis.call('LLEN', claim)
redis.call('DECRBY', inflight, claimed)
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
-- back goes to the head of pending in its original order
for j = i + n_back - 1, i, -1 do redis.call('LPUSH', pending, ARGV[j]) end
if n_back > 0 then wake(wake_key) end
feed_breaker()
local outcomes = {sent = claimed - n_retry - n_dead - n_back, retried = n_retry,
    dead_lettered = n_dead, returned = n_back}
for outcome, n in pairs(outcomes) do
    if n > 0 then add(metrics, 'records:' .. outcome, n) end
end
count(metrics, first_count)
return {1, change}
