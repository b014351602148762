-- count(metrics, first): apply the ``field, amount`` pairs from ARGV[first] on to the
-- metrics hash; sums are floats (HINCRBYFLOAT), everything else whole counts (HINCRBY).
local function count(metrics, first)
    for j = first, #ARGV - 1, 2 do
        local f = ARGV[j]
        if string.sub(f, -4) == ':sum' then
            redis.call('HINCRBYFLOAT', metrics, f, ARGV[j + 1])
        else
            redis.call('HINCRBY', metrics, f, ARGV[j + 1])
        end
    end
end
