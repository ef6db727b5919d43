"""A room's reply queue in Redis: replies waiting to be inserted, and replies in flight.

Waiting replies are a sorted set ``orch:{room}:replyq`` (score: priority band × 10¹³ + enqueue ms, so
``ZPOPMIN`` takes the most important, then the oldest) with their bodies in ``orch:{room}:replyq:items``.
Priorities, most important first: ``operator`` (typed by a person), ``gift`` (thanks), ``question``,
``idle`` (filler). At most ``max_pending`` wait: a new reply beyond that evicts the least important
waiting one (the newest of its band) if it is more important than that, and is dropped otherwise.

Replies in flight are the set ``orch:{room}:replies`` (the callback script removes a reply when its finish --
MetaStudio's REPLY_COMMAND_FINISH -- arrives) with ``orch:{room}:replies:meta`` (priority, text, send time)
beside it. A finish can arrive before the insert's response has been recorded; the callback script then notes
the id in ``orch:{room}:replies:done`` and :meth:`ReplyQueue.record_sent` does not count it as in flight.

Every operation is one script on the room's keys (one hash tag), so it is atomic on a Redis Cluster too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from orchestrator import clock
from orchestrator.domain import PRIORITIES, Priority
from orchestrator.store import keys, scripts
from orchestrator.store.redis import run_scripts
from orchestrator.store.redis import text as _text

BAND = 10**13
PRIORITY_ORDER = {p: i for i, p in enumerate(PRIORITIES)}

ENQUEUE_LUA = scripts.source("reply_enqueue")

POP_LUA = scripts.source("reply_pop")
TAKE_LUA = scripts.source("reply_take")

PUSH_BACK_LUA = scripts.source("reply_push_back")

RECORD_SENT_LUA = scripts.source("reply_record_sent")

FORGET_LUA = scripts.source("reply_forget")

#: Delete a key if it still holds the caller's value (the lease's script: the same compare-and-delete).
RELEASE_LUA = scripts.source("lease_release")


@dataclass(frozen=True)
class Reply:
    text: str
    priority: Priority
    play_type: str | None = None
    rule_index: str | None = None
    reply_id: str = ""
    enqueued_ms: int = 0
    #: When the audience event it answers arrived at the daemon (s, the daemon's clock; 0: none did).
    arrived_s: float = 0.0

    @property
    def score(self) -> int:
        return PRIORITY_ORDER[self.priority] * BAND + self.enqueued_ms

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "text": self.text,
                "priority": self.priority,
                "play_type": self.play_type,
                "rule_index": self.rule_index,
                "enqueued_ms": self.enqueued_ms,
                "arrived_s": self.arrived_s,
            }
        )

    @classmethod
    def from_json(cls, reply_id: str, body: bytes | str) -> Reply:
        data = orjson.loads(body)
        return cls(
            text=data["text"],
            priority=data["priority"],
            play_type=data.get("play_type"),
            rule_index=data.get("rule_index"),
            reply_id=reply_id,
            enqueued_ms=int(data.get("enqueued_ms") or 0),
            arrived_s=float(data.get("arrived_s") or 0.0),
        )


@dataclass(frozen=True)
class InFlight:
    reply_id: str
    priority: Priority
    text: str
    sent_ms: int


@dataclass(frozen=True)
class Taken:
    """What :meth:`ReplyQueue.take` did and saw."""

    #: Each reply queued: (``queued`` or ``dropped``, its id, the id of a reply it evicted or None).
    queued: list[tuple[str, str, str | None]]
    in_flight: list[InFlight]
    #: Taken from the queue to be said now.
    taken: list[Reply]
    #: The priority of the most important reply still waiting, if any waits.
    waiting: Priority | None


class ReplyQueue:
    def __init__(self, redis: aioredis.Redis, *, max_pending: int = 15, events_maxlen: int = 10_000) -> None:
        self.max_pending = max_pending
        self.events_maxlen = events_maxlen
        self._redis = redis
        self._enqueue = redis.register_script(ENQUEUE_LUA)
        self._pop = redis.register_script(POP_LUA)
        self._take = redis.register_script(TAKE_LUA)
        self._push_back = redis.register_script(PUSH_BACK_LUA)
        self._record_sent = redis.register_script(RECORD_SENT_LUA)
        self._forget = redis.register_script(FORGET_LUA)
        self._release = redis.register_script(RELEASE_LUA)

    @staticmethod
    def _queue_keys(room_id: str) -> list[str]:
        return [keys.room_reply_queue(room_id), keys.room_reply_items(room_id)]

    @staticmethod
    def _flight_keys(room_id: str) -> list[str]:
        return [keys.room_replies(room_id), keys.room_replies_meta(room_id), keys.room_replies_done(room_id)]

    async def enqueue(self, room_id: str, reply: Reply, **record: str | int) -> tuple[str, str, str | None]:
        """Queue ``reply``: (``queued`` or ``dropped``, its id, the id of a less important reply evicted or
        None). The room's event stream records it (``reply_queued``/``reply_dropped`` with ``record``)."""
        return (await self.enqueue_many(room_id, [(reply, record)]))[0]

    async def enqueue_many(
        self, room_id: str, replies: list[tuple[Reply, dict[str, str | int]]]
    ) -> list[tuple[str, str, str | None]]:
        """:meth:`enqueue` for several replies, in order, in one round trip."""
        ids, calls = self._enqueue_calls(room_id, replies)
        results = await run_scripts(self._redis, calls)
        return _enqueued(ids, results)

    def _enqueue_calls(
        self, room_id: str, replies: list[tuple[Reply, dict[str, str | int]]]
    ) -> tuple[list[str], list[tuple[AsyncScript, list[str], list[Any]]]]:
        now_ms = clock.time_ms()
        script_keys = [*self._queue_keys(room_id), keys.room_events(room_id)]
        ids: list[str] = []
        calls: list[tuple[AsyncScript, list[str], list[Any]]] = []
        for i, (reply, record) in enumerate(replies):
            reply_id = reply.reply_id or uuid.uuid4().hex
            # A millisecond apart: replies queued together keep their order in their band (the same score
            # would order them by their random ids).
            enqueued_ms = reply.enqueued_ms or now_ms + i
            full = replace(reply, reply_id=reply_id, enqueued_ms=enqueued_ms)
            fields = {"priority": full.priority, "text": full.text, "event_ms": now_ms, **record}
            flat = [value for pair in fields.items() for value in pair]
            args = [reply_id, full.score, full.to_json(), self.max_pending, self.events_maxlen, *flat]
            calls.append((self._enqueue, script_keys, args))
            ids.append(reply_id)
        return ids, calls

    async def take(self, room_id: str, replies: list[tuple[Reply, str]], max_in_flight: int) -> Taken:
        """A pacer's pass in one round trip: queue ``replies`` (:meth:`enqueue_sourced`), then the replies
        in flight (:meth:`in_flight`) and -- while fewer than ``max_in_flight`` are, and the replies are
        not held -- the most important waiting ones, taken from the queue to fill the free places
        (:meth:`pop`, as many as are free)."""
        ids, calls = self._enqueue_calls(room_id, _sourced(replies))
        take_keys = [*self._queue_keys(room_id), keys.room_replies_hold(room_id)]
        calls.append((self._take, [*take_keys, *self._flight_keys(room_id)[:2]], [max_in_flight]))
        *results, (members, records, taken, head) = await run_scripts(self._redis, calls)
        flights = await self._flights(room_id, members, dict(zip(records[::2], records[1::2], strict=True)))
        replies_taken = [
            Reply.from_json(_text(taken[i]), taken[i + 2])
            for i in range(0, len(taken), 3)
            if taken[i + 2] is not None
        ]
        waiting = PRIORITIES[int(float(head)) // BAND] if head else None
        return Taken(_enqueued(ids, results), flights, replies_taken, waiting)

    async def enqueue_sourced(
        self, room_id: str, replies: list[tuple[Reply, str]]
    ) -> list[tuple[str, str, str | None]]:
        """:meth:`enqueue_many` with where each reply came from (``source``) in its record."""
        return await self.enqueue_many(room_id, _sourced(replies))

    async def prepare_for_job(self, room_id: str, job_id: str) -> None:
        """A new job starts with an empty reply queue: the previous job's replies died with it. With no
        previous job on record there is nothing to drop -- replies queued or in flight for this job before
        its worker started (an operator's, a finish on its way) are this job's and stay."""
        previous = await self._redis.hget(keys.room_state(room_id), "replies_job")
        if previous is not None and _text(previous) != job_id:
            await self.clear(room_id)
        if previous is None or _text(previous) != job_id:
            await self._redis.hset(keys.room_state(room_id), "replies_job", job_id)

    async def pop(self, room_id: str) -> Reply | None:
        """The most important waiting reply, removed from the queue; None when none waits, or while the
        room's replies are held (:meth:`hold`)."""
        top = await self._pop(keys=[*self._queue_keys(room_id), keys.room_replies_hold(room_id)])
        if not top:
            return None
        return Reply.from_json(_text(top[0]), top[2])

    async def hold(self, room_id: str, holder: str, ttl_s: float) -> bool:
        """Hold the room's replies (none is said) for ``ttl_s`` real seconds, renewed by calling again;
        False when another holder has them."""
        hold_key = keys.room_replies_hold(room_id)
        taken = await self._redis.set(hold_key, holder, px=int(ttl_s * 1000), nx=True)
        if taken:
            return True
        if _text(await self._redis.get(hold_key) or b"") == holder:
            await self._redis.pexpire(hold_key, int(ttl_s * 1000))
            return True
        return False

    async def release(self, room_id: str, holder: str) -> None:
        """Let the room's replies go again, if ``holder`` still holds them."""
        await self._release(keys=[keys.room_replies_hold(room_id)], args=[holder])

    async def holder(self, room_id: str) -> str | None:
        value = await self._redis.get(keys.room_replies_hold(room_id))
        return _text(value) if value else None

    async def push_back(self, room_id: str, reply: Reply) -> None:
        """Put a reply that could not be sent back where it was (same id, same place in its band)."""
        await self._push_back(
            keys=self._queue_keys(room_id), args=[reply.reply_id, reply.score, reply.to_json()]
        )

    async def waiting(self, room_id: str) -> int:
        """How many replies wait."""
        return int(await self._redis.zcard(keys.room_reply_queue(room_id)))

    async def set_timetable(self, room_id: str, entries: list[dict[str, str]]) -> None:
        """What the room's owner plans to say next (its timed messages' next times), for operators."""
        await self._redis.hset(keys.room_state(room_id), "timed_next", orjson.dumps(entries))

    async def timetable(self, room_id: str) -> list[dict[str, str]]:
        raw = await self._redis.hget(keys.room_state(room_id), "timed_next")
        return list(orjson.loads(raw)) if raw else []

    async def pending(self, room_id: str) -> list[Reply]:
        """Waiting replies, most important first."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrange(keys.room_reply_queue(room_id), 0, -1)
            pipe.hgetall(keys.room_reply_items(room_id))
            ids, items = await pipe.execute()
        bodies = {_text(k): v for k, v in items.items()}
        return [Reply.from_json(_text(i), bodies[_text(i)]) for i in ids if _text(i) in bodies]

    async def cancel(self, room_id: str, reply_id: str) -> bool:
        """Take one waiting reply out of the queue; False when it is not waiting (sent already, or never
        queued). Atomic against the pacer's pop: a reply is either cancelled or sent, never both."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.room_reply_queue(room_id), reply_id)
            pipe.hdel(keys.room_reply_items(room_id), reply_id)
            removed, _ = await pipe.execute()
        return bool(removed)

    async def record_sent(self, room_id: str, command_id: str, reply: Reply, sent_ms: int) -> bool:
        """Count an inserted reply as in flight -- unless its finish already arrived (then False)."""
        meta = orjson.dumps({"priority": reply.priority, "text": reply.text, "sent_ms": sent_ms})
        recorded = await self._record_sent(keys=self._flight_keys(room_id), args=[command_id, meta])
        return bool(recorded)

    async def in_flight(self, room_id: str) -> list[InFlight]:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.smembers(keys.room_replies(room_id))
            pipe.hgetall(keys.room_replies_meta(room_id))
            members, metas = await pipe.execute()
        return await self._flights(room_id, members, metas)

    async def _flights(
        self, room_id: str, members: Iterable[bytes], metas: Mapping[bytes, bytes]
    ) -> list[InFlight]:
        by_id = {_text(k): orjson.loads(v) for k, v in metas.items()}
        unknown = [_text(m) for m in members if _text(m) not in by_id]
        if unknown:
            # In flight without a record of when it was sent (added by hand, or by an older version): its
            # timeout starts now, rather than at the epoch -- which would give it up at once.
            now_ms = clock.time_ms()
            stamp = orjson.dumps({"priority": "question", "text": "", "sent_ms": now_ms})
            async with self._redis.pipeline(transaction=False) as pipe:
                for reply_id in unknown:
                    pipe.hsetnx(keys.room_replies_meta(room_id), reply_id, stamp)
                await pipe.execute()
            by_id.update({reply_id: {"sent_ms": now_ms} for reply_id in unknown})
        flights = []
        for member in members:
            reply_id = _text(member)
            meta = by_id.get(reply_id, {})
            flights.append(
                InFlight(
                    reply_id,
                    meta.get("priority", "question"),
                    meta.get("text", ""),
                    int(meta.get("sent_ms", 0)),
                )
            )
        return sorted(flights, key=lambda f: f.sent_ms)

    async def forget(self, room_id: str, reply_ids: list[str]) -> int:
        """No longer count these replies as in flight (given up, or cleaned up at the vendor)."""
        if not reply_ids:
            return 0
        return int(await self._forget(keys=self._flight_keys(room_id)[:2], args=reply_ids))

    async def clear(self, room_id: str) -> None:
        """Drop everything waiting and in flight (the room's job ended: its inserts went with it)."""
        await self._redis.delete(
            *self._queue_keys(room_id), *self._flight_keys(room_id)[:2], keys.room_replies_done(room_id)
        )


def _sourced(replies: list[tuple[Reply, str]]) -> list[tuple[Reply, dict[str, str | int]]]:
    return [(reply, {"source": source, "rule_index": reply.rule_index or ""}) for reply, source in replies]


def _enqueued(ids: list[str], results: list[Any]) -> list[tuple[str, str, str | None]]:
    return [
        (_text(outcome), reply_id, (_text(evicted) or None))
        for reply_id, (outcome, evicted) in zip(ids, results, strict=True)
    ]
