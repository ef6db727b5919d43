"""Room state in Redis: one hash per room, a capped event stream, and the callback-apply script.

A room's state hash (``orch:{room}:state``) holds: ``managed``; ``job_id``, ``job_state``,
``job_state_at``; the current paragraph (``scene``, ``paragraph_seq``, ``paragraph_title``,
``product_id``, ``product_title``, ``paragraph_at``); one ``rtmp:<output url>`` field per output
(``STATE|since_ms|event_ms``); ``last_event_at``; and counters (``count:<event type>``). Replies in flight
are a set (``orch:{room}:replies``), the room's job ids another (``orch:{room}:jobs``).

A callback is applied by one Lua script (which takes a batch of callbacks: see ``store/batch.py``), so
its checks (managed room, known job, duplicate, replay), its state update, its event-stream entry and its
reactions happen atomically, in one round trip:

* a job that is not the room's current one is recorded (``stale_job``) but changes nothing;
* state never moves backwards: an RTMP state or paragraph older (by callback time) than what is stored is
  recorded as ``out_of_order`` and not applied;
* the callback's id (its signature) is remembered with the body's digest for the replay window: the same
  id and body again is a ``duplicate`` (acknowledged, not applied), the same id with another body a
  ``replay`` (rejected).

Every key the script touches carries the room's hash tag and is declared in ``KEYS``, so one room's
callbacks could run on a Redis Cluster; the group commit, though, puts several rooms in one script run, so
as built the daemon needs a standalone (or replicated/Sentinel) Redis -- a cluster would need the batches
split by slot and sent to each slot's node.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import orjson
import redis.asyncio as aioredis

from orchestrator import clock
from orchestrator.store import keys
from orchestrator.store.redis import text as _text

#: Keys and arguments one callback takes in APPLY_CALLBACKS_LUA (the script applies a batch of them). The
#: callback's fifteen values travel as one JSON array: packing one argument instead of fifteen is most of
#: what a batch costs on the client side.
CALLBACK_KEYS = 7
#: The first six keys of a call are the room's own, the same for all its callbacks (the batcher encodes
#: them once); the seventh is the callback's.
CALLBACK_ROOM_KEYS = 6
CALLBACK_ARGS = 1

#: Finishes kept for inserts not yet recorded (the finish won the race): a few per room are normal.
MAX_REPLIES_DONE = 1000

APPLY_CALLBACKS_LUA = """
local MAX_DONE = $MAX_DONE
local KNOWN = {SHOOT_SCRIPT_SWITCH = true, RTMP_STREAM_STATE_CHANGE = true, REPLY_COMMAND_FINISH = true}
local function apply(k, a)
  local state, events, jobs, replies, meta, done, seen = k[1], k[2], k[3], k[4], k[5], k[6], k[7]
  local etype, job_id, event_ms = a[1], a[2], tonumber(a[3])
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
  elseif etype == 'SHOOT_SCRIPT_SWITCH' then
    if event_ms < tonumber(redis.call('HGET', state, 'paragraph_at') or '0') then
      outcome = 'out_of_order'
    else
      redis.call('HSET', state, 'scene', a[11], 'paragraph_seq', a[12], 'paragraph_title', a[13],
        'product_id', a[14], 'product_title', a[15], 'paragraph_at', a[3])
    end
  elseif etype == 'RTMP_STREAM_STATE_CHANGE' then
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
  elseif etype == 'REPLY_COMMAND_FINISH' then
    if redis.call('SREM', replies, a[11]) == 0 then
      redis.call('SADD', done, a[11])
      redis.call('EXPIRE', done, 3600)
      -- bounded: a flood of unknown reply ids evicts at random rather than growing the set
      if redis.call('SCARD', done) > MAX_DONE then redis.call('SPOP', done) end
    end
    redis.call('HDEL', meta, a[11])
    publish('reply_finished', {reply_id = a[11]})
  else
    outcome = 'recorded'
  end
  -- one counter for every type we do not know: the sender's string must not add fields without bound
  redis.call('HINCRBY', state, 'count:' .. (KNOWN[etype] and etype or 'other'), 1)
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
""".replace("$MAX_DONE", str(MAX_REPLIES_DONE))

SET_JOB_STATE_LUA = """
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
"""


INGEST_LUA = """
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
"""


NEW_JOB_LUA = """
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
"""

MARK_RTMP_STALL_LUA = """
local state = KEYS[1]
local url, since = ARGV[1], ARGV[2]
local current = redis.call('HGET', state, 'rtmp:' .. url)
if not current then return 0 end
local link_state, link_since = string.match(current, '^([^|]*)|([^|]*)|')
if link_since ~= since or (link_state ~= 'DISCONNECTED' and link_state ~= 'RECONNECTING') then return 0 end
if redis.call('HGET', state, 'stall:' .. url) == since then return 0 end
redis.call('HSET', state, 'stall:' .. url, since)
local job_id = redis.call('HGET', state, 'job_id') or ''
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'kind', 'reaction', 'reaction', 'rtmp_stalled',
  'job_id', job_id, 'output_url', url, 'state', link_state, 'event_ms', since)
redis.call('PUBLISH', ARGV[4], cjson.encode({kind = 'rtmp_stalled', room_id = ARGV[5], job_id = job_id,
  output_url = url, state = link_state, since_ms = since}))
return 1
"""


class CallbackWrite(NamedTuple):
    """Everything the apply script needs for one callback, in the order it reads them.

    A named tuple rather than a frozen dataclass: one is made per callback, and a frozen dataclass's
    ``__init__`` (an ``object.__setattr__`` per field) costs several times as much.
    """

    room_id: str
    callback_id: str  # the signature, or a digest for unsigned callbacks
    event_type: str
    job_id: str
    event_ms: int
    received_ms: int
    message_json: str
    digest: str
    fields: tuple[str, ...]  # type-specific: scene..product_title | output_url, state | reply_id (≤ 5)

    def keys(self) -> list[str]:
        """The room's six keys (the same for every callback of the room: see ``CALLBACK_ROOM_KEYS``), then
        this callback's ``seen`` key."""
        *room_keys, seen_prefix = _callback_keys(self.room_id)
        return [*room_keys, seen_prefix + self.callback_id]

    def args(self, maxlen: int, seen_ttl_s: int) -> list[str]:
        """One argument: the script's fifteen values as a JSON array of strings."""
        values = [
            self.event_type,
            self.job_id,
            str(self.event_ms),
            str(self.received_ms),
            self.message_json,
            str(maxlen),
            str(seen_ttl_s),
            self.digest,
            _REACTIONS_CHANNEL,
            self.room_id,
            *self.fields,
            *_PADDING[len(self.fields) :],
        ]
        return [orjson.dumps(values).decode()]


_REACTIONS_CHANNEL = keys.reactions_channel()
_PADDING = ("",) * 5


@lru_cache(maxsize=4096)
def _callback_keys(room_id: str) -> tuple[str, str, str, str, str, str, str]:
    """A room's keys for the apply script (validated once per room, not once per key per callback); the
    last is the prefix of the per-callback ``seen`` key."""
    return (
        keys.room_state(room_id),
        keys.room_events(room_id),
        keys.room_jobs(room_id),
        keys.room_replies(room_id),
        keys.room_replies_meta(room_id),
        keys.room_replies_done(room_id),
        keys.room_seen(room_id, ""),
    )


@dataclass(frozen=True)
class RtmpLink:
    state: str
    since_ms: int
    event_ms: int


def _without_query(url: str) -> str:
    base, sep, _ = url.partition("?")
    return f"{base}?***" if sep else base


def decode_state(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """A room's state hash as a JSON-friendly dict (RTMP links and counters grouped)."""
    data = {_text(k): _text(v) for k, v in raw.items()}
    rtmp: dict[str, Any] = {}
    counters: dict[str, int] = {}
    plain: dict[str, Any] = {}
    for name, value in data.items():
        if name.startswith("rtmp:"):
            state, since, at = value.split("|")
            rtmp[name[5:]] = {"state": state, "since_ms": int(since), "event_ms": int(at)}
        elif name.startswith("count:"):
            counters[name[6:]] = int(value)
        elif name.startswith("stall:"):
            continue  # the watcher's bookkeeping
        elif name.startswith("alert_open:"):
            plain.setdefault("open_alerts", []).append(name[len("alert_open:") :])
        elif name == "report_url":
            plain[name] = _without_query(value)  # its query is the vendor's credential (auth_key)
        else:
            plain[name] = value
    return {**plain, "rtmp": rtmp, "counters": counters}


class RoomStore:
    """Reads and writes of room state; takes a Redis client, never a URL."""

    def __init__(self, redis: aioredis.Redis, *, events_maxlen: int = 10_000) -> None:
        self._redis = redis
        self._maxlen = events_maxlen
        self._set_job_state = redis.register_script(SET_JOB_STATE_LUA)
        self._mark_stall = redis.register_script(MARK_RTMP_STALL_LUA)
        self._new_job = redis.register_script(NEW_JOB_LUA)
        self._ingest = redis.register_script(INGEST_LUA)

    async def is_managed(self, room_id: str) -> bool:
        """Whether the room is managed here (one field read, not the whole state)."""
        return bool(await self._redis.hget(keys.room_state(room_id), "managed") == b"1")

    async def register_room(self, room_id: str) -> None:
        """Mark ``room_id`` as managed: callbacks naming it are applied from now on."""
        await self._redis.hset(keys.room_state(room_id), "managed", "1")
        await self._redis.sadd(keys.rooms_index(), room_id)

    async def unregister_room(self, room_id: str) -> None:
        await self._redis.hset(keys.room_state(room_id), "managed", "0")
        await self._redis.srem(keys.rooms_index(), room_id)

    async def set_current_job(
        self, room_id: str, job_id: str, job_state: str = "WAITING", *, report_url: str | None = None
    ) -> None:
        """Record a job started for the room; it becomes the one callbacks update, and starts with no
        RTMP links of its own (the previous job's links -- often END, from its stop -- are not its) and
        with its own ``live_event_report_url`` (none known: none at all -- never the previous job's)."""
        await self._new_job(
            keys=[keys.room_state(room_id), keys.room_events(room_id), keys.room_jobs(room_id)],
            args=[job_id, job_state, _now_ms(), self._maxlen, report_url or ""],
        )

    async def set_job_state(self, room_id: str, job_id: str, job_state: str) -> bool:
        """Update the current job's state; publishes a ``job_state`` reaction when it changed."""
        changed = await self._set_job_state(
            keys=[keys.room_state(room_id), keys.room_events(room_id)],
            args=[job_id, job_state, _now_ms(), self._maxlen, keys.reactions_channel(), room_id],
        )
        return bool(changed)

    async def mark_rtmp_stalled(self, room_id: str, output_url: str, since_ms: int) -> bool:
        """Publish ``rtmp_stalled`` for this link's current outage, once across every replica."""
        marked = await self._mark_stall(
            keys=[keys.room_state(room_id), keys.room_events(room_id)],
            args=[output_url, since_ms, self._maxlen, keys.reactions_channel(), room_id],
        )
        return bool(marked)

    async def ingest(
        self, room_id: str, events: list[dict[str, Any]], *, maxlen: int = 100_000, decided: bool = False
    ) -> bool:
        """Append audience events to the room's ingest stream (in wire form: ``content`` as a JSON string)
        and count them -- one script, one round trip, and nothing written unless the room is managed
        (then False). The latest viewer count of the batch (by timestamp) becomes the room's ``viewers``.
        The stream keeps at most about ``maxlen`` entries (the oldest are trimmed). ``decided``: the room's
        owner decides replies for these itself (entries marked ``d``, so its reader does not again)."""
        counts: dict[int, int] = {}
        wires = []
        latest: dict[str, Any] | None = None
        for event in events:
            counts[event["type"]] = counts.get(event["type"], 0) + 1
            wires.append(orjson.dumps({**event, "content": orjson.dumps(event["content"]).decode()}))
            if event["type"] == 6 and (latest is None or event["timestamp"] >= latest["timestamp"]):
                latest = event
        viewers = ["", ""] if latest is None else [latest["content"]["numberOfViewers"], latest["timestamp"]]
        pairs = [value for item in counts.items() for value in item]
        written = await self._ingest(
            keys=[keys.room_ingest(room_id), keys.room_state(room_id)],
            args=[maxlen, *viewers, "1" if decided else "0", len(counts), *pairs, *wires],
        )
        return int(written) >= 0

    async def add_reply(self, room_id: str, reply_id: str) -> None:
        await self._redis.sadd(keys.room_replies(room_id), reply_id)

    async def replies_in_flight(self, room_id: str) -> set[str]:
        return {_text(m) for m in await self._redis.smembers(keys.room_replies(room_id))}

    async def state(self, room_id: str) -> dict[str, Any] | None:
        """The room's state, or None if the room is not managed."""
        raw: Mapping[Any, Any] = await self._redis.hgetall(keys.room_state(room_id))
        if raw.get(b"managed") != b"1":
            return None
        state = decode_state(raw)
        state["replies_in_flight"] = sorted(await self.replies_in_flight(room_id))
        return state

    async def rooms(self) -> list[str]:
        return sorted(_text(m) for m in await self._redis.smembers(keys.rooms_index()))

    async def events(self, room_id: str, *, since: str = "-", limit: int = 100) -> list[dict[str, Any]]:
        """Stream entries after ``since`` (an entry id; ``-`` from the start), oldest first."""
        start = since if since == "-" else f"({since}"
        entries = await self._redis.xrange(keys.room_events(room_id), min=start, count=limit)
        return [_entry(entry_id, fields) for entry_id, fields in entries or []]

    async def audit(self, entry: Mapping[str, str | int]) -> None:
        fields: dict[Any, Any] = dict(entry)
        await self._redis.xadd(keys.callbacks_audit(), fields, maxlen=self._maxlen, approximate=True)

    async def audit_entries(self, limit: int = 100) -> list[dict[str, Any]]:
        entries = await self._redis.xrange(keys.callbacks_audit(), count=limit)
        return [_entry(entry_id, fields) for entry_id, fields in entries or []]


def _entry(entry_id: Any, fields: Mapping[Any, Any] | None) -> dict[str, Any]:
    data: dict[str, Any] = {_text(k): _text(v) for k, v in (fields or {}).items()}
    if "message" in data:
        data["message"] = json.loads(data["message"])
    data["id"] = _text(entry_id)
    return data


def _now_ms() -> int:
    return clock.time_ms()
