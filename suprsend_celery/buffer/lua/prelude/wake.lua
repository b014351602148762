-- wake(key): leave one token in this shard's wake list, so a flush run blocked on it
-- (BLPOP) claims now; one token says "look", whatever number of records came
local function wake(key)
    if redis.call('LLEN', key) == 0 then redis.call('RPUSH', key, '1') end
end
