-- Update the current job's status; record and publish the change.
-- KEYS: state, events. ARGV: job id, status, at ms, events maxlen, reactions channel, room id. Returns 1 when it changed.
local state, events = KEYS[1], KEYS[2]
local job_id, job_state, at = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', state, 'job_id') ~= job_id then return 0 end
if redis.call('HGET', state, 'job_state') == job_state then return 0 end
redis.call('HSET', state, 'job_state', job_state, 'job_state_at', at)
redis.call('XADD', events, 'MAXLEN', '~', ARGV[4], '*', 'kind', 'job_state', 'job_id', job_id,
  'job_state', job_state, 'event_ms', at)
redis.call('PUBLISH', ARGV[5], cjson.encode({kind = 'job_state', room_id = ARGV[6], job_id = job_id,
  job_state = job_state, at = at}))
return 1
