-- Take a room's lease if it is free or already ours, then extend it.
-- KEYS: lease. ARGV: replica id, TTL ms. Returns 1 when held.
local owner = redis.call('GET', KEYS[1])
if owner == false or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
