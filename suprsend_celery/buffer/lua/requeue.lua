-- Called only through scripts.requeue_call(); prelude: wake.
-- Move dead letters back to pending, attempts reset (the record part of each entry):
-- the given entries, or with no ARGV every letter. An entry whose record part is not a
-- record (no header line, an empty or damaged record) stays where it is, in its place,
-- so nothing is lost. A waiting flush run is woken when any moved. Returns {moved, kept}.
local dead, pending, wake_key = KEYS[1], KEYS[2], KEYS[3]
local first_entry = 1

local moved, kept = 0, {}
local function record_of(entry)
    local nl = string.find(entry, '\n', 1, true)
    if not nl then return nil end
    local record = string.sub(entry, nl + 1)
    if string.sub(record, 1, 1) ~= '{' then return nil end
    return record
end
if #ARGV >= first_entry then
    for i = first_entry, #ARGV do
        local record = record_of(ARGV[i])
        if not record then
            kept[#kept + 1] = ARGV[i]
        elseif redis.call('LREM', dead, 1, ARGV[i]) > 0 then
            redis.call('RPUSH', pending, record)
            moved = moved + 1
        end
    end
    if moved > 0 then wake(wake_key) end
    return {moved, #kept}
end
while true do
    local entry = redis.call('RPOP', dead)
    if not entry then break end
    local record = record_of(entry)
    if record then
        redis.call('RPUSH', pending, record)
        moved = moved + 1
    else
        kept[#kept + 1] = entry
    end
end
-- popped oldest first: pushing each on the head again restores newest first
for _, entry in ipairs(kept) do redis.call('LPUSH', dead, entry) end
if moved > 0 then wake(wake_key) end
return {moved, #kept}
