-- Called only through scripts.journal_call(); prelude: now, count.
-- Note a published direct-path record, due after `seconds` (Redis TIME), and count
-- what its previous attempt did when this publish is a retry. A task published with
-- `expires` also notes when it expires (`expires_in` seconds; "" when it does not), so
-- the journal never sends it after that (see recover_journal.lua).
local journal, metrics, expiring = KEYS[1], KEYS[2], KEYS[3]
local seconds = tonumber(ARGV[1])
local record = ARGV[2]
local expires_in = tonumber(ARGV[3])
local first_count = 4

count(metrics, first_count)
if expires_in then
    redis.call('ZADD', expiring, now + expires_in, record)
end
return redis.call('ZADD', journal, now + seconds, record)
