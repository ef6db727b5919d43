-- No longer count replies as in flight.
-- KEYS: replies, replies:meta. ARGV: reply ids. Returns how many were in flight.
local removed = 0
for i = 1, #ARGV do
  removed = removed + redis.call('SREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return removed
