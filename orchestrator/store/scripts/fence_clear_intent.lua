-- Remove the intent if it is still the holder's.
-- KEYS: intent. ARGV: token. Returns 1 when removed.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
