-- Called only through scripts.settle_journal_call(); prelude: count.
-- A direct-path task settled its record (sent, dead-lettered, moved to pending, or
-- discarded by Celery as revoked or expired): drop its journal entry and count how it
-- went. If the flusher took the record over while the attempt ran (its tombstone in
-- `taken`), the buffer counts the event: only the attempt's requests are counted here,
-- not its `direct:` outcome, and the answer is -1; else the number of entries dropped.
local journal, metrics, expiring, taken = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local record = ARGV[1]
local first_count = 2

redis.call('ZREM', expiring, record)
local removed = redis.call('ZREM', journal, record)
if removed == 0 and redis.call('ZSCORE', taken, redis.sha1hex(record)) then
    count(metrics, first_count, 'direct:')
    return -1
end
count(metrics, first_count)
return removed
