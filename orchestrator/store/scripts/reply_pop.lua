-- Take the most important waiting reply.
-- KEYS: queue, items. Returns {reply id, score, body} or false.
local queue, items = KEYS[1], KEYS[2]
local top = redis.call('ZPOPMIN', queue)
if #top == 0 then return false end
local body = redis.call('HGET', items, top[1])
redis.call('HDEL', items, top[1])
return {top[1], top[2], body}
