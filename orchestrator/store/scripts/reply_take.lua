-- A pacer's look at its room in one step: the replies in flight, and -- while fewer than the most allowed
-- are, and the room's replies are not held -- the most important waiting ones, taken from the queue to
-- fill the free places (the pacer says them at once). A reply in flight without a record of when it was
-- sent is returned without one (the caller stamps it).
-- KEYS: queue, items, hold, replies (in flight), replies:meta. ARGV: the most replies in flight.
-- Returns {in-flight ids, their records (id, record, ...), taken (id, score, body, ...), the score of the
-- most important reply still waiting or false}.
local queue, items, hold, flights, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ids = redis.call('SMEMBERS', flights)
local records = redis.call('HGETALL', meta)
local taken = {}
local free = tonumber(ARGV[1]) - #ids
if free > 0 and redis.call('EXISTS', hold) == 0 then
  local top = redis.call('ZPOPMIN', queue, free)
  for i = 1, #top, 2 do
    local body = redis.call('HGET', items, top[i])
    redis.call('HDEL', items, top[i])
    taken[#taken + 1] = top[i]
    taken[#taken + 1] = top[i + 1]
    taken[#taken + 1] = body
  end
end
local head = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
return {ids, records, taken, head[2] or false}
