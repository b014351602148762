-- Called only through scripts.requeue_call().
-- Move dead letters back to pending, attempts reset (the record part of each entry):
-- the given entries, or with no ARGV every letter. Returns how many moved.
local dead, pending = KEYS[1], KEYS[2]
local first_entry = 1

local moved = 0
local function requeue(entry)
    local nl = string.find(entry, '\n', 1, true)
    if nl then
        redis.call('RPUSH', pending, string.sub(entry, nl + 1))
        moved = moved + 1
    end
end
if #ARGV >= first_entry then
    for i = first_entry, #ARGV do
        if redis.call('LREM', dead, 1, ARGV[i]) > 0 then requeue(ARGV[i]) end
    end
    return moved
end
while true do
    local entry = redis.call('RPOP', dead)
    if not entry then break end
    requeue(entry)
end
return moved
