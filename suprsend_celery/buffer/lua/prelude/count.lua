-- count(metrics, first[, skip]): apply the ``field, amount`` pairs from ARGV[first] on to
-- the metrics hash; sums are floats (HINCRBYFLOAT), everything else whole counts
-- (HINCRBY). Fields starting with ``skip`` (when given) are left out.
local function count(metrics, first, skip)
    for j = first, #ARGV - 1, 2 do
        local f = ARGV[j]
        if skip and string.sub(f, 1, #skip) == skip then
            -- not counted here (see the caller)
        elseif string.sub(f, -4) == ':sum' then
            redis.call('HINCRBYFLOAT', metrics, f, ARGV[j + 1])
        else
            redis.call('HINCRBY', metrics, f, ARGV[j + 1])
        end
    end
end
