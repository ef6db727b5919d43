-- Append audience events to a managed room's ingest stream and count them by type.
-- KEYS: ingest stream, state, message ids taken lately (by time).
-- ARGV: maxlen, viewers, viewers at, decided 0/1, backlog max, now ms, dedup window ms, shed at (a
--       backlog from which the sheddable events are not written), number of types, (type, count)... of the
--       plain events that are always kept, number of sheddable types, (type, count)... of the plain
--       sheddable ones, then one argument per event, in order: a plain event is its JSON ('{...'); one with
--       a message id or extra fields is "\1type\1message id\1extra JSON\1event JSON" (counted here: it may
--       be a duplicate); a sheddable event (likes, viewer counts: the caller chooses) is either, behind
--       "\2". One argument per event: the command is packed per argument.
-- Returns {written, duplicates, shed}; -1 for a room that is not managed, -2 when the room's backlog
-- (entries not yet reported and trimmed) is at its bound: nothing is written. Past "shed at" the
-- sheddable events (likes, viewer counts: the caller chooses) are counted under audience:shed instead.
local stream, state, seen = KEYS[1], KEYS[2], KEYS[3]
if redis.call('HGET', state, 'managed') ~= '1' then return -1 end
local backlog = redis.call('XLEN', stream)
if backlog >= tonumber(ARGV[5]) then return -2 end
local now, window = tonumber(ARGV[6]), tonumber(ARGV[7])
local shedding = backlog >= tonumber(ARGV[8])
local counts, ntypes = {}, tonumber(ARGV[9])
local at = 10
for i = 0, ntypes - 1 do counts[ARGV[at + 2 * i]] = tonumber(ARGV[at + 1 + 2 * i]) end
at = at + 2 * ntypes
local nshed = tonumber(ARGV[at])
at = at + 1
if not shedding then
  for i = 0, nshed - 1 do
    local kind = ARGV[at + 2 * i]
    counts[kind] = (counts[kind] or 0) + tonumber(ARGV[at + 1 + 2 * i])
  end
end
at = at + 2 * nshed
local shed = 0
local decided = ARGV[4] == '1'
local written, duplicates, pruned = 0, 0, false
for i = at, #ARGV do
  local arg = ARGV[i]
  local fields
  local first = string.byte(arg, 1)
  if first == 2 then
    if shedding then
      shed = shed + 1
      arg = nil
    else
      arg = string.sub(arg, 2)
      first = string.byte(arg, 1)
    end
  end
  if arg == nil then
    fields = nil
  elseif first == 1 then
    local kind, mid, extra, event = string.match(arg, '^\1([^\1]*)\1([^\1]*)\1([^\1]*)\1(.*)$')
    local fresh = true
    if mid ~= '' then
      if not pruned then
        redis.call('ZREMRANGEBYSCORE', seen, '-inf', now - window)
        pruned = true
      end
      fresh = redis.call('ZADD', seen, 'NX', now, mid) == 1
    end
    if fresh then
      fields = {'event', event}
      if mid ~= '' then table.insert(fields, 'm'); table.insert(fields, mid) end
      if extra ~= '' then table.insert(fields, 'x'); table.insert(fields, extra) end
      counts[kind] = (counts[kind] or 0) + 1
    else
      duplicates = duplicates + 1
    end
  else
    fields = {'event', arg}
  end
  if fields then
    if decided then table.insert(fields, 'd'); table.insert(fields, '1') end
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
    written = written + 1
  end
end
if pruned then redis.call('PEXPIRE', seen, window) end
for kind, n in pairs(counts) do redis.call('HINCRBY', state, 'audience:' .. kind, n) end
if shed > 0 then redis.call('HINCRBY', state, 'audience:shed', shed) end
if ARGV[2] ~= '' then redis.call('HSET', state, 'viewers', ARGV[2], 'viewers_at', ARGV[3]) end
return {written, duplicates, shed}
