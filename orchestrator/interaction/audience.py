"""Audience work for live rooms: report ingest events in batches, decide replies, pace the inserts.

One :class:`AudienceService` per replica. Every ``lease_ttl_s / 3`` seconds it lists the managed rooms
whose job is live (WAITING or PROCESSING) and takes or renews their room leases
(:mod:`orchestrator.interaction.leases`); for each room it holds it runs one :class:`RoomWorker`. A room's
worker stops when the lease or the job goes, so only one replica reports and inserts for a room, and a
dead replica's rooms move within one TTL.

**Ingest → report.** Events wait in the room's ingest stream ``orch:{room}:ingest`` (the HTTP ingest
writes them there normalised as field ``event``; a bridge writing to Redis puts its own event format,
the one ``POST /api/rooms/{room}/events`` takes, in field ``raw``). One reader per replica reads the streams
of all its rooms in one ``XREADGROUP`` (consumer group ``reporter``, consumer = replica id) and hands the
entries to their rooms. A room reads no more while it holds a full batch, so while the vendor is down
the backlog stays in Redis, not in memory. A batch goes out when it holds ``report_max_events`` (≤ 1000)
or ``report_window_ms`` after its first event; within it, viewer counts coalesce to the latest. Before it
is sent, the batch's id and entry range are written to ``orch:{room}:report``; a failed send is retried
with backoff, the same batch with the same ``X-Batch-Id``, for as long as the lease is held. Only after
the vendor accepted it are its entries acknowledged (``XACK``) and trimmed, and the marker removed, in
one transaction. A successor (after a crash or a lost lease) claims the group's pending entries with
``XAUTOCLAIM`` and first resends the marked batch exactly as it was: at least once, and no event in two
different batches. A refreshed ``live_event_report_url`` in the answer is stored and used from then on.
Events older than ``report_max_age_s`` when a batch forms are dropped and counted, not reported.

**Replies.** Comments and gifts read fresh from the stream (not ones reclaimed from a predecessor, which
may have answered them) go through the reply policy (:mod:`orchestrator.interaction.policy`); a question
no rule answers goes to the optional chat backend (at most four at once per room; FAQ on failure or when
busy). A reply is queued in Redis (:mod:`orchestrator.interaction.queue`) -- as are operator replies
from the admin API and replies to the vendor's CALLBACK-mode rules. The worker's pacer inserts the most
important waiting reply with INSERT_PLAY_SCRIPT whenever fewer than ``reply_in_flight`` are in flight; a
REPLY_COMMAND_FINISH (a reaction from the callback receiver, on any replica) wakes it for the next. An
insert without a finish after ``reply_timeout_s`` is given up. An operator reply that finds the slots
taken by less important ones first clears those at the vendor with CLEAN_UP_INSERT_COMMAND (an insert
already playing cannot be cleared and finishes). After ``idle_after_s`` without a reply, an idle line.

Failures of INSERT_PLAY_SCRIPT: certainly unsent (connection refused, 429) → back in the queue, retried;
ambiguous (timeout, 5xx) → given up and counted ``lost``: saying it twice is worse than not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError, ResponseError

from orchestrator.interaction.chat import ChatBackend, ChatUnavailable
from orchestrator.interaction.ingest import NAMES, normalise_batch
from orchestrator.interaction.leases import RoomLeases
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
from orchestrator.metrics import Metrics
from orchestrator.providers.errors import (
    ProviderBadRequest,
    ProviderConnectError,
    ProviderError,
    ProviderRateLimited,
    ProviderStatusError,
)
from orchestrator.providers.metastudio.client import MetaStudioClient
from orchestrator.providers.metastudio.models import (
    CleanUpInsertCommand,
    Command,
    PlayTextInfo,
    TextConfig,
)
from orchestrator.settings import InteractionSettings, PlayTypeName
from orchestrator.store import keys
from orchestrator.store.reactions import Reactions
from orchestrator.tasks import being_cancelled, cancel_and_wait, pause

log = structlog.get_logger(__name__)

GROUP = "reporter"
LIVE_STATES = frozenset({"WAITING", "PROCESSING"})
CHAT_CONCURRENCY = 4
READ_BLOCK_MS = 100
HAND_OVER_LIMIT = 100  # decided replies waiting for Redis, per room


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


@dataclass(slots=True)
class Buffered:
    """An event waiting for its report: kept as the JSON the report carries (a few hundred bytes, not a
    parsed dict), with what batching needs."""

    entry_id: str
    type: int
    timestamp: int
    raw: bytes  # wire form: {"timestamp", "type", "content": JSON string}


class RoomWorker:
    """One live room's reporter and reply pacer, on the replica holding its lease."""

    def __init__(self, service: AudienceService, room_id: str, job_id: str) -> None:
        self.service = service
        self.room_id = room_id
        self.job_id = job_id
        self.stream = keys.room_ingest(room_id)
        self.buffer: list[Buffered] = []
        self.history = History()
        self.product = ""
        self.ready = asyncio.Event()
        self.full = asyncio.Event()
        self.kick = asyncio.Event()
        self.started = False
        self.busy = 1  # replies in flight at the last pacing pass (unknown at start: look once)
        self.last_activity = time.monotonic()
        self._idle_cursor = 0
        self._resend: tuple[str, str, str] | None = None  # (batch id, first, last) of a predecessor
        self._chats = asyncio.Semaphore(CHAT_CONCURRENCY)
        self._decided: deque[tuple[float, Decision]] = deque()  # (the comment's arrival, s; decision)
        self._decided_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._chat_tasks: set[asyncio.Task[None]] = set()
        self._log = log.bind(room_id=room_id, job_id=job_id)

    # --- life cycle ---

    async def start(self) -> None:
        redis = self.service.redis
        try:
            await redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        await self.service.prepare_replies(self.room_id, self.job_id)
        marker = await redis.hgetall(keys.room_report(self.room_id))
        if marker:
            self._resend = (_text(marker[b"batch_id"]), _text(marker[b"first"]), _text(marker[b"last"]))
        await self._claim_pending()
        self.started = True
        self._tasks = [
            asyncio.create_task(self._report_forever(), name=f"report:{self.room_id}"),
            asyncio.create_task(self._pace_forever(), name=f"replies:{self.room_id}"),
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
        return self.started and len(self.buffer) < self.service.settings.report_max_events

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

    # --- ingest side ---

    async def take(self, entries: list[Any], *, fresh: bool) -> None:
        """Entries read from the stream: buffer them for the report, and decide replies for fresh ones."""
        settings, metrics = self.service.settings, self.service.metrics
        now_ms = int(time.time() * 1000)
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
            if now_ms - _entry_ms(entry_id) > settings.report_max_age_s * 1000:
                metrics.audience_events.labels("expired").inc()
                stale.append(entry_id)
                continue
            self.buffer.append(Buffered(entry_id, event["type"], event["timestamp"], raw))
            if fresh and event["type"] in (1, 4) and fields.get(b"d") != b"1":  # d: decided at ingest
                self._consider_reply(entry_id, event)
        if stale:
            await self.service.redis.xack(self.stream, GROUP, *stale)
        if self.buffer:
            self.ready.set()
            if len(self.buffer) >= settings.report_max_events:
                self.full.set()

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
            self.consider(wire["type"], wire["timestamp"], content, since_s=_entry_ms(entry_id) / 1000)

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
        if time.time() - at_s > self.service.settings.reply_max_age_s:
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
                gift_num=int(gift.get("giftNum") or 0),
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
        self.service.metrics.reply_decision.observe(max(0.0, time.time() - since_s))
        self._decided.append((since_s, decision))
        self._decided_ready.set()

    async def _queue_forever(self) -> None:
        """Decided replies into the room's queue in Redis, in the order they were decided, all that are
        waiting in one round trip."""
        while True:
            await self._decided_ready.wait()
            while self._decided:
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
                now = time.time()
                for since_s, _ in taken:
                    self._decided.popleft()
                    self.service.metrics.reply_queued.observe(max(0.0, now - since_s))
            self._decided_ready.clear()

    # --- reporter ---

    async def _report_forever(self) -> None:
        settings = self.service.settings
        while True:
            await self.ready.wait()
            if self._resend is None:
                first_at = _entry_ms(self.buffer[0].entry_id) / 1000 if self.buffer else time.time()
                wait_s = first_at + settings.report_window_ms / 1000 - time.time()
                if wait_s > 0 and len(self.buffer) < settings.report_max_events:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.full.wait(), wait_s)
            try:
                await self._flush_one()
            except (RedisError, OSError) as exc:
                if being_cancelled():
                    raise
                self._log.warning("reporter cannot reach Redis; retrying", error=str(exc))
                await pause(1.0)
                continue
            if not self.buffer:
                self.ready.clear()
            if len(self.buffer) < settings.report_max_events:
                self.full.clear()

    def _next_batch(self) -> tuple[str, list[Buffered]]:
        if self._resend is not None:
            batch_id, first, last = self._resend
            first_key, last_key = _id_key(first), _id_key(last)
            batch = [b for b in self.buffer if first_key <= _id_key(b.entry_id) <= last_key]
            if batch:
                return batch_id, batch
            self._resend = None  # its entries are gone (trimmed or acknowledged): nothing to resend
        batch = self.buffer[: self.service.settings.report_max_events]
        return f"{self.room_id}/{batch[0].entry_id}/{batch[-1].entry_id}", batch

    async def _flush_one(self) -> None:
        if not self.buffer:
            return
        batch_id, batch = self._next_batch()
        events = _coalesce_viewers(batch)
        self.service.metrics.audience_events.labels("coalesced").inc(len(batch) - len(events))
        metrics = self.service.metrics
        # The marker and the report URL in one round trip (the URL is read again before each retry).
        url, self.product = await self.service.report_target(
            self.room_id, mark=(batch_id, batch[0].entry_id, batch[-1].entry_id)
        )
        attempt = 0
        while True:
            if not self.service.leases.valid(self.room_id):
                await pause(0.5)
                continue
            if attempt:
                url, self.product = await self.service.report_target(self.room_id)
            try:
                if url is None:
                    raise _NoReportUrl
                refreshed = await self.service.client().report_batch(url, [e.raw for e in events], batch_id)
                accepted_at = time.time()  # reported: the vendor has it (our acknowledgement follows)
                for entry in batch:
                    metrics.report_latency.observe(max(0.0, accepted_at - _entry_ms(entry.entry_id) / 1000))
                break
            except ProviderBadRequest as exc:
                # The vendor refuses this batch as such: resending it would block the room forever.
                self._log.error("report batch refused; dropped", batch_id=batch_id, error=str(exc))
                metrics.report_batches.labels("dropped").inc()
                metrics.audience_events.labels("dropped").inc(len(events))
                refreshed = None
                events = []  # nothing of it was reported
                break
            except (ProviderError, _NoReportUrl) as exc:
                if being_cancelled():
                    raise
                delay = min(30.0, 0.5 * 2**attempt)
                attempt += 1
                metrics.report_batches.labels("retry").inc()
                self._log.warning(
                    "report failed; the same batch goes again",
                    batch_id=batch_id,
                    events=len(events),
                    attempt=attempt,
                    retry_in_s=delay,
                    error=str(exc) or type(exc).__name__,
                )
                await pause(delay)
        await self._acknowledge(batch_id, batch, events, refreshed)

    async def _acknowledge(
        self, batch_id: str, batch: list[Buffered], events: list[Buffered], refreshed: str | None
    ) -> None:
        done = {b.entry_id for b in batch}
        while True:  # the vendor has the batch: acknowledge it, however long Redis takes to come back
            remaining = [b for b in self.buffer if b.entry_id not in done]
            keep_from = remaining[0].entry_id if remaining else _after(batch[-1].entry_id)
            try:
                await self._ack(batch_id, done, keep_from, events, refreshed)
                break
            except (RedisError, OSError) as exc:
                if being_cancelled() or not self.service.leases.valid(self.room_id):
                    raise  # a successor resends the marked batch (same id)
                self._log.warning("cannot acknowledge a reported batch; retrying", error=str(exc))
                await pause(0.5)
        self.buffer = [b for b in self.buffer if b.entry_id not in done]
        self._resend = None
        metrics = self.service.metrics
        metrics.report_batches.labels("ok").inc()
        metrics.audience_events.labels("reported").inc(len(events))
        self._log.debug("reported", batch_id=batch_id, events=len(events), refreshed=bool(refreshed))

    async def _ack(
        self,
        batch_id: str,
        done: set[str],
        keep_from: str,
        events: list[Buffered],
        refreshed: str | None,
    ) -> None:
        async with self.service.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, GROUP, *done)
            pipe.xtrim(self.stream, minid=keep_from, approximate=True)
            pipe.delete(keys.room_report(self.room_id))
            pipe.hincrby(keys.room_state(self.room_id), "reported", len(events))
            if refreshed:
                pipe.hset(keys.room_state(self.room_id), "report_url", refreshed)
            pipe.xadd(
                keys.room_events(self.room_id),
                {
                    "kind": "reported",
                    "job_id": self.job_id,
                    "batch_id": batch_id,
                    "events": len(events),
                    "types": _type_counts(events),
                },
                maxlen=self.service.events_maxlen,
                approximate=True,
            )
            await pipe.execute()

    # --- reply pacing ---

    async def _pace_forever(self) -> None:
        settings = self.service.settings
        while True:
            # Wake on a kick (a reply queued, a finish); on a timer only when something can come due: a
            # reply in flight (its timeout), or the idle filler. A thousand idle rooms cost nothing.
            tick = None
            if self.busy:
                tick = min(1.0, settings.reply_timeout_s / 4)
            elif settings.idle_after_s > 0 and settings.idle_lines:
                tick = min(1.0, settings.idle_after_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.kick.wait(), tick)
            self.kick.clear()
            if not self.service.leases.valid(self.room_id):
                continue
            try:
                await self._pace_once()
            except (RedisError, ProviderError) as exc:
                if being_cancelled():
                    raise
                self._log.warning("reply pacing failed; retrying", error=str(exc))
                await pause(1.0)

    async def _pace_once(self) -> None:
        service, settings = self.service, self.service.settings
        queue, metrics = service.queue, service.metrics
        flights = await queue.in_flight(self.room_id)
        now_ms = int(time.time() * 1000)
        overdue = [f.reply_id for f in flights if now_ms - f.sent_ms > settings.reply_timeout_s * 1000]
        if overdue:
            await queue.forget(self.room_id, overdue)
            metrics.replies.labels("timed_out").inc(len(overdue))
            self._log.warning("replies given up: no REPLY_COMMAND_FINISH in time", reply_ids=overdue)
            flights = [f for f in flights if f.reply_id not in overdue]
        if len(flights) >= settings.reply_in_flight:
            pending = await queue.pending(self.room_id)
            victims = [f.reply_id for f in flights if f.priority != "operator"]
            if pending and pending[0].priority == "operator" and victims:
                cleaned = await self._clean_up(victims)
                flights = [f for f in flights if f.reply_id not in cleaned]
        busy = len(flights)
        while busy < settings.reply_in_flight:
            reply = await queue.pop(self.room_id)
            if reply is None:
                break
            busy += await self._insert(reply)
        self.busy = busy
        if (
            not busy
            and settings.idle_after_s > 0
            and settings.idle_lines
            and time.monotonic() - self.last_activity >= settings.idle_after_s
            and not await queue.pending(self.room_id)
        ):
            line = settings.idle_lines[self._idle_cursor % len(settings.idle_lines)]
            self._idle_cursor += 1
            self.last_activity = time.monotonic()
            await service.enqueue(self.room_id, Reply(line, "idle", service.play_type("idle")), source="idle")
            self.kick.set()

    async def _insert(self, reply: Reply) -> bool:
        """INSERT_PLAY_SCRIPT for ``reply``; True when it is now in flight."""
        service, metrics = self.service, self.service.metrics
        info = PlayTextInfo(
            text_config=TextConfig(text=reply.text),
            play_type=cast(PlayTypeName | None, reply.play_type),
            rule_index=reply.rule_index,
        )
        try:
            answer = await service.client().command(
                self.room_id, self.job_id, Command.insert_play_script(info)
            )
        except (ProviderConnectError, ProviderRateLimited) as exc:
            await service.queue.push_back(self.room_id, reply)
            self._log.warning("insert not sent; the reply waits", error=str(exc))
            await pause(1.0)
            return False
        except ProviderStatusError as exc:
            if exc.status >= 500:
                metrics.replies.labels("lost").inc()
                self._log.error("insert outcome unknown; not repeated", reply=reply.text[:40], error=str(exc))
            else:
                metrics.replies.labels("failed").inc()
                self._log.error("insert refused", reply=reply.text[:40], error=str(exc))
            return False
        except ProviderError as exc:
            metrics.replies.labels("lost").inc()
            self._log.error("insert outcome unknown; not repeated", reply=reply.text[:40], error=str(exc))
            return False
        command_id = answer.command_id or ""
        now_ms = int(time.time() * 1000)
        in_flight = bool(command_id) and await service.queue.record_sent(
            self.room_id, command_id, reply, now_ms
        )
        self.last_activity = time.monotonic()
        metrics.replies.labels("inserted").inc()
        await service.record(
            self.room_id,
            kind="reply_inserted",
            job_id=self.job_id,
            reply_id=command_id,
            priority=reply.priority,
            play_type=reply.play_type or "",
            rule_index=reply.rule_index or "",
            text=reply.text,
        )
        return in_flight

    async def _clean_up(self, victims: list[str]) -> set[str]:
        answer = await self.service.client().command(
            self.room_id,
            self.job_id,
            Command.clean_up_insert_command(CleanUpInsertCommand(command_ids=victims[:100])),
        )
        try:
            result = answer.result_json()
            cleaned = (
                set(result.get("cleaned_command_ids", victims)) if isinstance(result, dict) else set(victims)
            )
        except ValueError:
            cleaned = set(victims)
        cleaned &= set(victims)
        await self.service.queue.forget(self.room_id, sorted(cleaned))
        self.service.metrics.replies.labels("cleaned_up").inc(len(cleaned))
        self._log.info("cleared unplayed inserts for an operator reply", cleaned=sorted(cleaned))
        return cleaned


class _NoReportUrl(Exception):
    """The job's live_event_report_url is not known (yet)."""


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _after(entry_id: str) -> str:
    ms, seq = _id_key(entry_id)
    return f"{ms}-{seq + 1}"


def _type_counts(events: list[Buffered]) -> str:
    """``comment:3,viewers:1`` -- what a report carried, for the room's event record."""
    counts: dict[str, int] = {}
    for event in events:
        name = NAMES.get(event.type, str(event.type))
        counts[name] = counts.get(name, 0) + 1
    return ",".join(f"{name}:{n}" for name, n in counts.items())


def _coalesce_viewers(batch: list[Buffered]) -> list[Buffered]:
    """The batch's events in order, with only the latest viewer count (type 6) kept."""
    viewers = [b for b in batch if b.type == 6]
    if len(viewers) <= 1:
        return batch
    latest = viewers[0]
    for event in viewers:  # the newest by timestamp; on a tie, the later in the stream
        if event.timestamp >= latest.timestamp:
            latest = event
    return [b for b in batch if b.type != 6 or b is latest]


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
        self.leases = RoomLeases(redis, ttl_s=settings.lease_ttl_s, replica_id=replica_id)
        self.queue = ReplyQueue(redis, max_pending=settings.reply_max_pending, events_maxlen=events_maxlen)
        self.workers: dict[str, RoomWorker] = {}
        self._changed = asyncio.Event()
        self._stopping = False
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
            worker.kick.set()
        else:
            with contextlib.suppress(RedisError):
                await self.reactions.publish("reply_queued", room_id=room_id)
        return results

    async def record(self, room_id: str, **fields: str | int) -> None:
        entry: dict[Any, Any] = {**fields, "event_ms": int(time.time() * 1000)}
        await self.redis.xadd(keys.room_events(room_id), entry, maxlen=self.events_maxlen, approximate=True)

    async def report_target(
        self, room_id: str, *, mark: tuple[str, str, str] | None = None
    ) -> tuple[str | None, str]:
        """The room's report URL and current product; with ``mark``, first record the batch about to be
        sent (id, first and last entry) in ``orch:{room}:report`` -- the same round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            if mark is not None:
                pipe.hset(
                    keys.room_report(room_id),
                    mapping={"batch_id": mark[0], "first": mark[1], "last": mark[2]},
                )
            pipe.hmget(keys.room_state(room_id), ["report_url", "product_title"])
            answers = await pipe.execute()
        url, product = answers[-1]
        return (_text(url) if url else None), (_text(product) if product else "")

    async def prepare_replies(self, room_id: str, job_id: str) -> None:
        """A new job starts with an empty reply queue: the previous job's inserts died with it."""
        previous = await self.redis.hget(keys.room_state(room_id), "replies_job")
        if previous is None or _text(previous) != job_id:
            await self.queue.clear(room_id)
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

    async def _supervise_forever(self) -> None:
        while True:
            try:
                await self.supervise()
            except (RedisError, OSError) as exc:
                if being_cancelled():
                    raise
                log.warning("audience supervisor cannot reach Redis", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.settings.lease_ttl_s / 3)
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
                await worker.aclose()
                del self.workers[room_id]
                if room_id not in live:
                    await self.leases.release(room_id)
                log.info("room worker stopped", room_id=room_id, job_id=worker.job_id)
        for room_id in sorted(held):
            if room_id not in self.workers:
                worker = RoomWorker(self, room_id, live[room_id])
                await worker.start()
                self.workers[room_id] = worker
        self.metrics.rooms_owned.set(len(self.workers))

    async def _read_forever(self) -> None:
        """The one reader: every owned room's ingest stream in one XREADGROUP, entries to their rooms."""
        while not self._stopping:
            streams = {w.stream: ">" for w in self.workers.values() if w.wants_more()}
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
                reaction = await queue.get()
                kind, room_id = reaction.get("kind"), reaction.get("room_id")
                if kind == "job_state":
                    self._changed.set()
                worker = self.workers.get(str(room_id))
                if worker is None:
                    continue
                if kind == "reply_finished":
                    worker.last_activity = time.monotonic()
                    self.metrics.replies.labels("finished").inc()
                    worker.kick.set()
                elif kind == "reply_queued":
                    worker.kick.set()
