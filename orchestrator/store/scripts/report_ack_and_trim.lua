-- Acknowledge a reported batch and trim the stream behind it -- but never past the group's oldest entry
-- still pending (another consumer's, read before it lost the room: the owner claims those a lease later).
-- Soak finding: trimming to the first entry the owner itself still needed deleted them, unreported.
-- The marker goes only if it still names this batch: a worker that lost the room while its batch was out
-- must not delete the successor's marker.
-- KEYS: stream, marker. ARGV: group, the owner's trim point, the batch id, the batch's entry ids...
-- Returns how many entries were acknowledged.
local function before(a, b)
  local am, as = string.match(a, '^(%d+)-?(%d*)$')
  local bm, bs = string.match(b, '^(%d+)-?(%d*)$')
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then return am < bm end
  return (tonumber(as) or 0) < (tonumber(bs) or 0)
end
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 4))
if redis.call('HGET', KEYS[2], 'batch_id') == ARGV[3] then redis.call('DEL', KEYS[2]) end
local keep = ARGV[2]
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
if pending[1] > 0 and before(pending[2], keep) then keep = pending[2] end
redis.call('XTRIM', KEYS[1], 'MINID', '~', keep)
return acked
