-- Append audience events to a managed room's ingest stream and count them by type.
-- KEYS: ingest stream, state. ARGV: maxlen, viewers, viewers at, decided 0/1, number of types, (type, count)..., events...
-- Returns the number of events written, or -1 for a room that is not managed.
local stream, state = KEYS[1], KEYS[2]
if redis.call('HGET', state, 'managed') ~= '1' then return -1 end
local ntypes = tonumber(ARGV[5])
for i = 0, ntypes - 1 do
  redis.call('HINCRBY', state, 'audience:' .. ARGV[6 + 2 * i], ARGV[7 + 2 * i])
end
if ARGV[2] ~= '' then redis.call('HSET', state, 'viewers', ARGV[2], 'viewers_at', ARGV[3]) end
local first = 6 + 2 * ntypes
for i = first, #ARGV do
  if ARGV[4] == '1' then
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[i], 'd', '1')
  else
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[i])
  end
end
return #ARGV - first + 1
