-- Apply a batch of callbacks (the group commit, store/batch.py): for each, the checks (managed room,
-- known job, duplicate, replay), the state update by its kind (paragraph, link, reply_finished and
-- reply_failed; job_state publishes a hint the reconciler confirms; any other kind is recorded), the room's
-- event-stream entry and its reaction, atomically.
-- KEYS: 7 per callback -- state, events, jobs, replies, replies:meta, replies:done, seen:<callback id>.
-- ARGV[1]: the number of callbacks; ARGV[2..]: one JSON array per callback (store/rooms.py CallbackWrite):
--   event type, job id, event ms, received ms, message, events maxlen, seen TTL s, body digest, reactions
--   channel, room id, five kind-specific fields, kind, counter.
-- Returns one outcome per callback.
local MAX_DONE = $MAX_DONE
local function apply(k, a)
  local state, events, jobs, replies, meta, done, seen = k[1], k[2], k[3], k[4], k[5], k[6], k[7]
  local etype, job_id, event_ms, kind = a[1], a[2], tonumber(a[3]), a[16]
  if redis.call('HGET', state, 'managed') ~= '1' then return 'unknown_room' end
  if redis.call('SISMEMBER', jobs, job_id) == 0 then return 'unknown_job' end
  local prev = redis.call('GET', seen)
  if prev then
    if prev == a[8] then return 'duplicate' end
    return 'replay'
  end
  redis.call('SET', seen, a[8], 'EX', tonumber(a[7]))
  local function publish(kind, fields)
    fields['kind'] = kind
    fields['room_id'] = a[10]
    fields['job_id'] = job_id
    fields['at'] = a[3]
    redis.call('PUBLISH', a[9], cjson.encode(fields))
  end
  local outcome = 'applied'
  if redis.call('HGET', state, 'job_id') ~= job_id then
    outcome = 'stale_job'
  elseif kind == 'paragraph' then
    if event_ms < tonumber(redis.call('HGET', state, 'paragraph_at') or '0') then
      outcome = 'out_of_order'
    else
      local was = redis.call('HMGET', state, 'product_id', 'product_title')
      redis.call('HSET', state, 'scene', a[11], 'paragraph_seq', a[12], 'paragraph_title', a[13],
        'product_id', a[14], 'product_title', a[15], 'paragraph_at', a[3])
      -- the room's owner hears of the product only when it changes: every replica decodes every
      -- reaction, and paragraphs switch far more often than products (one per paragraph cost the
      -- callback path a third of its throughput in the benchmark)
      if was[1] ~= a[14] or was[2] ~= a[15] then
        publish('paragraph', {product_id = a[14], product_title = a[15]})
      end
    end
  elseif kind == 'link' then
    local field = 'rtmp:' .. a[11]
    local since = a[3]
    local old = redis.call('HGET', state, field)
    if old then
      local old_state, old_since, old_at = string.match(old, '^([^|]*)|([^|]*)|([^|]*)$')
      if event_ms < tonumber(old_at) then
        outcome = 'out_of_order'
      elseif old_state == a[12] then
        since = old_since
      end
    end
    if outcome == 'applied' then
      redis.call('HSET', state, field, a[12] .. '|' .. since .. '|' .. a[3])
      if a[12] == 'END' then publish('rtmp_end', {output_url = a[11]}) end
    end
  elseif kind == 'reply_finished' or kind == 'reply_failed' then
    -- a reply that failed at the vendor frees its slot as one that finished does
    if redis.call('SREM', replies, a[11]) == 0 then
      redis.call('SADD', done, a[11])
      redis.call('EXPIRE', done, 3600)
      -- bounded: a flood of unknown reply ids evicts at random rather than growing the set
      if redis.call('SCARD', done) > MAX_DONE then redis.call('SPOP', done) end
    end
    redis.call('HDEL', meta, a[11])
    publish(kind, {reply_id = a[11]})
  elseif kind == 'job_state' then
    -- the vendor's word on the job's status is a hint: the reconciler asks the vendor's API and acts
    publish('job_hint', {job_state = a[11]})
    outcome = 'recorded'
  else
    outcome = 'recorded'
  end
  -- the provider names the counter: its known types, and one 'other' for every type it does not know
  -- (the sender's string must not add fields without bound)
  redis.call('HINCRBY', state, 'count:' .. a[17], 1)
  if event_ms > tonumber(redis.call('HGET', state, 'last_event_at') or '0') then
    redis.call('HSET', state, 'last_event_at', a[3])
  end
  redis.call('XADD', events, 'MAXLEN', '~', a[6], '*', 'kind', 'callback', 'event_type', etype,
    'job_id', job_id, 'outcome', outcome, 'event_ms', a[3], 'received_ms', a[4], 'message', a[5])
  return outcome
end

local results = {}
for i = 0, tonumber(ARGV[1]) - 1 do
  local k = {}
  for j = 1, 7 do k[j] = KEYS[i * 7 + j] end
  results[i + 1] = apply(k, cjson.decode(ARGV[2 + i]))
end
return results
