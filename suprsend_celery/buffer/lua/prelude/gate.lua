-- breaker_gate(): whether a claim may go ('ok'), is the probe, or must wait ('open')
local function breaker_gate(breaker, probe_lease)
    local state = redis.call('HGET', breaker, 'state')
    if state ~= 'open' and state ~= 'half_open' then return 'ok', 0 end
    local until_ = tonumber(redis.call('HGET', breaker, 'until')) or 0
    if now < until_ then return 'open', until_ - now end
    redis.call('HSET', breaker, 'state', 'half_open', 'until', now + probe_lease)
    return 'probe', 0
end
