"""Audience work for live rooms: report ingest events in batches, decide replies, pace the inserts.

One :class:`AudienceService` per replica. Every ``lease_ttl_s / 3`` seconds it lists the managed rooms
whose job is live (WAITING or PROCESSING) and takes or renews their room leases
(:mod:`orchestrator.interaction.leases`); for each room it holds it runs one :class:`RoomWorker`. A room's
worker stops when the lease or the job goes, so only one replica reports and inserts for a room, and a
dead replica's rooms move within one TTL.

**Reading.** Events wait in each room's ingest stream ``orch:{room}:ingest``; one reader per replica reads
the streams of all its rooms in one ``XREADGROUP`` (consumer group ``reporter``) and hands each room's
entries to its worker, which gives them to its reporter (:mod:`orchestrator.interaction.reporter`: batches
to the job's report URL, at least once, never one event in two batches) and decides replies for the
comments and gifts among them.

**Replies.** Comments and gifts go through the reply policy (:mod:`orchestrator.interaction.policy`) as
they reach the owner's ingest endpoint, or -- arriving elsewhere -- when the owner reads them (never ones
reclaimed from a predecessor, which may have answered them); a question no rule answers goes to the
optional chat backend (at most four at once per room; FAQ on failure or when busy). A reply is queued in
Redis (:mod:`orchestrator.interaction.queue`) -- as are operator replies from the admin API and replies
to the vendor's CALLBACK-mode rules -- and the room's pacer (:mod:`orchestrator.interaction.pacer`)
inserts them, paced by REPLY_COMMAND_FINISH.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError, ResponseError

from orchestrator import clock
from orchestrator.interaction.chat import ChatBackend, ChatUnavailable
from orchestrator.interaction.ingest import count_of, normalise_batch
from orchestrator.interaction.leases import RoomLeases
from orchestrator.interaction.pacer import ReplyPacer
from orchestrator.interaction.policy import (
    NOTHING_TO_ANSWER,
    Decision,
    Event,
    History,
    PolicyConfig,
    decide,
    looks_like_question,
    speak,
)
from orchestrator.interaction.queue import Reply, ReplyQueue
from orchestrator.interaction.reporter import (
    ACK_AND_TRIM_LUA,
    GROUP,
    MARK_BATCH_LUA,
    Buffered,
    RoomReporter,
    entry_ms,
    entry_order,
)
from orchestrator.metrics import Metrics
from orchestrator.providers.metastudio.client import MetaStudioClient
from orchestrator.settings import InteractionSettings
from orchestrator.store import keys
from orchestrator.store.reactions import Reactions
from orchestrator.store.redis import text as _text
from orchestrator.tasks import being_cancelled, cancel_and_wait, checkpoint, pause, wait_event

log = structlog.get_logger(__name__)

LIVE_STATES = frozenset({"WAITING", "PROCESSING"})
CHAT_CONCURRENCY = 4
READ_BLOCK_MS = 100
HAND_OVER_LIMIT = 100  # decided replies waiting for Redis, per room


class RoomWorker:
    """One live room on the replica holding its lease: reads are split between its reporter and its reply
    decisions; its pacer inserts the replies."""

    def __init__(self, service: AudienceService, room_id: str, job_id: str) -> None:
        self.service = service
        self.room_id = room_id
        self.job_id = job_id
        self.stream = keys.room_ingest(room_id)
        self._log = log.bind(room_id=room_id, job_id=job_id)
        self.reporter = RoomReporter(service, room_id, job_id, self._log)
        self.pacer = ReplyPacer(service, room_id, job_id, self._log)
        self.history = History()
        self.started = False
        self._chats = asyncio.Semaphore(CHAT_CONCURRENCY)
        self._decided: deque[tuple[float, Decision]] = deque()  # (the comment's arrival, s; decision)
        self._decided_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._chat_tasks: set[asyncio.Task[None]] = set()

    @property
    def buffer(self) -> list[Buffered]:
        return self.reporter.buffer

    @property
    def product(self) -> str:
        return self.reporter.product

    # --- life cycle ---

    async def start(self) -> None:
        redis = self.service.redis
        try:
            await redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        await self.service.prepare_replies(self.room_id, self.job_id)
        await self.reporter.recover()
        await self._claim_pending()
        self.started = True
        self._tasks = [
            asyncio.create_task(self.reporter.run(), name=f"report:{self.room_id}"),
            asyncio.create_task(self.pacer.run(), name=f"replies:{self.room_id}"),
            asyncio.create_task(self._queue_forever(), name=f"decided:{self.room_id}"),
        ]
        self._log.info(
            "room worker started", replica=self.service.leases.replica_id, recovered=len(self.buffer)
        )

    async def aclose(self) -> None:
        self.started = False
        for task in [*self._tasks, *self._chat_tasks]:
            await cancel_and_wait(task)
        self._tasks = []

    def failure(self) -> str | None:
        """How one of the worker's tasks ended, if one ended (they run until cancelled)."""
        for task in self._tasks:
            if task.done() and not task.cancelled():
                exc = task.exception()
                return f"{type(exc).__name__}: {exc}" if exc else "ended"
        return None

    def wants_more(self) -> bool:
        return self.started and self.reporter.wants_more()

    async def _claim_pending(self) -> None:
        """Take every entry the group delivered but nobody acknowledged (a predecessor's), oldest first."""
        start = "0-0"
        while True:
            answer = await self.service.redis.xautoclaim(
                self.stream,
                GROUP,
                self.service.leases.replica_id,
                min_idle_time=0,
                start_id=start,
                count=1000,
            )
            start, entries = _text(answer[0]), answer[1]
            await self.take(entries, fresh=False)
            if start == "0-0" or not entries:
                return

    async def adopt_strays(self) -> int:
        """Claim the entries another consumer was delivered and never acknowledged, idle for a lease: their
        reader lost the room (stalled past its lease, or read once more before it noticed) and dropped them
        unreported with its worker. Soak finding: a handover left every event its loser had read but not
        reported in the group's pending list, never reported -- only a worker's start claimed them."""
        service = self.service
        me, min_idle = service.leases.replica_id, clock.real_ms(service.settings.lease_ttl_s)
        pending = await service.redis.xpending_range(
            self.stream, GROUP, min="-", max="+", count=1000, idle=min_idle
        )
        ids: list[bytes | str | int | memoryview[int]] = [
            p["message_id"] for p in pending if _text(p["consumer"]) != me
        ]
        if not ids:
            return 0
        entries = await service.redis.xclaim(self.stream, GROUP, me, min_idle_time=min_idle, message_ids=ids)
        await self.take(entries, fresh=False)
        self._log.info("claimed events another replica left unreported", events=len(entries))
        return len(entries)

    # --- ingest side ---

    async def take(self, entries: list[Any], *, fresh: bool) -> None:
        """Entries read from the stream: buffer them for the report, and decide replies for fresh ones."""
        settings, metrics = self.service.settings, self.service.metrics
        now_ms = clock.time_ms()
        stale: list[str] = []
        for entry_id_raw, fields in entries:
            entry_id = _text(entry_id_raw)
            if not fields:  # trimmed while pending: nothing left to report
                stale.append(entry_id)
                continue
            parsed = self._event(entry_id, fields)
            if parsed is None:
                stale.append(entry_id)
                continue
            event, raw = parsed
            if now_ms - entry_ms(entry_id) > settings.report_max_age_s * 1000:
                metrics.audience_events.labels("expired").inc()
                stale.append(entry_id)
                continue
            self.reporter.add(entry_id, event["type"], event["timestamp"], raw)
            if fresh and event["type"] in (1, 4) and fields.get(b"d") != b"1":  # d: decided at ingest
                self._consider_reply(entry_id, event)
        if not fresh:
            # Claimed entries (a predecessor's, or strays) may be older than what is buffered: keep the buffer
            # in stream order, so a batch is one contiguous range and its marker (first, last) names it.
            self.reporter.buffer.sort(key=lambda b: entry_order(b.entry_id))
        if stale:
            await self.service.redis.xack(self.stream, GROUP, *stale)
        self.reporter.added()

    def _event(self, entry_id: str, fields: Mapping[Any, Any]) -> tuple[dict[str, Any], bytes] | None:
        """The entry's event in wire form, parsed and as the bytes the report will carry; None if invalid."""
        raw = fields.get(b"event")
        if raw is not None:
            try:
                event = orjson.loads(raw)
            except orjson.JSONDecodeError:
                event = None
            if (
                isinstance(event, dict)
                and isinstance(event.get("type"), int)
                and isinstance(event.get("timestamp"), int)
                and isinstance(event.get("content"), str)
            ):
                return event, bytes(raw)
        bridge = fields.get(b"raw")
        problem = "entry has neither an 'event' nor a 'raw' field holding JSON"
        if bridge is not None:
            try:
                accepted, rejected = normalise_batch([orjson.loads(bridge)])
            except orjson.JSONDecodeError:
                accepted, rejected = [], []
                problem = "'raw' is not JSON"
            if accepted:
                event = accepted[0]
                event["content"] = orjson.dumps(event["content"]).decode()
                return event, orjson.dumps(event)
            if rejected:
                problem = rejected[0].error_msg
        self.service.metrics.audience_events.labels("rejected").inc()
        self._log.warning("ingest entry rejected", entry_id=entry_id, error=problem)
        return None

    def _consider_reply(self, entry_id: str, wire: dict[str, Any]) -> None:
        """Decide for an entry read from the stream (pure CPU, in the reader: nothing awaited here, so one
        room's replies never hold up the reading of every room's stream)."""
        try:
            content = orjson.loads(wire["content"])
        except orjson.JSONDecodeError:
            return
        if isinstance(content, dict):
            self.consider(wire["type"], wire["timestamp"], content, since_s=entry_ms(entry_id) / 1000)

    def decide_arrivals(self, events: list[dict[str, Any]], *, since_s: float) -> None:
        """Decide for events as they arrive at this replica's ingest endpoint (normalised, ``content`` an
        object), the owner deciding at once instead of when it reads them back from the stream."""
        for event in events:
            if event["type"] in (1, 4):
                self.consider(event["type"], event["timestamp"], event["content"], since_s=since_s)

    def consider(
        self, event_type: int, timestamp_ms: int, content: dict[str, Any], *, since_s: float
    ) -> None:
        """The reply policy on one comment or gift; a reply is handed to the room's queuing task."""
        at_s = timestamp_ms / 1000
        if clock.time() - at_s > self.service.settings.reply_max_age_s:
            return
        try:
            user = content.get("user") or {}
            gift = content.get("gift") or {}
            event = Event(
                type=event_type,
                user_id=str(user.get("userId", "")),
                user_name=str(user.get("name", "")),
                text=str(content.get("content") or ""),
                gift_name=str(gift.get("giftName", "")),
                gift_num=count_of(gift.get("giftNum")),
                at=at_s,
            )
        except (AttributeError, TypeError, ValueError):
            return
        chat = self.service.chat
        decision = decide(self.service.policy, self.history, event, product=self.product, faq=chat is None)
        if decision.reason == NOTHING_TO_ANSWER and chat is not None:
            if looks_like_question(event.text) and not self._chats.locked():
                task = asyncio.create_task(self._ask_chat(chat, since_s, event), name=f"chat:{self.room_id}")
                self._chat_tasks.add(task)
                task.add_done_callback(self._chat_tasks.discard)
                return
            decision = decide(self.service.policy, self.history, event, product=self.product)
        self._hand_over(since_s, decision)

    async def _ask_chat(self, chat: ChatBackend, since_s: float, event: Event) -> None:
        async with self._chats:
            try:
                answer = await chat.answer(event.text, product=self.product)
                decision = speak(self.service.policy, self.history, event, answer, rule="chat")
            except ChatUnavailable as exc:
                self._log.info("chat backend unavailable; answering from the FAQ", error=str(exc))
                decision = decide(self.service.policy, self.history, event, product=self.product)
        self._hand_over(since_s, decision)

    def _hand_over(self, since_s: float, decision: Decision) -> None:
        if not decision.speaks or decision.reply is None:
            return
        if len(self._decided) >= HAND_OVER_LIMIT:  # Redis is slow or away: the queue would drop it anyway
            self.service.metrics.replies.labels("dropped").inc()
            return
        self.service.metrics.reply_decision.observe(max(0.0, clock.time() - since_s))
        self._decided.append((since_s, decision))
        self._decided_ready.set()

    async def _queue_forever(self) -> None:
        """Decided replies into the room's queue in Redis, in the order they were decided, all that are
        waiting in one round trip."""
        while True:
            await wait_event(self._decided_ready, None)
            while self._decided:
                checkpoint()
                taken = list(self._decided)
                replies = [
                    (
                        Reply(d.reply or "", d.priority, self.service.play_type(d.priority)),
                        d.rule or d.priority,
                    )
                    for _, d in taken
                ]
                try:
                    await self.service.enqueue_many(self.room_id, replies)
                except RedisError as exc:
                    if being_cancelled():
                        raise
                    self._log.warning("cannot queue replies; retrying", error=str(exc))
                    await pause(0.5)
                    continue
                now = clock.time()
                for since_s, _ in taken:
                    self._decided.popleft()
                    self.service.metrics.reply_queued.observe(max(0.0, now - since_s))
            self._decided_ready.clear()


class AudienceService:
    def __init__(
        self,
        redis: aioredis.Redis,
        settings: InteractionSettings,
        *,
        client: Callable[[], MetaStudioClient],
        policy: PolicyConfig,
        reactions: Reactions,
        metrics: Metrics,
        chat: ChatBackend | None = None,
        events_maxlen: int = 10_000,
        replica_id: str | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.client = client
        self.policy = policy
        self.reactions = reactions
        self.metrics = metrics
        self.chat = chat
        self.events_maxlen = events_maxlen
        self.ack_and_trim = redis.register_script(ACK_AND_TRIM_LUA)
        self._mark_batch = redis.register_script(MARK_BATCH_LUA)
        self.leases = RoomLeases(redis, ttl_s=settings.lease_ttl_s, replica_id=replica_id)
        self.queue = ReplyQueue(redis, max_pending=settings.reply_max_pending, events_maxlen=events_maxlen)
        self.workers: dict[str, RoomWorker] = {}
        self._changed = asyncio.Event()
        self._stopping = False
        self._passes = 0  # supervise passes: every third also claims strays
        self._retiring: dict[str, asyncio.Task[None]] = {}  # workers being stopped, by room
        self._tasks: list[asyncio.Task[None]] = []

    # --- used by workers and by the web routes ---

    def play_type(self, priority: str) -> str | None:
        return self.settings.play_types.get(cast(Any, priority))

    async def enqueue(self, room_id: str, reply: Reply, *, source: str) -> tuple[str, str, str | None]:
        """Queue a reply for the room (any replica may; the room's owner is woken by a reaction)."""
        return (await self.enqueue_many(room_id, [(reply, source)]))[0]

    async def enqueue_many(
        self, room_id: str, replies: list[tuple[Reply, str]]
    ) -> list[tuple[str, str, str | None]]:
        """Queue replies (with where each came from) in one round trip; each is recorded in the room's
        event stream by the same script."""
        results = await self.queue.enqueue_many(
            room_id,
            [(reply, {"source": source, "rule_index": reply.rule_index or ""}) for reply, source in replies],
        )
        for outcome, _, evicted in results:
            self.metrics.replies.labels(outcome).inc()
            if evicted:
                self.metrics.replies.labels("evicted").inc()
        worker = self.workers.get(room_id)
        if worker is not None:
            worker.pacer.kick.set()
        else:
            with contextlib.suppress(RedisError):
                await self.reactions.publish("reply_queued", room_id=room_id)
        return results

    async def record(self, room_id: str, **fields: str | int) -> None:
        entry: dict[Any, Any] = {**fields, "event_ms": clock.time_ms()}
        await self.redis.xadd(keys.room_events(room_id), entry, maxlen=self.events_maxlen, approximate=True)

    async def report_target(self, room_id: str) -> tuple[str | None, str]:
        """The room's report URL and current product."""
        url, product = await self.redis.hmget(keys.room_state(room_id), ["report_url", "product_title"])
        return (_text(url) if url else None), (_text(product) if product else "")

    async def mark_batch(self, room_id: str, batch: tuple[str, str, str]) -> tuple[bool, str | None, str]:
        """Record the batch about to be sent (id, first and last entry) in ``orch:{room}:report`` -- only
        while this replica holds the room's lease in Redis -- and read the report URL and current product in
        the same script: (marked, url, product). Not marked: another replica owns the room now, and the
        marker is its own (soak finding: a worker that had lost the room overwrote its successor's marker)."""
        answer = await self._mark_batch(
            keys=[keys.room_lease(room_id), keys.room_report(room_id), keys.room_state(room_id)],
            args=[self.leases.replica_id, *batch],
        )
        marked, url, product = answer
        return bool(marked), (_text(url) if url else None), (_text(product) if product else "")

    async def prepare_replies(self, room_id: str, job_id: str) -> None:
        """A new job starts with an empty reply queue: the previous job's inserts died with it. With no
        previous job on record there is nothing to drop -- replies queued or in flight for this job before
        its worker started (an operator's, a finish on its way) are this job's and stay."""
        previous = await self.redis.hget(keys.room_state(room_id), "replies_job")
        if previous is not None and _text(previous) != job_id:
            await self.queue.clear(room_id)
        if previous is None or _text(previous) != job_id:
            await self.redis.hset(keys.room_state(room_id), "replies_job", job_id)

    # --- life cycle ---

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._supervise_forever(), name="audience-supervisor"),
            asyncio.create_task(self._read_forever(), name="audience-reader"),
            asyncio.create_task(self._react_forever(), name="audience-reactions"),
        ]

    async def aclose(self) -> None:
        # The reader stops by itself after its current blocking read (≤ READ_BLOCK_MS): cancelling a
        # blocked XREADGROUP is where redis-py can swallow the cancellation.
        self._stopping = True
        reader = next((t for t in self._tasks if t.get_name() == "audience-reader"), None)
        if reader is not None:
            await asyncio.wait({reader}, timeout=1.0)
        for task in self._tasks:
            await cancel_and_wait(task)
        for room_id, worker in list(self.workers.items()):
            await worker.aclose()
            with contextlib.suppress(RedisError, OSError):
                await self.leases.release(room_id)
        self.workers.clear()
        for retiring in list(self._retiring.values()):
            await cancel_and_wait(retiring)

    async def _supervise_forever(self) -> None:
        while True:
            checkpoint()
            try:
                await self.supervise()
            except (RedisError, OSError) as exc:
                if being_cancelled():
                    raise
                log.warning("audience supervisor cannot reach Redis", error=str(exc))
            await wait_event(self._changed, clock.real_s(self.settings.lease_ttl_s / 3))
            self._changed.clear()

    async def supervise(self) -> None:
        """One pass: take or renew the leases of live rooms, start and stop room workers to match."""
        room_ids = sorted(_text(m) for m in await self.redis.smembers(keys.rooms_index()))
        live: dict[str, str] = {}
        if room_ids:
            async with self.redis.pipeline(transaction=False) as pipe:
                for room_id in room_ids:
                    pipe.hmget(keys.room_state(room_id), ["job_id", "job_state"])
                states = await pipe.execute()
            for room_id, (job_id, job_state) in zip(room_ids, states, strict=True):
                if job_id and job_state and _text(job_state) in LIVE_STATES:
                    live[room_id] = _text(job_id)
        held = await self.leases.acquire(sorted(live))
        for room_id, worker in list(self.workers.items()):
            failed = worker.failure()
            if failed is not None:  # a bug, not an outage (those are retried inside): start it afresh
                log.error("room worker failed; restarting it", room_id=room_id, error=failed)
            if failed is not None or room_id not in held or live.get(room_id) != worker.job_id:
                # Stopped in the background: a worker slow to stop (a task in a vendor call) must not hold
                # up the leases of every other room -- the soak saw one stuck stop lose a replica all its
                # rooms, and the events it had read with them.
                del self.workers[room_id]
                worker.started = False
                self._retiring[room_id] = asyncio.create_task(
                    self._retire(worker, release=room_id not in live), name=f"retire:{room_id}"
                )
        self._passes += 1
        sweep = self._passes % 3 == 0  # once a lease: strays are at least a lease old
        for room_id in sorted(held):
            retiring = self._retiring.get(room_id)
            if retiring is not None and not retiring.done():
                continue  # the room's previous worker is still stopping: start anew once it has
            if room_id not in self.workers:
                worker = RoomWorker(self, room_id, live[room_id])
                await worker.start()
                self.workers[room_id] = worker
            elif sweep and self.workers[room_id].started:
                await self.workers[room_id].adopt_strays()
        self.metrics.rooms_owned.set(len(self.workers))

    async def _retire(self, worker: RoomWorker, *, release: bool) -> None:
        try:
            await worker.aclose()
            if release:
                await self.leases.release(worker.room_id)
        except (RedisError, OSError) as exc:  # the lease then expires by itself
            log.warning("cannot release a room's lease", room_id=worker.room_id, error=str(exc))
        log.info("room worker stopped", room_id=worker.room_id, job_id=worker.job_id)
        self._retiring.pop(worker.room_id, None)
        self._changed.set()  # a room waiting for this stop starts its new worker now

    async def _read_forever(self) -> None:
        """The one reader: every owned room's ingest stream in one XREADGROUP, entries to their rooms."""
        while not self._stopping:
            checkpoint()
            # Only rooms whose lease this replica may still act on: what it reads it must report.
            streams = {
                w.stream: ">"
                for w in self.workers.values()
                if w.wants_more() and self.leases.valid(w.room_id)
            }
            if not streams:
                await pause(0.05)
                continue
            try:
                answer = await self.redis.xreadgroup(
                    GROUP,
                    self.leases.replica_id,
                    streams,  # type: ignore[arg-type]
                    count=self.settings.report_max_events,
                    block=READ_BLOCK_MS,
                )
            except (RedisError, OSError) as exc:
                if being_cancelled():
                    raise
                if "NOGROUP" in str(exc):  # a stream was deleted: its worker recreates the group
                    self._changed.set()
                log.warning("audience reader cannot read ingest streams", error=str(exc))
                await pause(0.5)
                continue
            by_stream = {w.stream: w for w in self.workers.values()}
            for stream, entries in cast(list[tuple[bytes, list[Any]]], answer or []):
                worker = by_stream.get(_text(stream))
                if worker is not None:
                    try:
                        await worker.take(entries, fresh=True)
                        await asyncio.sleep(0)  # one room at a time: let the others' work in between
                    except RedisError as exc:
                        log.warning(
                            "cannot acknowledge dropped entries", room_id=worker.room_id, error=str(exc)
                        )

    async def _react_forever(self) -> None:
        async with self.reactions.subscribe() as queue:
            while True:
                checkpoint()
                reaction = await queue.get()
                kind, room_id = reaction.get("kind"), reaction.get("room_id")
                if kind == "job_state":
                    self._changed.set()
                worker = self.workers.get(str(room_id))
                if worker is None:
                    continue
                if kind == "reply_finished":
                    worker.pacer.last_activity = clock.monotonic()
                    self.metrics.replies.labels("finished").inc()
                    worker.pacer.kick.set()
                elif kind == "reply_queued":
                    worker.pacer.kick.set()
