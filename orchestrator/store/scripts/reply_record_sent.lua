-- Count an inserted reply as in flight -- unless its finish already arrived.
-- KEYS: replies, replies:meta, replies:done. ARGV: reply id, meta JSON. Returns 1 when in flight.
local replies, meta, done = KEYS[1], KEYS[2], KEYS[3]
if redis.call('SREM', done, ARGV[1]) == 1 then return 0 end
redis.call('SADD', replies, ARGV[1])
redis.call('HSET', meta, ARGV[1], ARGV[2])
return 1
