-- Publish rtmp_stalled for a link's current outage, once across every replica.
-- KEYS: state, events. ARGV: output, since ms, events maxlen, reactions channel, room id. Returns 1 when marked now.
local state = KEYS[1]
local url, since = ARGV[1], ARGV[2]
local current = redis.call('HGET', state, 'rtmp:' .. url)
if not current then return 0 end
local link_state, link_since = string.match(current, '^([^|]*)|([^|]*)|')
if link_since ~= since or (link_state ~= 'DISCONNECTED' and link_state ~= 'RECONNECTING') then return 0 end
if redis.call('HGET', state, 'stall:' .. url) == since then return 0 end
redis.call('HSET', state, 'stall:' .. url, since)
local job_id = redis.call('HGET', state, 'job_id') or ''
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'kind', 'reaction', 'reaction', 'rtmp_stalled',
  'job_id', job_id, 'output_url', url, 'state', link_state, 'event_ms', since)
redis.call('PUBLISH', ARGV[4], cjson.encode({kind = 'rtmp_stalled', room_id = ARGV[5], job_id = job_id,
  output_url = url, state = link_state, since_ms = since}))
return 1
