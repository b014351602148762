-- Called only through scripts.extend_call(); prelude: now.
-- Push a claim's lease out. Returns 1 if the claim is still ours, else 0.
local claims = KEYS[1]
local claim_id = ARGV[1]
local lease = tonumber(ARGV[2])

if not redis.call('ZSCORE', claims, claim_id) then return 0 end
redis.call('ZADD', claims, now + lease, claim_id)
return 1
