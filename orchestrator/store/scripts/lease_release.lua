-- Give a room's lease up if it is still ours.
-- KEYS: lease. ARGV: replica id. Returns 1 when released.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
