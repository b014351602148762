-- Called only through scripts.gate_call(); prelude: now, gate.
-- The breaker of a sharded buffer, on shard 0, before a claim on any shard: ARGV
-- 'enter' returns {mode, wait} as CLAIM would decide it ('ok' | 'probe' | 'open');
-- 'empty' says the probe found no record on any shard, so the next claim probes again.
local breaker = KEYS[1]
local action = ARGV[1]
local probe_lease = tonumber(ARGV[2])

if action == 'empty' then
    if redis.call('HGET', breaker, 'state') == 'half_open' then
        redis.call('HSET', breaker, 'state', 'open', 'until', now)
    end
    return {'ok', '0'}
end
local mode, wait = breaker_gate(breaker, probe_lease)
return {mode, tostring(wait)}
