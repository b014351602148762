-- Called only through scripts.push_call(); prelude: unpack, held, wake.
-- Append records, all or none, and wake a waiting flush run. Returns the new pending
-- length, or -1 when full.
local pending, inflight, retry, dead, wake_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local max_length = tonumber(ARGV[1])
local first_record = 2

local n = #ARGV - first_record + 1
if held(pending, inflight, retry, dead) + n > max_length then return -1 end
local len = 0
for i = first_record, #ARGV, UNPACK_MAX do
    len = redis.call('RPUSH', pending, unpack(ARGV, i, math.min(i + UNPACK_MAX - 1, #ARGV)))
end
wake(wake_key)
return len
