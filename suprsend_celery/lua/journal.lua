-- Called only through scripts.journal_call(); prelude: now.
-- Note a published direct-path record, due after `seconds` (Redis TIME).
local journal = KEYS[1]
local seconds = tonumber(ARGV[1])
local record = ARGV[2]

return redis.call('ZADD', journal, now + seconds, record)
