-- Append audience events to a managed room's ingest stream and count them by type.
-- KEYS: ingest stream, state, message ids taken lately (by time).
-- ARGV: maxlen, viewers, viewers at, decided 0/1, backlog max, now ms, dedup window ms,
--       then per event: type, event JSON, message id ('' none), extra JSON ('' none).
-- Returns {written, duplicates}; -1 for a room that is not managed, -2 when the room's backlog (entries
-- not yet reported and trimmed) is at its bound: nothing is written.
local stream, state, seen = KEYS[1], KEYS[2], KEYS[3]
if redis.call('HGET', state, 'managed') ~= '1' then return -1 end
if redis.call('XLEN', stream) >= tonumber(ARGV[5]) then return -2 end
local now, window = tonumber(ARGV[6]), tonumber(ARGV[7])
local counts, written, duplicates, pruned = {}, 0, 0, false
for i = 8, #ARGV, 4 do
  local mid, fresh = ARGV[i + 2], true
  if mid ~= '' then
    if not pruned then
      redis.call('ZREMRANGEBYSCORE', seen, '-inf', now - window)
      pruned = true
    end
    fresh = redis.call('ZADD', seen, 'NX', now, mid) == 1
  end
  if fresh then
    local fields = {'event', ARGV[i + 1]}
    if ARGV[4] == '1' then table.insert(fields, 'd'); table.insert(fields, '1') end
    if mid ~= '' then table.insert(fields, 'm'); table.insert(fields, mid) end
    if ARGV[i + 3] ~= '' then table.insert(fields, 'x'); table.insert(fields, ARGV[i + 3]) end
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
    counts[ARGV[i]] = (counts[ARGV[i]] or 0) + 1
    written = written + 1
  else
    duplicates = duplicates + 1
  end
end
if pruned then redis.call('PEXPIRE', seen, window) end
for kind, n in pairs(counts) do redis.call('HINCRBY', state, 'audience:' .. kind, n) end
if ARGV[2] ~= '' then redis.call('HSET', state, 'viewers', ARGV[2], 'viewers_at', ARGV[3]) end
return {written, duplicates}
