-- Called only through scripts.duty_call(); prelude: now.
-- The roster of flush runs on duty (blocked on the wake lists, waiting for records):
-- at most `cap` at once, each under a lease, so a killed run's place frees itself.
-- Every call also notes that a flush run is alive (`last_flush_at`, which health
-- checks read), so a run on duty for a long time never looks like a dead beat.
-- 'join': take a place if one is free: {1, member} (member "<joined at>:<run>"), else
-- {0, ''}. 'renew': keep it: {1, newer} (places taken after this one: the next run has
-- taken over), or {0, 0} when the lease ran out. 'leave': give it up. 'alive': only
-- note the run is alive (a run draining without a place).
local duty, metrics = KEYS[1], KEYS[2]
local action = ARGV[1]
local member = ARGV[2]
local lease = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])

redis.call('HSET', metrics, 'last_flush_at', now)
redis.call('ZREMRANGEBYSCORE', duty, '-inf', now)
if action == 'join' then
    if redis.call('ZCARD', duty) >= cap then return {0, ''} end
    local joined = string.format('%.6f:%s', now, member)
    redis.call('ZADD', duty, now + lease, joined)
    return {1, joined}
elseif action == 'renew' then
    if not redis.call('ZSCORE', duty, member) then return {0, 0} end
    redis.call('ZADD', duty, now + lease, member)
    local mine = tonumber(string.match(member, '^[^:]+'))
    local newer = 0
    for _, other in ipairs(redis.call('ZRANGE', duty, 0, -1)) do
        if tonumber(string.match(other, '^[^:]+')) > mine then newer = newer + 1 end
    end
    return {1, newer}
elseif action == 'leave' then
    redis.call('ZREM', duty, member)
end
return {1, 0}
