-- Take a fence and write its intent in one step.
-- KEYS: fence, intent. ARGV: token, fence TTL ms, intent TTL ms. Returns {taken 0/1, previous intent or false}.
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0, false} end
local previous = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
return {1, previous}
