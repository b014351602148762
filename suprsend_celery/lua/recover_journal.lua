-- Called only through scripts.recover_journal_call(); prelude: now.
-- Move journal records that are due (their task never settled them) to pending.
-- Returns how many moved.
local journal, pending = KEYS[1], KEYS[2]
local limit = tonumber(ARGV[1])

local due = redis.call('ZRANGEBYSCORE', journal, '-inf', now, 'LIMIT', 0, limit)
if #due == 0 then return 0 end
redis.call('RPUSH', pending, unpack(due))
redis.call('ZREM', journal, unpack(due))
return #due
