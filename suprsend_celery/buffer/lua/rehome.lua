-- Called only through scripts.rehome_call(); prelude: held, wake.
-- For the direct path: put a record into pending (when credentials are wrong) within
-- the bound, waking a waiting flush run, or dead-letter it when the buffer is full.
-- Returns 1 pending, 0 dead.
local dead, pending, inflight, retry, wake_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local max_length = tonumber(ARGV[1])
local record = ARGV[2]
local dead_entry = ARGV[3]

if held(pending, inflight, retry, dead) < max_length then
    redis.call('RPUSH', pending, record)
    wake(wake_key)
    return 1
end
redis.call('LPUSH', dead, dead_entry)
return 0
