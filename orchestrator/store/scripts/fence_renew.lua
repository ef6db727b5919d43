-- Extend a fence if it is still the holder's.
-- KEYS: fence. ARGV: token, TTL ms. Returns 1 when extended.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
