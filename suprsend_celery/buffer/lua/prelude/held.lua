-- held(): records the buffer holds: pending + in claims + scheduled for retry +
-- dead letters (which count toward the bound, so none is ever trimmed away)
local function held(pending, inflight, retry, dead)
    return redis.call('LLEN', pending) + (tonumber(redis.call('GET', inflight)) or 0)
        + redis.call('ZCARD', retry) + redis.call('LLEN', dead)
end
