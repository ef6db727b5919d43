"""A live room's reply pacer: the room's reply queue, inserted with INSERT_PLAY_SCRIPT at the vendor's pace.

The pacer says the most important waiting reply (:mod:`orchestrator.store.replies`) through the room
provider's audience channel (MetaStudio: INSERT_PLAY_SCRIPT) whenever fewer than ``reply_in_flight`` are in
flight; a reply's finish (MetaStudio's REPLY_COMMAND_FINISH, a reaction from the callback receiver on any
replica) wakes it for the next. A reply without a finish after ``reply_timeout_s`` is given up; one the
vendor does not track is done once said. An operator reply that finds the slots taken by less important
ones first withdraws those at the vendor (one already playing cannot be withdrawn and finishes). After
``idle_after_s`` without a reply, an idle line. It wakes on a kick (a reply queued, a finish) and on a timer
only while something can come due.

Replies the room's worker decided (answers to comments and gifts) wait in :attr:`ReplyPacer.decided` until
the pacer's next pass, which queues them in Redis in the same round trip as its look at the replies in
flight and its taking of the most important waiting ones to fill the free places
(:meth:`~orchestrator.store.replies.ReplyQueue.take`): an answer reaches the vendor one task switch and
one Redis round trip after its comment arrived (there were three round trips and two task switches: at
1,000 live rooms its wait was 10 ms at p99).

Failures of saying a reply: certainly unsent (connection refused, 429) → back in the queue, retried;
ambiguous (timeout, 5xx) → given up and counted ``lost``: saying it twice is worse than not at all;
refused (400, or the job is gone or no longer running) → counted ``failed``, never repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from zoneinfo import ZoneInfo

from redis.exceptions import RedisError

from orchestrator import clock
from orchestrator.domain import PlayMode
from orchestrator.interaction.context import RoomContext
from orchestrator.interaction.policy import IdleLines, PolicyConfig, forbidden_in
from orchestrator.interaction.skips import EXPIRED_IN_REVIEW, QUEUE_FULL
from orchestrator.interaction.timed import Timetable
from orchestrator.providers.base import ReplyOrder
from orchestrator.providers.errors import (
    ProviderConnectError,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderStatusError,
)
from orchestrator.store.replies import Reply
from orchestrator.tasks import being_cancelled, pause, wait_event

#: How often (s) a room in review mode looks for reviews whose time is up.
REVIEW_SWEEP_S = 5.0

#: Queue a reply for the room, with where it came from (the worker's, which also wakes this pacer).
Enqueue = Callable[[Reply, str], Awaitable[object]]


class ReplyPacer:
    """Says one room's queued replies, at most ``reply_in_flight`` unfinished at once."""

    def __init__(
        self,
        ctx: RoomContext,
        enqueue: Enqueue,
        play_type: Callable[[str], str | None],
        *,
        policy: Callable[[], PolicyConfig] = PolicyConfig,
        zone: Callable[[], ZoneInfo] = lambda: ZoneInfo("UTC"),
        review_s: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.ctx = ctx
        self.kick = asyncio.Event()  # a reply was queued, or one finished
        self.busy = 1  # replies in flight at the last pass (unknown at start: look once)
        self.last_activity = clock.monotonic()
        #: Decided replies not queued in Redis yet, with where each came from (the next pass queues them).
        self.decided: deque[tuple[Reply, str]] = deque()
        self._enqueue = enqueue
        self._play_type = play_type
        #: Decided replies for a human's review, not in Redis yet (the room is in review mode).
        self.for_review: deque[tuple[Reply, str]] = deque()
        self._review_s = review_s
        self._swept_review = 0.0  # when expired reviews were last looked for (monotonic)
        self._policy = policy  # the room's policy, as its desk holds it now
        self._zone = zone  # the room's time zone (its schedule's)
        self.timetable = Timetable()
        self._published: list[dict[str, str]] | None = None  # the timetable as last written for operators
        settings = ctx.settings
        self._settings_idle = (
            IdleLines(lines=settings.idle_lines, after_s=settings.idle_after_s)
            if settings.idle_after_s > 0 and settings.idle_lines
            else None
        )

    def idle_lines(self) -> IdleLines | None:
        """The room's idle lines: its policy's, else the settings' (``idle_after_s``, ``idle_lines``)."""
        return self._policy().idle or self._settings_idle

    async def run(self) -> None:
        """Pace the room's replies until cancelled."""
        settings = self.ctx.settings
        while True:
            # Wake on a kick (a reply queued, a finish); on a timer only when something can come due: a
            # reply in flight (its timeout; a lost notice of its end, the channel's recheck), the idle
            # filler, a timed message. A thousand idle rooms cost nothing.
            tick = None
            idle = self.idle_lines()
            if self.busy:
                tick = min(self.ctx.channel.recheck_s(self.ctx.job_id), settings.reply_timeout_s / 4)
            elif idle is not None:
                tick = min(1.0, idle.after_s)
            if self._review_s() > 0:  # reviews expire: look every few seconds
                tick = REVIEW_SWEEP_S if tick is None else min(tick, REVIEW_SWEEP_S)
            timed = self._policy().timed
            if timed or self.timetable.next_due():
                self.timetable.plan(timed, self._zone(), clock.now())
                until = self.timetable.seconds_until_next(clock.now())
                if until is not None:
                    tick = until if tick is None else min(tick, until)
            # At most 20 timer wake-ups a second per room, however compressed the clock.
            await wait_event(self.kick, None if tick is None else max(0.05, clock.real_s(tick)))
            self.kick.clear()
            if not self.ctx.owned():
                continue
            try:
                await self._pace_once()
            except (RedisError, ProviderError) as exc:
                if being_cancelled():
                    raise
                self.ctx.log.warning("reply pacing failed; retrying", error=str(exc))
                await pause(1.0)

    async def _pace_once(self) -> None:
        await self._review()
        ctx = self.ctx
        settings, queue, metrics, room_id = ctx.settings, ctx.replies, ctx.metrics, ctx.room_id
        decided = list(self.decided)
        took = await queue.take(room_id, decided, settings.reply_in_flight)
        for _ in decided:
            self.decided.popleft()
        count_outcomes(ctx, took.queued)
        now = clock.time()
        for answer, _ in decided:
            metrics.reply_queued.observe(max(0.0, now - answer.arrived_s))
        flights = took.in_flight
        said = await self._say_all(took.taken)
        if said is None:  # the vendor could not be reached: the replies wait, the next pass tries again
            self.busy = len(flights) + 1
            self.kick.set()
            return
        if flights and not ctx.channel.reports_finishes:
            # No callbacks report the ends of replies (an account without a callback URL): ask the vendor.
            done = await ctx.channel.finished(room_id, ctx.job_id, [f.reply_id for f in flights])
            if done:
                await queue.forget(room_id, sorted(done))
                metrics.replies.labels("finished").inc(len(done))
                self.last_activity = clock.monotonic()
                flights = [f for f in flights if f.reply_id not in done]
        now_ms = clock.time_ms()
        overdue = [f.reply_id for f in flights if now_ms - f.sent_ms > settings.reply_timeout_s * 1000]
        if overdue:
            await queue.forget(room_id, overdue)
            metrics.replies.labels("timed_out").inc(len(overdue))
            ctx.log.warning("replies given up: no finish reported in time", reply_ids=overdue)
            flights = [f for f in flights if f.reply_id not in overdue]
        if len(flights) + said >= settings.reply_in_flight:
            victims = [f.reply_id for f in flights if f.priority != "operator"]
            if took.waiting == "operator" and victims:
                cleaned = await self._withdraw(victims)
                flights = [f for f in flights if f.reply_id not in cleaned]
        busy = len(flights) + said
        while busy < settings.reply_in_flight:
            reply = await queue.pop(room_id)
            if reply is None:
                break
            in_flight = await self._say(reply)
            if in_flight is None:
                self.kick.set()
                break
            busy += in_flight
        self.busy = busy
        await self._say_timed()
        idle = self.idle_lines()
        now = clock.monotonic()
        if (
            not busy
            and idle is not None
            and now - self.last_activity >= self.timetable.idle_wait(idle, self.last_activity)
        ):
            line = self.timetable.idle_due(idle, self.last_activity, now, await queue.waiting(room_id))
            if line is not None:
                self.last_activity = now
                await self._queue_line(line, "idle")

    async def _review(self) -> None:
        """Put the replies decided for review up for it; every :data:`REVIEW_SWEEP_S`, let those whose time
        is up go (each counted ``rejected``)."""
        reviews, ctx = self.ctx.reviews, self.ctx
        if reviews is None:
            return
        expire_s = self._review_s()
        if self.for_review:
            items = list(self.for_review)
            await reviews.submit(ctx.room_id, items, expire_s or REVIEW_SWEEP_S)
            for _ in items:
                self.for_review.popleft()
        now = clock.monotonic()
        if expire_s > 0 and now - self._swept_review >= clock.real_s(REVIEW_SWEEP_S):
            self._swept_review = now
            for review in await reviews.expire(ctx.room_id):
                await ctx.events.add(
                    ctx.room_id, "review_decided", review_id=review.review_id, outcome="expired",
                    text=review.reply.text,
                )  # fmt: skip
                if ctx.skips is not None:
                    ctx.skips.note(ctx.room_id, None, EXPIRED_IN_REVIEW, at_ms=clock.time_ms())

    async def _say_timed(self) -> None:
        """Queue the timed messages due now, and keep what comes next where operators can see it."""
        policy = self._policy()
        if not policy.timed and not self.timetable.next_due():
            return
        zone, now = self._zone(), clock.now()
        for name, line in self.timetable.due(policy.timed, zone, now):
            await self._queue_line(line, f"timed:{name}")
        upcoming = [
            {"name": name, "at": at.isoformat(), "local": at.astimezone(zone).isoformat()}
            for name, at in self.timetable.next_due()
        ]
        if upcoming != self._published:
            await self.ctx.replies.set_timetable(self.ctx.room_id, upcoming)
            self._published = upcoming

    async def _queue_line(self, line: str, source: str) -> None:
        """A line of our own (idle, timed): queued as ``idle``, unless the policy forbids a word in it."""
        if forbidden_in(line, self._policy().forbidden_words):
            self.ctx.log.warning("line not said: it holds a forbidden word", source=source, line=line[:40])
            return
        await self._enqueue(Reply(line, "idle", self._play_type("idle")), source)
        self.kick.set()

    async def _say_all(self, replies: list[Reply]) -> int | None:
        """Say the replies taken from the queue, in order: how many are now in flight; None when the vendor
        could not be reached (that reply and the rest are back in the queue)."""
        said = 0
        for i, reply in enumerate(replies):
            try:
                in_flight = await self._say(reply)
            except Exception:
                with contextlib.suppress(RedisError):  # Redis away: they are lost, as a popped one was
                    for rest in replies[i + 1 :]:
                        await self.ctx.replies.push_back(self.ctx.room_id, rest)
                raise
            if in_flight is None:
                for rest in replies[i + 1 :]:
                    await self.ctx.replies.push_back(self.ctx.room_id, rest)
                return None
            said += in_flight
        return said

    async def _say(self, reply: Reply) -> bool | None:
        """Say ``reply`` at the vendor; True when it is now in flight (its finish will be reported), None
        when the vendor could not be reached (the reply is back in the queue)."""
        ctx, metrics = self.ctx, self.ctx.metrics
        order = ReplyOrder(
            reply.text,
            PlayMode(reply.play_type) if reply.play_type else None,
            reply.rule_index,
            operator=reply.priority == "operator",
        )
        handed_s = clock.time()  # the reply goes to the vendor now: what it waited is the daemon's doing
        try:
            said = await ctx.channel.say(ctx.room_id, ctx.job_id, order)
        except (ProviderConnectError, ProviderRateLimited) as exc:
            await ctx.replies.push_back(ctx.room_id, reply)
            ctx.log.warning("reply not sent; it waits", error=str(exc))
            await pause(1.0)
            return None
        except ProviderStatusError as exc:
            # A 5xx is ambiguous -- but not a vendor's documented "job not running / gone" answers (which
            # MetaStudio gives as 500 too): those are refusals (ProviderJobNotRunning, ProviderNotFound).
            if isinstance(exc, ProviderServerError):
                metrics.replies.labels("lost").inc()
                ctx.log.error("reply outcome unknown; not repeated", reply=reply.text[:40], error=str(exc))
            else:
                metrics.replies.labels("failed").inc()
                ctx.log.error("reply refused", reply=reply.text[:40], error=str(exc))
            return False
        except ProviderError as exc:
            metrics.replies.labels("lost").inc()
            ctx.log.error("reply outcome unknown; not repeated", reply=reply.text[:40], error=str(exc))
            return False
        in_flight = said.tracked and bool(
            await ctx.replies.record_sent(ctx.room_id, said.reply_id, reply, clock.time_ms())
        )
        self.last_activity = clock.monotonic()
        metrics.replies.labels("inserted").inc()
        waited: dict[str, str] = {}
        if reply.arrived_s:  # an answer to an audience event: from its arrival to the vendor call
            waited_s = max(0.0, handed_s - reply.arrived_s)
            metrics.reply_sent.observe(waited_s)
            waited["waited_ms"] = f"{waited_s * 1000:.2f}"
        await ctx.events.add(
            ctx.room_id,
            "reply_inserted",
            job_id=ctx.job_id,
            reply_id=said.reply_id,
            priority=reply.priority,
            play_type=reply.play_type or "",
            rule_index=reply.rule_index or "",
            text=reply.text,
            **waited,
        )
        return in_flight

    async def _withdraw(self, victims: list[str]) -> set[str]:
        ctx = self.ctx
        cleaned = await ctx.channel.withdraw(ctx.room_id, ctx.job_id, victims)
        cleaned &= set(victims)
        await ctx.replies.forget(ctx.room_id, sorted(cleaned))
        ctx.metrics.replies.labels("cleaned_up").inc(len(cleaned))
        ctx.log.info("withdrew unplayed replies for an operator reply", cleaned=sorted(cleaned))
        return cleaned


def count_outcomes(ctx: RoomContext, results: list[tuple[str, str, str | None]]) -> None:
    """Count queueing outcomes; a reply dropped or evicted for want of room is an unanswered event (the
    queue's script recorded which in the room's event stream: ``reply_dropped``)."""
    for outcome, _, evicted in results:
        ctx.metrics.replies.labels(outcome).inc()
        if evicted:
            ctx.metrics.replies.labels("evicted").inc()
        if ctx.skips is not None and (evicted or outcome == "dropped"):
            ctx.skips.note(ctx.room_id, None, QUEUE_FULL, at_ms=clock.time_ms())
