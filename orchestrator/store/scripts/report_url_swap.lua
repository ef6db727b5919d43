-- Replace the room's report URL, if it is still the one given (compare and set): a reporter that learned a
-- fresher URL for the job it reported to never puts it over the URL of a job the room started since.
-- KEYS: state. ARGV: the URL it used, the new URL. Returns 1 when replaced.
if redis.call('HGET', KEYS[1], 'report_url') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'report_url', ARGV[2])
  return 1
end
return 0
