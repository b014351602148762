-- Called only through scripts.journal_call(); prelude: now, count.
-- Note a published direct-path record, due after `seconds` (Redis TIME), and count
-- what its previous attempt did when this publish is a retry. A task published with
-- `expires` also notes when it expires (`expires_in` seconds; "" when it does not), so
-- the journal never sends it after that (see recover_journal.lua). A record the flusher
-- has already taken over (its tombstone in `taken`) is not noted again: the buffer
-- sends it, and its task skips it (hold_journal.lua). Returns 1 if noted, else 0.
local journal, metrics, expiring, taken = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local seconds = tonumber(ARGV[1])
local record = ARGV[2]
local expires_in = tonumber(ARGV[3])
local first_count = 4

if redis.call('ZSCORE', taken, redis.sha1hex(record)) then
    count(metrics, first_count, 'direct:')  -- the buffer counts the event's outcome
    return 0
end
count(metrics, first_count)
if expires_in then
    redis.call('ZADD', expiring, now + expires_in, record)
end
redis.call('ZADD', journal, now + seconds, record)
return 1
