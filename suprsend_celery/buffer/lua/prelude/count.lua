-- count(metrics, first[, skip]): apply the ``field, amount`` pairs from ARGV[first] on to
-- the metrics hash; sums are floats (HINCRBYFLOAT), everything else whole counts
-- (HINCRBY). Fields starting with ``skip`` (when given) are left out.
local function add(metrics, f, amount)
    -- a field that holds no number (written by hand) starts again from this amount,
    -- so no value in the hash can fail a script
    local op = string.sub(f, -4) == ':sum' and 'HINCRBYFLOAT' or 'HINCRBY'
    local done = redis.pcall(op, metrics, f, amount)
    if type(done) == 'table' and done.err then redis.call('HSET', metrics, f, amount) end
end
local function count(metrics, first, skip)
    for j = first, #ARGV - 1, 2 do
        local f = ARGV[j]
        if skip and string.sub(f, 1, #skip) == skip then
            -- not counted here (see the caller)
        else
            add(metrics, f, ARGV[j + 1])
        end
    end
end
