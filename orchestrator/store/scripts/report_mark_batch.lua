-- Mark the batch about to be sent, if the room's lease is still this replica's; then the report URL.
-- KEYS: lease, marker, state. ARGV: replica id, batch id, first entry id, last entry id.
-- Returns {1 marked or 0, report URL or false}.
local marked = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('HSET', KEYS[2], 'batch_id', ARGV[2], 'first', ARGV[3], 'last', ARGV[4])
  marked = 1
end
return {marked, redis.call('HGET', KEYS[3], 'report_url')}
