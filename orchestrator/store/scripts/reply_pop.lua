-- Take the most important waiting reply -- none while the room's replies are held (an operator has the
-- microphone: whatever the avatar said would cut into the voice).
-- KEYS: queue, items, hold. Returns {reply id, score, body} or false.
local queue, items, hold = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', hold) == 1 then return false end
local top = redis.call('ZPOPMIN', queue)
if #top == 0 then return false end
local body = redis.call('HGET', items, top[1])
redis.call('HDEL', items, top[1])
return {top[1], top[2], body}
