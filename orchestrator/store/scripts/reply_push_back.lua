-- Put a reply that could not be sent back where it was.
-- KEYS: queue, items. ARGV: reply id, score, body. Returns 1.
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
