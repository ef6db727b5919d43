"""A live room's worker, on the replica holding its lease: its reporter, its reply pacer, its desk -- and
the keepalive its vendor wants (SoftSugar: a heartbeat every ``softsugar.heartbeat_interval_s``), sent by
the lease holder alone.

The reader hands the worker the entries it read from the room's ingest stream (:meth:`RoomWorker.take`):
each goes to the reporter's buffer, and the fresh comments and gifts nobody decided yet to the room's desk.
Decided replies are handed to the pacer, which queues them in Redis in the order they were decided -- all
that wait, in the same round trip as its look at the room's replies (:meth:`ReplyQueue.take`) -- and says
the most important at once when a place is free.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
from redis.exceptions import RedisError

from orchestrator import clock
from orchestrator.domain import ReplyFailed, ReplyFinished, RoomEvent
from orchestrator.interaction.context import RoomContext
from orchestrator.interaction.desk import ReplyDesk, RoomDesk
from orchestrator.interaction.ingest import ANSWERABLE, normalise_batch
from orchestrator.interaction.pacer import ReplyPacer, count_outcomes
from orchestrator.interaction.policy import Decision, Event
from orchestrator.interaction.reporter import STOP_GRACE_S, Buffered, RoomReporter, entry_ms, entry_order
from orchestrator.interaction.skips import QUEUE_FULL
from orchestrator.providers.errors import ProviderError
from orchestrator.store.ingest import Entry
from orchestrator.store.redis import text as _text
from orchestrator.store.replies import Reply
from orchestrator.store.rooms import PRIVATE_FIELDS
from orchestrator.tasks import being_cancelled, cancel_and_wait, checkpoint, pause

#: Decided replies waiting for Redis, per room (beyond it they are dropped: the queue would drop them too).
HAND_OVER_LIMIT = 100
#: Platform message ids a room's owner remembers having decided at arrival (a resent batch is not decided
#: twice; older resends are caught by the policy's per-user interval and deduplication).
RECENT_IDS = 10_000


class RoomWorker:
    """One live room on the replica holding its lease."""

    def __init__(self, ctx: RoomContext, desk: ReplyDesk, play_types: Mapping[str, str | None]) -> None:
        self.ctx = ctx
        self.room_id = ctx.room_id
        self.job_id = ctx.job_id
        self.reporter = RoomReporter(ctx)
        self.desk = RoomDesk(desk, ctx.room_id, self._hand_over)
        self.pacer = ReplyPacer(
            ctx,
            self.enqueue_one,
            self.play_type,
            policy=lambda: self.desk.policy,
            zone=self.desk.zone,
            review_s=lambda: self.desk.review_s,
        )
        self.started = False
        self._play_types = play_types
        self._tasks: list[asyncio.Task[None]] = []
        self._recent_ids: dict[str, None] = {}  # message ids decided at arrival, oldest first

    @property
    def buffer(self) -> list[Buffered]:
        return self.reporter.buffer

    @property
    def product(self) -> str:
        return self.desk.product

    def play_type(self, priority: str) -> str | None:
        return self._play_types.get(priority)

    # --- life cycle ---

    async def start(self, product: str = "") -> None:
        """Ask the vendor for the room's own answer backend, create the stream's group, clear a previous
        job's replies, pick up a predecessor's batch and every entry the group has delivered
        unacknowledged, then run."""
        ctx = self.ctx
        self.desk.product = product
        self.desk.own_answers = await ctx.channel.answerer(ctx.room_id, ctx.job_id)
        await ctx.streams.ensure_group(ctx.room_id)
        await ctx.replies.prepare_for_job(ctx.room_id, ctx.job_id)
        await self.reporter.recover()
        await self.take(await ctx.streams.claim_all(ctx.room_id, ctx.replica_id), fresh=False)
        self.started = True
        self._tasks = [
            asyncio.create_task(self.reporter.run(), name=f"report:{ctx.room_id}"),
            asyncio.create_task(self.pacer.run(), name=f"replies:{ctx.room_id}"),
        ]
        if ctx.keepalive is not None and ctx.keepalive_interval_s:
            self._tasks.append(
                asyncio.create_task(self._keepalive_forever(), name=f"keepalive:{ctx.room_id}")
            )
        if not ctx.channel.reports_finishes:
            self._tasks.append(asyncio.create_task(self._watch_forever(), name=f"watch:{ctx.room_id}"))
        ctx.log.info("room worker started", replica=ctx.replica_id, recovered=len(self.buffer))

    async def aclose(self) -> None:
        """Stop: the reporter finishes the batch it has in flight (a successor would resend it, and the
        vendor takes no idempotency key), at most ``STOP_GRACE_S``; everything else is cancelled."""
        self.started = False
        if self._tasks:
            reporting = self._tasks[0]
            self.reporter.stop()
            await asyncio.wait({reporting}, timeout=STOP_GRACE_S)
        for task in [*self._tasks, *self.desk.chat_tasks()]:
            await cancel_and_wait(task)
        self._tasks = []

    async def _keepalive_forever(self) -> None:
        """The vendor's keepalive, at once and then every interval, while this replica holds the room."""
        ctx = self.ctx
        assert ctx.keepalive is not None
        assert ctx.keepalive_interval_s
        while True:
            checkpoint()
            if ctx.owned():
                try:
                    await ctx.keepalive()
                except (ProviderError, RedisError) as exc:  # the account's token is in Redis
                    if being_cancelled():
                        raise
                    ctx.log.warning("keepalive failed; the next one is due in an interval", error=str(exc))
            await pause(clock.real_s(ctx.keepalive_interval_s))

    async def _watch_forever(self) -> None:
        """The vendor's push channel for reply notices, where no callback reports them (SoftSugar without
        a callback URL: the session's socket), while the job runs."""
        await self.ctx.channel.watch(self.room_id, self.job_id, self._noticed)
        await asyncio.Event().wait()  # the job has ended: nothing to follow; the supervisor stops the worker

    async def _noticed(self, event: RoomEvent) -> None:
        """A reply notice from the push channel: a finished reply frees its slot at once."""
        if not isinstance(event, ReplyFinished | ReplyFailed):
            return
        ctx = self.ctx
        try:
            if await ctx.replies.forget(ctx.room_id, [event.reply_id]):
                outcome = "finished" if isinstance(event, ReplyFinished) else "failed"
                ctx.metrics.replies.labels(outcome).inc()
                await ctx.events.add(
                    ctx.room_id, f"reply_{outcome}", job_id=ctx.job_id, reply_id=event.reply_id
                )
        except RedisError as exc:  # the pacer's look at the vendor's queue finds it later
            ctx.log.warning("cannot record a reply's end", reply_id=event.reply_id, error=str(exc))
            return
        self.pacer.last_activity = clock.monotonic()
        self.pacer.kick.set()

    def failure(self) -> str | None:
        """How one of the worker's tasks ended, if one ended (they run until cancelled)."""
        for task in self._tasks:
            if task.done() and not task.cancelled():
                exc = task.exception()
                return f"{type(exc).__name__}: {exc}" if exc else "ended"
        return None

    def wants_more(self) -> bool:
        return self.started and self.reporter.wants_more()

    async def adopt_strays(self) -> int:
        """Claim the entries another consumer was delivered and never acknowledged, idle for a lease: their
        reader lost the room (stalled past its lease, or read once more before it noticed) and dropped them
        unreported with its worker. Soak finding: a handover left every event its loser had read but not
        reported in the group's pending list, never reported -- only a worker's start claimed them."""
        ctx = self.ctx
        entries = await ctx.streams.claim_strays(
            ctx.room_id, ctx.replica_id, clock.real_ms(ctx.settings.lease_ttl_s)
        )
        if not entries:
            return 0
        await self.take(entries, fresh=False)
        ctx.log.info("claimed events another replica left unreported", events=len(entries))
        return len(entries)

    async def recover_lost(self, idle_ids: list[str]) -> int:
        """Take again the entries delivered to this replica that it does not hold (``idle_ids``: its own
        pending entries, idle for a lease): a blocking read whose answer was lost -- a timeout under
        overload -- left them in the group's pending list, delivered, never buffered, never reported.
        Benchmark finding (2x capacity for 30 s): every room kept such entries until its worker restarted."""
        ctx = self.ctx
        held = {b.entry_id for b in self.reporter.buffer}
        lost = [entry_id for entry_id in idle_ids if entry_id not in held]
        if not lost:
            return 0
        entries = await ctx.streams.claim_own(ctx.room_id, ctx.replica_id, lost)
        await self.take(entries, fresh=False)
        ctx.log.warning("took again events a lost read had left unbuffered", events=len(entries))
        return len(entries)

    # --- ingest side ---

    async def take(self, entries: list[Entry], *, fresh: bool) -> None:
        """Entries read from the stream: buffer them for the report, and decide replies for fresh ones."""
        ctx = self.ctx
        now_ms = clock.time_ms()
        stale: list[str] = []
        held = {b.entry_id for b in self.reporter.buffer} if not fresh else frozenset()
        for entry_id_raw, fields in entries:
            entry_id = _text(entry_id_raw)
            if entry_id in held:  # claimed again while buffered: reported once
                continue
            if not fields:  # trimmed while pending: nothing left to report
                stale.append(entry_id)
                continue
            parsed = self._event(entry_id, fields)
            if parsed is None:
                stale.append(entry_id)
                continue
            event, raw = parsed
            at_ms = entry_ms(entry_id)
            if now_ms - at_ms > ctx.settings.report_max_age_s * 1000:
                ctx.metrics.audience_events.labels("expired").inc()
                stale.append(entry_id)
                continue
            self.reporter.add(entry_id, event["type"], event["timestamp"], raw, at_ms)
            if fresh and event["type"] in ANSWERABLE and fields.get(b"d") != b"1":  # d: decided at ingest
                self._consider(at_ms, event)
        if not fresh:
            # Claimed entries (a predecessor's, or strays) may be older than what is buffered: keep the buffer
            # in stream order, so a batch is one contiguous range and its marker (first, last) names it.
            self.reporter.buffer.sort(key=lambda b: entry_order(b.entry_id))
        await ctx.streams.drop(ctx.room_id, stale)
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
                event = {k: v for k, v in accepted[0].items() if k not in PRIVATE_FIELDS}  # ours alone
                event["content"] = orjson.dumps(event["content"]).decode()
                return event, orjson.dumps(event)
            if rejected:
                problem = rejected[0].error_msg
        self.ctx.metrics.audience_events.labels("rejected").inc()
        self.ctx.log.warning("ingest entry rejected", entry_id=entry_id, error=problem)
        return None

    def _consider(self, at_ms: int, wire: dict[str, Any]) -> None:
        try:
            content = orjson.loads(wire["content"])
        except orjson.JSONDecodeError:
            return
        if isinstance(content, dict):
            self.desk.consider(wire["type"], wire["timestamp"], content, since_s=at_ms / 1000)

    def decide_arrivals(self, events: list[dict[str, Any]], *, since_s: float) -> None:
        """Decide for events as they arrive at this replica's ingest endpoint (normalised, ``content`` an
        object), the owner deciding at once instead of when it reads them back from the stream. An event
        whose platform ``message_id`` arrived here lately is a bridge's resend: not decided again (the
        ingest script drops it from the stream too)."""
        recent = self._recent_ids
        for event in events:
            message_id = event.get("message_id")
            if message_id is not None:
                if message_id in recent:
                    continue
                recent[message_id] = None
                if len(recent) > RECENT_IDS:
                    del recent[next(iter(recent))]
            if event["type"] in ANSWERABLE:
                self.desk.consider(event["type"], event["timestamp"], event["content"], since_s=since_s)

    # --- replies ---

    def _hand_over(self, since_s: float, event: Event, decision: Decision) -> None:
        skips = self.ctx.skips
        if not decision.speaks or decision.reply is None:
            if skips is not None:
                skips.note(self.room_id, event, decision, at_ms=int(event.at * 1000))
            return
        if len(self.pacer.decided) + len(self.pacer.for_review) >= HAND_OVER_LIMIT:  # Redis slow or away
            self.ctx.metrics.replies.labels("dropped").inc()
            if skips is not None:
                skips.note(self.room_id, event, QUEUE_FULL, at_ms=int(event.at * 1000))
            return
        self.ctx.metrics.reply_decision.observe(max(0.0, clock.time() - since_s))
        priority = decision.priority
        reply = Reply(decision.reply, priority, self.play_type(priority), arrived_s=since_s)
        if self.desk.review_s > 0 and self.ctx.reviews is not None:  # a human says yes first
            self.pacer.for_review.append((reply, decision.rule or priority))
        else:
            self.pacer.decided.append((reply, decision.rule or priority))
        self.pacer.kick.set()

    async def enqueue_one(self, reply: Reply, source: str) -> tuple[str, str, str | None]:
        return (await self.enqueue([(reply, source)]))[0]

    async def enqueue(self, replies: list[tuple[Reply, str]]) -> list[tuple[str, str, str | None]]:
        """Queue replies (with where each came from) in one round trip, and wake the pacer."""
        results = await self.ctx.replies.enqueue_sourced(self.room_id, replies)
        count_outcomes(self.ctx, results)
        self.pacer.kick.set()
        return results
