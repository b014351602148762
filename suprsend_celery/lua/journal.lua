-- Called only through scripts.journal_call(); prelude: now, count.
-- Note a published direct-path record, due after `seconds` (Redis TIME), and count
-- what its previous attempt did when this publish is a retry.
local journal, metrics = KEYS[1], KEYS[2]
local seconds = tonumber(ARGV[1])
local record = ARGV[2]
local first_count = 3

count(metrics, first_count)
return redis.call('ZADD', journal, now + seconds, record)
