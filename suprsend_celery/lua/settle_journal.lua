-- Called only through scripts.settle_journal_call(); prelude: count.
-- A direct-path task settled its record (sent, dead-lettered or moved to pending):
-- drop its journal entry and count how it went.
local journal, metrics = KEYS[1], KEYS[2]
local record = ARGV[1]
local first_count = 2

count(metrics, first_count)
return redis.call('ZREM', journal, record)
