-- Release a fence and its intent if they are still the holder's.
-- KEYS: fence, intent. ARGV: token. Returns 1 when the fence was removed.
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then released = redis.call('DEL', KEYS[1]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return released
