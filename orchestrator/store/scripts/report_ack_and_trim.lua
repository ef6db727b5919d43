-- The vendor took a batch: acknowledge it and trim the stream behind it -- but never past the group's
-- oldest entry still pending (another consumer's, read before it lost the room: the owner claims those a
-- lease later). Soak finding: trimming to the first entry the owner itself still needed deleted them,
-- unreported.
-- The marker goes only if it still names this batch: a worker that lost the room while its batch was out
-- must not delete the successor's marker. A refreshed report URL replaces the one the batch went to only
-- if that is still the room's: soak finding: a finished job's last answer put its URL back over the new
-- job's, and the room's reports went to a job that had ended.
-- KEYS: stream, marker, state. ARGV: group, the owner's trim point, the batch id, the URL it went to,
-- the refreshed URL ('' none), the number of events reported, the batch's entry ids...
-- Returns how many entries were acknowledged.
local function before(a, b)
  local am, as = string.match(a, '^(%d+)-?(%d*)$')
  local bm, bs = string.match(b, '^(%d+)-?(%d*)$')
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then return am < bm end
  return (tonumber(as) or 0) < (tonumber(bs) or 0)
end
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 7))
if redis.call('HGET', KEYS[2], 'batch_id') == ARGV[3] then redis.call('DEL', KEYS[2]) end
local keep = ARGV[2]
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
if pending[1] > 0 and before(pending[2], keep) then keep = pending[2] end
redis.call('XTRIM', KEYS[1], 'MINID', '~', keep)
if ARGV[5] ~= '' and redis.call('HGET', KEYS[3], 'report_url') == ARGV[4] then
  redis.call('HSET', KEYS[3], 'report_url', ARGV[5])
end
redis.call('HINCRBY', KEYS[3], 'reported', tonumber(ARGV[6]))
return acked
