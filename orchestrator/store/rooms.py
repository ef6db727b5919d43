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

Every key the script touches carries the room's hash tag and is declared in ``KEYS``: on a Redis Cluster
the group commit splits a batch by slot and sends each part to its slot's master (``store/batch.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import orjson
import redis.asyncio as aioredis

from orchestrator import clock
from orchestrator.providers.registry import DEFAULT_PROVIDER
from orchestrator.store import keys, scripts
from orchestrator.store.batch import ScriptBatcher
from orchestrator.store.redis import (
    PackedCommands,
    chunks,
    execute_packed,
    packed,
    pairs,
    run_script_durably,
)
from orchestrator.store.redis import text as _text

#: Keys and arguments one callback takes in APPLY_CALLBACKS_LUA (the script applies a batch of them). The
#: callback's seventeen values travel as one JSON array: packing one argument instead of seventeen is most of
#: what a batch costs on the client side.
CALLBACK_KEYS = 7
#: The first six keys of a call are the room's own, the same for all its callbacks (the batcher encodes
#: them once); the seventh is the callback's.
CALLBACK_ROOM_KEYS = 6
CALLBACK_ARGS = 1

#: Finishes kept for inserts not yet recorded (the finish won the race): a few per room are normal.
MAX_REPLIES_DONE = 1000

APPLY_CALLBACKS_LUA = scripts.source("apply_callbacks", MAX_DONE=MAX_REPLIES_DONE)

SET_JOB_STATE_LUA = scripts.source("set_job_state")


INGEST_LUA = scripts.source("ingest")
#: What an ingested event carries beside its LiveEvent fields (kept in the entry, not reported).
PRIVATE_FIELDS = frozenset({"message_id", "extra"})


def parse_muted(raw: bytes | str | None) -> frozenset[str]:
    """A room state's ``muted`` field (comma-separated reaction kinds) as a set."""
    return frozenset(_text(raw).split(",")) - {""} if raw else frozenset()


class Ingested(NamedTuple):
    managed: bool
    backlog_full: bool
    written: int
    duplicates: int
    #: Sheddable events not written: the room's backlog was past ``shed_at``.
    shed: int = 0


#: What an overloaded room sheds first (likes, viewer counts): nothing a reply depends on is in them, and a
#: viewer count is kept in the room's state all the same.
SHEDDABLE_TYPES = frozenset({3, 6})


NEW_JOB_LUA = scripts.source("new_job")

MARK_RTMP_STALL_LUA = scripts.source("mark_rtmp_stall")


class CallbackWrite(NamedTuple):
    """Everything the apply script needs for one callback, in the order it reads them.

    A named tuple rather than a frozen dataclass: one is made per callback, and a frozen dataclass's
    ``__init__`` (an ``object.__setattr__`` per field) costs several times as much.
    """

    room_id: str
    callback_id: str  # the signature, or a digest for unsigned callbacks
    event_type: str  # the vendor's name of it, as recorded
    job_id: str
    event_ms: int
    received_ms: int
    message_json: str
    digest: str
    fields: tuple[str, ...]  # by kind: scene..product_title | output, state | reply_id | status (≤ 5)
    kind: str = "other"  # what the script does: a RoomEvent kind (paragraph, link, reply_finished, ...)
    counter: str = "other"  # the room counter it adds to (the provider bounds the names)

    def keys(self) -> list[str]:
        """The room's six keys (the same for every callback of the room: see ``CALLBACK_ROOM_KEYS``), then
        this callback's ``seen`` key."""
        *room_keys, seen_prefix = _callback_keys(self.room_id)
        return [*room_keys, seen_prefix + self.callback_id]

    def args(self, maxlen: int, seen_ttl_s: int) -> list[str]:
        """One argument: the script's seventeen values as a JSON array of strings."""
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
            self.kind,
            self.counter,
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
            rtmp[name[5:]] = _link(value)
        elif name.startswith("count:"):
            counters[name[6:]] = int(value)
        elif name.startswith("stall:"):
            continue  # the watcher's bookkeeping
        elif name.startswith("alert_open:"):
            plain.setdefault("open_alerts", []).append(name[len("alert_open:") :])
            plain.setdefault("alerts_since", {})[name[len("alert_open:") :]] = int(value)
        elif name == "report_url":
            plain[name] = _without_query(value)  # its query is the vendor's credential (auth_key)
        else:
            plain[name] = value
    return {**plain, "rtmp": rtmp, "counters": counters}


def _link(value: str) -> dict[str, Any]:
    state, since, at = value.split("|")
    return {"state": state, "since_ms": int(since), "event_ms": int(at)}


def callback_batcher(
    redis: aioredis.Redis,
    *,
    timeout_s: float,
    on_batch: Callable[[int], None] | None = None,
    wait_replicas: int = 0,
    wait_timeout_ms: int = 200,
) -> ScriptBatcher:
    """The group-commit writer of callbacks: :class:`CallbackWrite` values, many per script run (each
    batch confirmed by ``wait_replicas`` Redis replicas before its callers resume, when asked)."""
    return ScriptBatcher(
        redis,
        APPLY_CALLBACKS_LUA,
        keys_per_call=CALLBACK_KEYS,
        args_per_call=CALLBACK_ARGS,
        repeated_keys=CALLBACK_ROOM_KEYS,
        timeout_s=timeout_s,
        on_batch=on_batch,
        wait_replicas=wait_replicas,
        wait_timeout_ms=wait_timeout_ms,
    )


class RoomStore:
    """Reads and writes of room state; takes a Redis client, never a URL."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        events_maxlen: int = 10_000,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 200,
    ) -> None:
        """``wait_replicas``: :meth:`ingest` returns once that many Redis replicas have the events
        (``WAIT``, up to ``wait_timeout_ms``; fewer raise NotReplicated)."""
        self._redis = redis
        self._maxlen = events_maxlen
        self._wait = (wait_replicas, wait_timeout_ms)
        self._set_job_state = redis.register_script(SET_JOB_STATE_LUA)
        self._mark_stall = redis.register_script(MARK_RTMP_STALL_LUA)
        self._new_job = redis.register_script(NEW_JOB_LUA)
        self._ingest = redis.register_script(INGEST_LUA)
        self._state_read = PackedCommands(lambda room_id: packed("HGETALL", keys.room_state(room_id)))
        self._queue_depth = PackedCommands(lambda room_id: packed("ZCARD", keys.room_reply_queue(room_id)))
        self._oldest_event = PackedCommands(
            lambda room_id: packed("XRANGE", keys.room_ingest(room_id), "-", "+", "COUNT", 1)
        )
        self._links_read = PackedCommands(
            lambda room_id: packed("HSCAN", keys.room_state(room_id), 0, "MATCH", "rtmp:*", "COUNT", 10_000)
        )

    async def is_managed(self, room_id: str) -> bool:
        """Whether the room is managed here (one field read, not the whole state)."""
        return bool(await self._redis.hget(keys.room_state(room_id), "managed") == b"1")

    async def register_room(
        self,
        room_id: str,
        provider: str = DEFAULT_PROVIDER,
        *,
        policy: str | None = None,
        timezone: str = "UTC",
    ) -> None:
        """Mark ``room_id`` as managed (callbacks naming it are applied from now on) by ``provider``,
        answering by the reply policy named ``policy`` ("": the default one), in ``timezone`` (its
        schedule's: its timed messages' clock)."""
        await self._redis.hset(
            keys.room_state(room_id),
            mapping={"managed": "1", "provider": provider, "policy": policy or "", "timezone": timezone},
        )
        await self._redis.sadd(keys.rooms_index(), room_id)

    async def unregister_room(self, room_id: str) -> None:
        await self._redis.hset(keys.room_state(room_id), "managed", "0")
        await self._redis.srem(keys.rooms_index(), room_id)

    async def muted(self, room_id: str) -> set[str]:
        """The reaction kinds switched off in the room (its state's ``muted``)."""
        return set(parse_muted(await self._redis.hget(keys.room_state(room_id), "muted")))

    async def review_s(self, room_id: str) -> float:
        """How long the room's automatic replies wait for review before they expire (0: no review)."""
        return float(await self._redis.hget(keys.room_state(room_id), "review_s") or 0)

    async def set_review_s(self, room_id: str, expire_s: float) -> None:
        await self._redis.hset(keys.room_state(room_id), "review_s", expire_s)

    async def set_muted(self, room_id: str, kinds: set[str]) -> None:
        await self._redis.hset(keys.room_state(room_id), "muted", ",".join(sorted(kinds)))

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
        self,
        room_id: str,
        events: list[dict[str, Any]],
        *,
        maxlen: int = 100_000,
        decided: bool = False,
        backlog_max: int = 1_000_000_000,
        dedup_window_s: float = 600.0,
        shed_at: int | None = None,
    ) -> Ingested:
        """Append audience events to the room's ingest stream (in wire form: ``content`` as a JSON string)
        and count them -- one script, one round trip, and nothing written unless the room is managed
        (``managed`` False) and its backlog (entries not yet reported) is under ``backlog_max``
        (``backlog_full``). An event's ``message_id`` (the platform's) is taken once per
        ``dedup_window_s``: a resent one is counted in ``duplicates``, not written; its ``extra`` travels
        in the entry, never to the vendor. The latest viewer count of the batch (by timestamp) becomes the
        room's ``viewers``. The stream keeps at most about ``maxlen`` entries (the oldest are trimmed).
        ``decided``: the room's owner decides replies for these itself (entries marked ``d``, so its reader
        does not again). Past ``shed_at`` entries of backlog, likes and viewer counts are not written
        (``shed``): comments, gifts, joins and follows go first."""
        args: list[Any] = []
        counts: dict[int, int] = {}  # of the plain events kept (the others are counted by the script)
        shed_counts: dict[int, int] = {}  # of the plain sheddable ones (counted only when written)
        latest: dict[str, Any] | None = None
        for event in events:
            sheddable = event["type"] in SHEDDABLE_TYPES
            content = orjson.dumps(event["content"]).decode()
            if "message_id" in event or "extra" in event:
                wire = {k: v for k, v in event.items() if k not in PRIVATE_FIELDS}
                wire["content"] = content
                extra = event.get("extra")
                mid = str(event.get("message_id") or "")
                extra_json = orjson.dumps(extra) if extra else b""
                args.append(
                    b"%s\x01%d\x01%s\x01%s\x01%s"
                    % (
                        b"\x02" if sheddable else b"",
                        event["type"],
                        mid.encode().replace(b"\x01", b""),
                        extra_json,
                        orjson.dumps(wire),
                    )
                )
            else:
                counted = shed_counts if sheddable else counts
                counted[event["type"]] = counted.get(event["type"], 0) + 1
                wire_json = orjson.dumps({**event, "content": content})
                args.append(b"\x02" + wire_json if sheddable else wire_json)
            if event["type"] == 6 and (latest is None or event["timestamp"] >= latest["timestamp"]):
                latest = event
        viewers = ["", ""] if latest is None else [latest["content"]["numberOfViewers"], latest["timestamp"]]
        answer = await run_script_durably(
            self._redis,
            self._ingest,
            [keys.room_ingest(room_id), keys.room_state(room_id), keys.room_message_ids(room_id)],
            [
                maxlen,
                *viewers,
                "1" if decided else "0",
                backlog_max,
                clock.time_ms(),
                max(1, int(dedup_window_s * 1000)),
                backlog_max if shed_at is None else shed_at,
                len(counts),
                *[value for item in counts.items() for value in item],
                len(shed_counts),
                *[value for item in shed_counts.items() for value in item],
                *args,
            ],
            replicas=self._wait[0],
            timeout_ms=self._wait[1],
        )
        if isinstance(answer, list):
            return Ingested(True, False, int(answer[0]), int(answer[1]), int(answer[2]))
        return Ingested(int(answer) != -1, int(answer) == -2, 0, 0)

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

    async def observe(self, room_id: str, *, restarts_since_s: float) -> tuple[dict[str, Any], list[float]]:
        """What the reconciler looks at for a room, in one round trip: its state (as :meth:`states` gives
        it; empty if the room is not managed) and the times of its restarts since ``restarts_since_s``.
        (Three round trips a room were a third of the Redis commands of 1,000 idle live rooms.)"""
        state, restarts = await execute_packed(
            self._redis,
            [
                self._state_read(room_id),
                packed("ZRANGEBYSCORE", keys.room_restarts(room_id), repr(restarts_since_s), "+inf"),
            ],
        )
        for answer in (state, restarts):
            if isinstance(answer, Exception):
                raise answer
        raw = pairs(state)
        return (decode_state(raw) if raw.get(b"managed") == b"1" else {}), [float(r) for r in restarts]

    async def states(self, room_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The managed rooms' states (without ``replies_in_flight``), read in pipelines of
        :data:`PIPELINE_CHUNK` rooms: a look at every room is a few round trips, not one per room."""
        found: dict[str, dict[str, Any]] = {}
        for chunk in chunks(room_ids):
            answers = await execute_packed(self._redis, [self._state_read(r) for r in chunk])
            for room_id, answer in zip(chunk, answers, strict=True):
                if isinstance(answer, Exception):
                    raise answer
                raw = pairs(answer)
                if raw.get(b"managed") == b"1":
                    found[room_id] = decode_state(raw)
        return found

    async def links(self, room_ids: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """The RTMP links of the rooms that have any, as in :meth:`state` (``{output url: {state, since_ms,
        event_ms}}``): those fields alone (``HSCAN ... MATCH rtmp:*``, pipelined), for the stall watcher's
        pass over every room -- whole states were most of its cost."""
        found: dict[str, dict[str, dict[str, Any]]] = {}
        for chunk in chunks(room_ids):
            answers = await execute_packed(self._redis, [self._links_read(r) for r in chunk])
            for room_id, answer in zip(chunk, answers, strict=True):
                if isinstance(answer, Exception):
                    raise answer
                cursor, flat = answer
                if _text(cursor) != "0":  # more than one step's worth of fields: never for a room's state
                    state = await self.state(room_id)
                    links = state.get("rtmp", {}) if state else {}
                else:
                    links = {_text(k)[5:]: _link(_text(v)) for k, v in pairs(flat).items()}
                if links:
                    found[room_id] = links
        return found

    async def gauges(self, room_ids: list[str], *, since_s: float) -> dict[str, tuple[int, int, int | None]]:
        """For the room metrics, each room's replies waiting, restarts since ``since_s`` and the time (ms)
        of the oldest audience event not yet reported (None: none waits) -- pipelined, packed commands."""
        found: dict[str, tuple[int, int, int | None]] = {}
        since = repr(since_s)
        for chunk in chunks(room_ids):
            commands: list[bytes] = []
            for room_id in chunk:
                commands += (
                    self._queue_depth(room_id),
                    packed("ZCOUNT", keys.room_restarts(room_id), since, "+inf"),
                    self._oldest_event(room_id),
                )
            answers = await execute_packed(self._redis, commands)
            for index, room_id in enumerate(chunk):
                depth, restarts, oldest = answers[index * 3 : index * 3 + 3]
                for answer in (depth, restarts, oldest):
                    if isinstance(answer, Exception):
                        raise answer
                found[room_id] = (
                    int(depth),
                    int(restarts),
                    int(_text(oldest[0][0]).split("-")[0]) if oldest else None,
                )
        return found

    async def rooms(self) -> list[str]:
        return sorted(_text(m) for m in await self._redis.smembers(keys.rooms_index()))

    async def events(self, room_id: str, *, since: str = "-", limit: int = 100) -> list[dict[str, Any]]:
        """Stream entries after ``since`` (an entry id; ``-`` from the start), oldest first."""
        start = since if since == "-" else f"({since}"
        entries = await self._redis.xrange(keys.room_events(room_id), min=start, count=limit)
        return [decode_entry(entry_id, fields) for entry_id, fields in entries or []]

    async def latest_events(self, room_id: str, count: int) -> list[dict[str, Any]]:
        """The latest ``count`` entries, oldest first."""
        entries = await self._redis.xrevrange(keys.room_events(room_id), count=count)
        return [decode_entry(entry_id, fields) for entry_id, fields in reversed(entries or [])]

    async def audit(self, entry: Mapping[str, str | int]) -> None:
        fields: dict[Any, Any] = dict(entry)
        await self._redis.xadd(keys.callbacks_audit(), fields, maxlen=self._maxlen, approximate=True)

    async def audit_entries(self, limit: int = 100) -> list[dict[str, Any]]:
        entries = await self._redis.xrange(keys.callbacks_audit(), count=limit)
        return [decode_entry(entry_id, fields) for entry_id, fields in entries or []]


def decode_entry(entry_id: Any, fields: Mapping[Any, Any] | None) -> dict[str, Any]:
    data: dict[str, Any] = {_text(k): _text(v) for k, v in (fields or {}).items()}
    if "message" in data:
        data["message"] = json.loads(data["message"])
    data["id"] = _text(entry_id)
    return data


def _now_ms() -> int:
    return clock.time_ms()
