-- Called only through scripts.finish_run_call(); prelude: now, count.
-- The end of a flush run: note its time (health checks look for a stale one), count
-- its duration, and return the records not yet delivered nor dead (pending + claimed +
-- scheduled for retry).
local pending, inflight, retry, metrics = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local first_count = 1

redis.call('HSET', metrics, 'last_flush_at', now)
count(metrics, first_count)
return redis.call('LLEN', pending) + (tonumber(redis.call('GET', inflight)) or 0)
    + redis.call('ZCARD', retry)
