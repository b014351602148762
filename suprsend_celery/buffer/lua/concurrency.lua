-- Called only through scripts.concurrency_call(); prelude: now.
-- Merge one flusher's news into the buffer's shared concurrency limit (shard 0's hash
-- tag, beside the breaker): add `delta` (from `start` when there is none yet), clamp it
-- to [floor, ceiling]; note where the API last refused (`refused`: '' no news, 0 none);
-- note the flusher as active (or gone, `leaving`), forget flushers silent for
-- `active_seconds`, and keep both keys `keep_seconds` past the last merge.
-- Returns {limit (a string: Lua numbers reach Redis as integers), active flushers,
-- this flusher's rank among them (by id), the refused limit ('' for none)}.
local concurrency, flushers = KEYS[1], KEYS[2]
local flusher = ARGV[1]
local delta = tonumber(ARGV[2])
local refused = ARGV[3]
local start = tonumber(ARGV[4])
local floor = tonumber(ARGV[5])
local ceiling = tonumber(ARGV[6])
local leaving = ARGV[7] == '1'
local active_seconds = tonumber(ARGV[8])
local keep_seconds = tonumber(ARGV[9])

local limit = tonumber(redis.call('HGET', concurrency, 'limit')) or start
limit = math.min(ceiling, math.max(floor, limit + delta))
if refused ~= '' then
    if tonumber(refused) > 0 then
        redis.call('HSET', concurrency, 'refused', refused)
    else
        redis.call('HDEL', concurrency, 'refused')
    end
end
redis.call('ZREMRANGEBYSCORE', flushers, '-inf', now - active_seconds)
if leaving then
    redis.call('ZREM', flushers, flusher)
else
    redis.call('ZADD', flushers, now, flusher)
end
local ids = redis.call('ZRANGE', flushers, 0, -1)
local rank = 0
for _, id in ipairs(ids) do
    if id < flusher then rank = rank + 1 end
end
local text = string.format('%.3f', limit)
redis.call('HSET', concurrency, 'limit', text, 'flushers', #ids, 'updated_at', now)
redis.call('EXPIRE', concurrency, keep_seconds)
if #ids > 0 then redis.call('EXPIRE', flushers, keep_seconds) end
local refused_at = redis.call('HGET', concurrency, 'refused')
return {text, #ids, rank, tonumber(refused_at) and refused_at or ''}
