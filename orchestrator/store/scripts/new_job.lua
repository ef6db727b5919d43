-- Record a new job as the room's current one: its own links (none yet), its report URL, an event entry.
-- KEYS: state, events, jobs. ARGV: job id, job status, at ms, events maxlen, report URL ('' none). Returns 1.
local state, events, jobs = KEYS[1], KEYS[2], KEYS[3]
for _, field in ipairs(redis.call('HKEYS', state)) do
  if string.sub(field, 1, 5) == 'rtmp:' or string.sub(field, 1, 6) == 'stall:'
      or string.sub(field, 1, 10) == 'refreshed:' then
    redis.call('HDEL', state, field)
  end
end
redis.call('SADD', jobs, ARGV[1])
redis.call('HSET', state, 'job_id', ARGV[1], 'job_state', ARGV[2], 'job_state_at', ARGV[3],
  'job_started_at', ARGV[3])
if ARGV[5] ~= '' then redis.call('HSET', state, 'report_url', ARGV[5])
else redis.call('HDEL', state, 'report_url') end
redis.call('XADD', events, 'MAXLEN', '~', ARGV[4], '*', 'kind', 'job_started', 'job_id', ARGV[1],
  'event_ms', ARGV[3])
return 1
