-- Called only through scripts.hold_journal_call(); prelude: now.
-- A worker starts an attempt at a journaled record: if the flusher took the record over
-- (its tombstone in `taken`), answer -1 and drop any entry left, so the task does not
-- send it again; if the entry is there, push its due time to at least `seconds` from now
-- (the attempt's longest request plus the grace) and answer 1; else answer 0 (never
-- journaled, or settled by an earlier run: the task sends, a repeat is skipped by key).
local journal, expiring, taken = KEYS[1], KEYS[2], KEYS[3]
local record = ARGV[1]
local seconds = tonumber(ARGV[2])

if redis.call('ZSCORE', taken, redis.sha1hex(record)) then
    redis.call('ZREM', journal, record)
    redis.call('ZREM', expiring, record)
    return -1
end
local due = redis.call('ZSCORE', journal, record)
if not due then return 0 end
if tonumber(due) < now + seconds then
    redis.call('ZADD', journal, now + seconds, record)
end
return 1
