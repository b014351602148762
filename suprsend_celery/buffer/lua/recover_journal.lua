-- Called only through scripts.recover_journal_call(); prelude: now, count, wake.
-- Move journal records that are due (their task never settled them) to pending, except
-- those whose task has expired (`expires`): Celery would have discarded the message,
-- so they are dropped, not sent. Each record moved leaves a tombstone (its SHA1 -> now)
-- in `taken` for `keep_seconds`, so a redelivery of its task skips it rather than send
-- and count it again (hold_journal.lua); older tombstones are pruned here. Counts the
-- records moved as `direct:taken_over`. Wakes a waiting flush run. Returns {moved, dropped}.
local journal, pending, expiring, taken, metrics, wake_key =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local limit = tonumber(ARGV[1])
local keep_seconds = tonumber(ARGV[2])

redis.call('ZREMRANGEBYSCORE', taken, '-inf', now - keep_seconds)
local due = redis.call('ZRANGEBYSCORE', journal, '-inf', now, 'LIMIT', 0, limit)
if #due == 0 then return {0, 0} end
local send, dropped = {}, 0
for _, record in ipairs(due) do
    local expires_at = redis.call('ZSCORE', expiring, record)
    if expires_at and tonumber(expires_at) <= now then
        dropped = dropped + 1
    else
        send[#send + 1] = record
        redis.call('ZADD', taken, now, redis.sha1hex(record))
    end
end
if #send > 0 then
    redis.call('RPUSH', pending, unpack(send))
    add(metrics, 'direct:taken_over', #send)
    wake(wake_key)
end
redis.call('ZREM', journal, unpack(due))
redis.call('ZREM', expiring, unpack(due))
return {#send, dropped}
