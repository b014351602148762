-- Called only through scripts.settle_journal_call(); prelude: count.
-- A direct-path task settled its record (sent, dead-lettered, moved to pending, or
-- discarded by Celery as revoked or expired): drop its journal entry and count how it
-- went.
local journal, metrics, expiring = KEYS[1], KEYS[2], KEYS[3]
local record = ARGV[1]
local first_count = 2

count(metrics, first_count)
redis.call('ZREM', expiring, record)
return redis.call('ZREM', journal, record)
