"""Audience work for live rooms, per replica: which rooms this replica works on, and their workers.

One :class:`AudienceService` per replica -- the supervisor. Every ``lease_ttl_s / 3`` seconds (or at once
when a job's state changed) it lists the managed rooms whose job is active, takes or renews their room
leases (:mod:`orchestrator.store.leases`) and runs one :class:`~.worker.RoomWorker` for each room it
holds: a room's worker stops when the lease or the job goes, so only one replica reports and replies for a
room, and a dead replica's rooms move within one TTL. It also runs the replica's one ingest reader
(:mod:`orchestrator.interaction.reader`) and follows the reactions other replicas publish (a reply
finished or queued, the paragraph -- and its product -- changed, a job's state changed).

Each worker gets a small room context (:mod:`orchestrator.interaction.context`) with its provider's
audience channel, found by the room's provider (kept in the room's state). Replies are decided by the
reply desk (:mod:`orchestrator.interaction.desk`), whatever their source; the web routes ask this service,
never a worker directly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, cast

import structlog
from redis.exceptions import RedisError

from orchestrator import clock
from orchestrator.domain import ACTIVE_STATUSES
from orchestrator.interaction.blocklists import BlockBook
from orchestrator.interaction.chat import ChatBackend
from orchestrator.interaction.context import RoomContext
from orchestrator.interaction.desk import ReplyDesk
from orchestrator.interaction.policies import PolicyBook
from orchestrator.interaction.policy import Event, History, PolicyConfig
from orchestrator.interaction.reader import IngestReader
from orchestrator.interaction.skips import EXPIRED_IN_REVIEW, REJECTED_IN_REVIEW, SkipLog
from orchestrator.interaction.worker import RoomWorker
from orchestrator.metrics import Metrics
from orchestrator.providers.base import AudienceChannel, Provider
from orchestrator.providers.errors import ProviderError
from orchestrator.providers.registry import DEFAULT_PROVIDER
from orchestrator.settings import InteractionSettings
from orchestrator.store import keys
from orchestrator.store.blocklists import Blocklists
from orchestrator.store.events import RoomEvents
from orchestrator.store.ingest import IngestStreams
from orchestrator.store.leases import RoomLeases
from orchestrator.store.policies import PolicyStore
from orchestrator.store.reactions import Reactions
from orchestrator.store.redis import PackedCommands, chunks, execute_packed, packed
from orchestrator.store.redis import text as _text
from orchestrator.store.replies import Reply, ReplyQueue
from orchestrator.store.reviews import Review, Reviews
from orchestrator.store.rooms import parse_muted
from orchestrator.tasks import being_cancelled, cancel_and_wait, checkpoint, in_turns, wait_event

log = structlog.get_logger(__name__)

#: What the supervisor reads of every room's state on each pass.
STATE_FIELDS = (
    "job_id", "job_state", "provider", "product_title", "policy", "muted", "timezone", "review_s"
)  # fmt: skip

#: The room's provider, by name (raises ProviderError while unusable).
ProviderFor = Callable[[str], Provider]


class AudienceService:
    def __init__(
        self,
        redis: Any,
        settings: InteractionSettings,
        *,
        provider_for: ProviderFor,
        policy: PolicyConfig,
        reactions: Reactions,
        metrics: Metrics,
        chat: ChatBackend | None = None,
        events_maxlen: int = 10_000,
        replica_id: str | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.reactions = reactions
        self.metrics = metrics
        self.policies = PolicyStore(redis)
        self.blocklists = Blocklists(redis)
        self.desk = ReplyDesk(
            PolicyBook(self.policies, policy), settings, chat, blocks=BlockBook(self.blocklists)
        )
        self.events = RoomEvents(redis, maxlen=events_maxlen)
        self.streams = IngestStreams(redis, self.events)
        self.leases = RoomLeases(redis, ttl_s=settings.lease_ttl_s, replica_id=replica_id)
        self.queue = ReplyQueue(redis, max_pending=settings.reply_max_pending, events_maxlen=events_maxlen)
        self.skips = SkipLog(self.events, metrics.unanswered)
        self.reviews = Reviews(redis)
        self.workers: dict[str, RoomWorker] = {}
        self._provider_for = provider_for
        self._changed = asyncio.Event()
        self._passes = 0  # supervise passes: every third also claims strays
        self._retiring: dict[str, asyncio.Task[None]] = {}  # workers being stopped, by room
        # The room's state fields the supervisor reads on every pass.
        self._state_read = PackedCommands(
            lambda room_id: packed("HMGET", keys.room_state(room_id), *STATE_FIELDS)
        )
        self._reader = IngestReader(
            self.streams,
            self.leases,
            self.workers,
            batch=settings.report_max_events,
            on_missing_group=self._changed.set,
        )
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def chat(self) -> ChatBackend | None:
        return self.desk.chat

    def play_type(self, priority: str) -> str | None:
        return cast(str | None, self.settings.play_types.get(cast(Any, priority)))

    # --- what the web routes ask ---

    async def enqueue(self, room_id: str, reply: Reply, *, source: str) -> tuple[str, str, str | None]:
        """Queue a reply for the room (any replica may; the room's owner is woken)."""
        return (await self.enqueue_many(room_id, [(reply, source)]))[0]

    async def enqueue_many(
        self, room_id: str, replies: list[tuple[Reply, str]]
    ) -> list[tuple[str, str, str | None]]:
        """Queue replies (with where each came from) in one round trip; each is recorded in the room's
        event stream by the same script."""
        worker = self.workers.get(room_id)
        if worker is not None:
            return await worker.enqueue(replies)
        results = await self.queue.enqueue_sourced(room_id, replies)
        for outcome, _, evicted in results:
            self.metrics.replies.labels(outcome).inc()
            if evicted:
                self.metrics.replies.labels("evicted").inc()
        with contextlib.suppress(RedisError):
            await self.reactions.publish("reply_queued", room_id=room_id)
        return results

    def arrivals(self, room_id: str, *, since_s: float) -> Callable[[list[dict[str, Any]]], None] | None:
        """Where the ingest endpoint hands the room's arriving events (normalised) for reply decisions --
        when this replica owns the room; None elsewhere (the owner decides when it reads them)."""
        worker = self.workers.get(room_id)
        if worker is None or not worker.started:
            return None
        return partial(worker.decide_arrivals, since_s=since_s)

    async def answer_vendor_rule(
        self, room_id: str, job_id: str, event: Event, rule_index: str | None, *, product: str
    ) -> tuple[bool, str | None, str]:
        """A comment the vendor's rule handed to the daemon, answered by the desk and queued with the rule's
        index: (queued, reply id, the decision's reason)."""
        worker = self.workers.get(room_id)
        if worker is not None and worker.job_id == job_id:
            history, policy = worker.desk.history, worker.desk.policy
        else:  # asked of a replica that does not own the room: the room's policy all the same
            name = await self.redis.hget(keys.room_state(room_id), "policy")
            await self.desk.book.want_also(_text(name) if name else None)
            history, policy = History(), self.desk.book.policy_for(_text(name) if name else None)
        decision = await self.desk.answer_vendor_rule(history, event, product, policy=policy)
        if not decision.speaks or decision.reply is None:
            return False, None, decision.reason
        reply = Reply(
            decision.reply, decision.priority, self.play_type(decision.priority), rule_index=rule_index
        )
        outcome, reply_id, _ = await self.enqueue(room_id, reply, source=f"vendor_rule:{rule_index or ''}")
        return outcome == "queued", reply_id, decision.reason

    async def decide_review(
        self, room_id: str, review_id: str, *, approve: bool, text: str | None = None
    ) -> tuple[str, Review | None, tuple[str, str, str | None] | None]:
        """A reviewer's answer on one waiting reply: ``(outcome, the review, the queueing result)`` with
        outcome ``approved``, ``edited``, ``rejected``, ``expired`` or ``gone`` (decided already)."""
        review = await self.reviews.take(room_id, review_id)
        if review is None:
            return "gone", None, None
        if review.expires_ms <= clock.time_ms():
            outcome = "expired"
        elif not approve:
            outcome = "rejected"
        else:
            outcome = "edited" if text is not None and text != review.reply.text else "approved"
        await self.events.add(
            room_id, "review_decided", review_id=review_id, outcome=outcome, text=text or review.reply.text
        )
        if outcome in ("expired", "rejected"):
            skipped = EXPIRED_IN_REVIEW if outcome == "expired" else REJECTED_IN_REVIEW
            self.skips.note(room_id, None, skipped, at_ms=clock.time_ms())
            return outcome, review, None
        reply = replace(review.reply, text=text or review.reply.text)
        queued = await self.enqueue(room_id, reply, source=f"review:{review.source}")
        return outcome, review, queued

    async def release_replies(self, room_id: str, holder: str) -> None:
        """Let the room's held replies go (:meth:`ReplyQueue.hold`) and wake its owner's pacer."""
        await self.queue.release(room_id, holder)
        await self.reactions.publish("reply_queued", room_id=room_id)

    async def clear_replies(
        self, room_id: str, channel: AudienceChannel | None
    ) -> tuple[int, set[str], ProviderError | None]:
        """An operator's "clear": drop the waiting replies and forget those in flight, and withdraw at the
        vendor whatever it has not played yet. (dropped, withdrawn, the vendor's refusal if any)."""
        dropped = len(await self.queue.pending(room_id))
        await self.queue.clear(room_id)
        job_id = await self.redis.hget(keys.room_state(room_id), "job_id")
        withdrawn: set[str] = set()
        if channel is not None and job_id:
            try:
                withdrawn = await channel.withdraw(room_id, _text(job_id), None)
            except ProviderError as exc:
                return dropped, withdrawn, exc
        await self.events.add(room_id, "replies_cleared", dropped=dropped, withdrawn=len(withdrawn))
        worker = self.workers.get(room_id)
        if worker is not None:
            worker.pacer.kick.set()
        return dropped, withdrawn, None

    def answer_question(self, question: str, *, user: str) -> str:
        return self.desk.answer_question(question, user=user)

    # --- life cycle ---

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._supervise_forever(), name="audience-supervisor"),
            asyncio.create_task(self._reader.run(), name="audience-reader"),
            asyncio.create_task(self._react_forever(), name="audience-reactions"),
            asyncio.create_task(self.desk.book.follow(self.reactions), name="audience-policies"),
            asyncio.create_task(self.skips.run(), name="audience-skips"),
            asyncio.create_task(self.desk.blocks.follow(self.reactions), name="audience-blocklists"),
        ]

    async def aclose(self) -> None:
        await self._reader.stop()
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
        live: dict[str, tuple[str, str, str]] = {}  # room → (job, provider, product)
        # live room → what its desk follows: the policy it names, the reaction kinds switched off in it, its
        # time zone, its review mode
        choices: dict[str, tuple[str | None, frozenset[str], str, float]] = {}
        if room_ids:
            states: list[Any] = []
            for chunk in chunks(room_ids):  # the loop is not held for all at once
                states += await execute_packed(self.redis, [self._state_read(r) for r in chunk])
            for answer in states:
                if isinstance(answer, Exception):
                    raise answer
            async for room_id, (
                job_id,
                job_state,
                provider,
                product,
                policy,
                muted,
                tz,
                review_s,
            ) in in_turns(zip(room_ids, states, strict=True)):
                if job_id and job_state and _text(job_state) in ACTIVE_STATUSES:
                    live[room_id] = (
                        _text(job_id),
                        _text(provider) if provider else DEFAULT_PROVIDER,
                        _text(product) if product else "",
                    )
                    choices[room_id] = (
                        _text(policy) if policy else None,
                        parse_muted(muted),
                        _text(tz) if tz else "UTC",
                        float(review_s or 0),
                    )
        # The policies the live rooms name are held before any of their comments is decided.
        await self.desk.book.want({choice[0] for choice in choices.values() if choice[0]})
        await self.desk.blocks.want(set(choices))
        held = await self.leases.acquire(sorted(live))
        for room_id, worker in list(self.workers.items()):
            failed = worker.failure()
            if failed is not None:  # a bug, not an outage (those are retried inside): start it afresh
                log.error("room worker failed; restarting it", room_id=room_id, error=failed)
            if failed is not None or room_id not in held or live[room_id][0] != worker.job_id:
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
        running = [r for r in sorted(held) if r in self.workers and self.workers[r].started]
        async for room_id in in_turns(sorted(held)):
            retiring = self._retiring.get(room_id)
            if retiring is not None and not retiring.done():
                continue  # the room's previous worker is still stopping: start anew once it has
            if room_id not in self.workers:
                job_id, provider, product = live[room_id]
                made = self._worker(room_id, job_id, provider)
                if made is None:
                    continue
                made.desk.follow(*choices[room_id])
                await made.start(product)
                self.workers[room_id] = made
            else:  # the room may name another policy, or switch reactions, now: in force at once
                self.workers[room_id].desk.follow(*choices[room_id])
        if sweep and running:
            # Asked of every room at once (pipelined); claimed only where some wait.
            stray_ms = clock.real_ms(self.settings.lease_ttl_s)
            for room_id in await self.streams.with_strays(running, self.leases.replica_id, stray_ms):
                owner = self.workers.get(room_id)
                if owner is not None and owner.started:
                    await owner.adopt_strays()
            own = await self.streams.own_idle(running, self.leases.replica_id, stray_ms)
            for room_id, idle_ids in own.items():
                owner = self.workers.get(room_id)
                if owner is not None and owner.started:
                    await owner.recover_lost(idle_ids)
        self.metrics.rooms_owned.set(len(self.workers))
        await self._reader.refresh()  # a room started (or its lease valid again) is read at once

    def _worker(self, room_id: str, job_id: str, provider: str) -> RoomWorker | None:
        try:
            vendor = self._provider_for(provider)
            channel, jobs = vendor.audience, vendor.jobs
        except Exception as exc:  # a provider that cannot be used: said once per pass, the others go on
            log.error("room's provider unusable; no audience work for it", room_id=room_id, error=str(exc))
            return None
        ctx = RoomContext(
            room_id,
            job_id,
            self.settings,
            self.metrics,
            self.leases,
            self.streams,
            self.queue,
            self.events,
            channel,
            log.bind(room_id=room_id, job_id=job_id),
            keepalive=partial(jobs.keepalive, room_id, job_id) if jobs.keepalive_interval_s else None,
            keepalive_interval_s=jobs.keepalive_interval_s,
            skips=self.skips,
            reviews=self.reviews,
        )
        return RoomWorker(ctx, self.desk, cast(Any, self.settings.play_types))

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
                if kind in ("reply_finished", "reply_failed"):
                    worker.pacer.last_activity = clock.monotonic()
                    self.metrics.replies.labels("finished" if kind == "reply_finished" else "failed").inc()
                    worker.pacer.kick.set()
                elif kind == "reply_queued":
                    worker.pacer.kick.set()
                elif kind == "paragraph" and reaction.get("job_id") == worker.job_id:
                    worker.desk.product = str(reaction.get("product_title") or "")
