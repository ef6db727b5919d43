-- Queue a reply (evicting a less important one beyond max), and record it in the room's event stream.
-- KEYS: queue, items, events. ARGV: reply id, score, body, max pending, events maxlen, then field/value pairs.
-- Returns {outcome, evicted reply id or ''}.
local queue, items, events = KEYS[1], KEYS[2], KEYS[3]
local id, score, body, max = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local band = math.floor(score / 1e13)
local outcome, evicted = 'queued', ''
if redis.call('ZCARD', queue) >= max then
  local last = redis.call('ZRANGE', queue, -1, -1, 'WITHSCORES')
  if band >= math.floor(tonumber(last[2]) / 1e13) then
    outcome = 'dropped'
  else
    redis.call('ZREM', queue, last[1])
    redis.call('HDEL', items, last[1])
    evicted = last[1]
  end
end
if outcome == 'queued' then
  redis.call('ZADD', queue, score, id)
  redis.call('HSET', items, id, body)
end
-- the room's event record, in the same step: kind, reply id, then the caller's fields
local fields = {'kind', 'reply_' .. outcome, 'reply_id', id, 'evicted', evicted}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', events, 'MAXLEN', '~', ARGV[5], '*', unpack(fields))
return {outcome, evicted}
