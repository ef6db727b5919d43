"""The scheduler: wakes the reconciler at each room's next schedule boundary, and every interval.

APScheduler 3.x ``AsyncIOScheduler`` with its default in-memory job store -- never a shared store (3.x
stores must not be shared between schedulers, and its Redis store blocks the loop). The jobs are derived
from the room definitions in Redis: rebuilt at start and whenever a room changes (``rooms_changed``
reactions reach every replica). One ``date`` job per room at its next boundary (computed by
:func:`orchestrator.scheduling.schedules.evaluate`, not by APScheduler's cron, which repeats a fall-back
hour), re-armed after each run; plus the periodic pass, which also re-derives the boundary jobs (a missed
``rooms_changed`` costs at most one interval). A missed or late fire is harmless: the periodic pass
recomputes what should be true.

The periodic pass runs ``interval_s`` after the previous one *ended* (a fixed delay, not a fixed rate): a
pass longer than the interval is followed by a pause as long, not by the next pass at once. Soak finding:
at a fixed rate, passes that outgrew their interval ran back to back, the reconciler took the whole event
loop, and the room leases it shares the loop with lapsed (and APScheduler warned at every missed tick).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from datetime import UTC, datetime, timedelta

import structlog
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from redis.exceptions import RedisError

from orchestrator import clock
from orchestrator.scheduling.reconciler import Reconciler
from orchestrator.scheduling.rooms import ManagedRoom, RoomConfigs
from orchestrator.scheduling.schedules import evaluate
from orchestrator.store.reactions import Reactions
from orchestrator.tasks import cancel_and_wait, checkpoint, in_turns, wait_event

log = structlog.get_logger(__name__)


class BoundaryScheduler:
    def __init__(
        self,
        reconciler: Reconciler,
        configs: RoomConfigs,
        reactions: Reactions | None,
        *,
        interval_s: float,
        tolerance_s: float = 0.0,
    ) -> None:
        self._reconciler = reconciler
        self._configs = configs
        self._reactions = reactions
        self._interval_s = interval_s
        self._tolerance = timedelta(seconds=tolerance_s)  # woken this long after a boundary: all agree then
        self._scheduler = AsyncIOScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        self._listener: asyncio.Task[None] | None = None
        self._passes: asyncio.Task[None] | None = None
        self._pass_wanted = asyncio.Event()  # pass_now(): the next pass goes at once
        #: How late boundary wake-ups ran (ms), most recent last: for /metrics and the benchmark.
        self.lateness_ms: deque[float] = deque(maxlen=100_000)

    async def start(self, *, periodic: bool = True) -> None:
        self._scheduler.start()
        if periodic:
            self._passes = asyncio.create_task(self._pass_forever(), name="reconcile-passes")
        try:
            await self.rebuild()
        except RedisError as exc:  # not fatal: the periodic pass rebuilds once Redis answers
            log.warning("cannot read the rooms from Redis yet; retrying every pass", error=str(exc))
        if self._reactions is not None:
            self._listener = asyncio.create_task(self._listen(), name="scheduler-rooms-changed")

    async def aclose(self) -> None:
        await cancel_and_wait(self._listener)
        await cancel_and_wait(self._passes)
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    async def rebuild(self, *, missing_only: bool = False) -> int:
        """Re-derive the boundary jobs from the rooms in Redis (with ``missing_only``, only for rooms that
        have none: a job that exists re-arms itself from the current definition when it fires); jobs of
        rooms that are gone are removed. Returns how many rooms there are."""
        rooms = await self._configs.all()
        wanted = {f"boundary:{room.room_id}" for room in rooms}
        async for job in in_turns(self._scheduler.get_jobs()):
            if job.id.startswith("boundary:") and job.id not in wanted:
                with contextlib.suppress(JobLookupError):  # removed meanwhile (a room deleted)
                    job.remove()
        async for room in in_turns(rooms):
            if not missing_only or self._scheduler.get_job(f"boundary:{room.room_id}") is None:
                self.arm(room)
        return len(rooms)

    async def _pass_forever(self) -> None:
        """The periodic pass, then a pause of the interval (cut short by :meth:`pass_now`), for ever."""
        while True:
            self._pass_wanted.clear()
            await self._periodic_pass()
            await wait_event(self._pass_wanted, clock.real_s(self._interval_s))

    async def _periodic_pass(self) -> None:
        # Re-derive the boundary jobs too: rooms_changed arrives by pub/sub, which is at-most-once, so a
        # replica that missed one still gets the room's boundary wake-up by the next pass.
        try:
            await self.rebuild(missing_only=True)
            await self._reconciler.reconcile_all()
        except RedisError as exc:  # one line per pass while Redis is away, not a traceback
            log.warning("reconcile pass skipped: Redis unreachable", error=str(exc) or type(exc).__name__)

    def arm(self, room: ManagedRoom) -> None:
        """Schedule ``room``'s next boundary (or nothing, if none is within the horizon)."""
        job_id = f"boundary:{room.room_id}"
        boundary = evaluate(room.schedule, clock.now()).next_boundary
        if boundary is None:
            if self._scheduler.get_job(job_id) is not None:  # (asking is cheaper than a JobLookupError)
                with contextlib.suppress(JobLookupError):
                    self._scheduler.remove_job(job_id)
            return
        self._scheduler.add_job(
            self._boundary,
            DateTrigger(run_date=clock.to_real(boundary + self._tolerance)),
            id=job_id,
            replace_existing=True,
            args=[room.room_id, (boundary + self._tolerance).timestamp()],
        )

    def pass_now(self) -> None:
        """Run the periodic pass at once (Redis is back: boundaries that came meanwhile were skipped)."""
        self._pass_wanted.set()

    def next_boundary(self, room_id: str) -> datetime | None:
        job = self._scheduler.get_job(f"boundary:{room_id}")
        if job is None or len(job.args) < 2:
            return None
        return datetime.fromtimestamp(job.args[1], UTC)  # the simulated instant (next_run_time is real)

    async def _boundary(self, room_id: str, due: float) -> None:
        self.lateness_ms.append((clock.time() - due) * 1000)
        try:
            await self._reconciler.reconcile_room(room_id)
            room = await self._configs.get(room_id)
        except RedisError as exc:  # the periodic pass re-arms the boundary once Redis answers
            log.warning("boundary pass skipped: Redis unreachable", room_id=room_id, error=str(exc))
            return
        if room is not None:
            self.arm(room)

    async def _changed(self, room_id: str) -> None:
        try:
            await self._reconciler.reconcile_room(room_id)
        except RedisError as exc:
            log.warning("room pass skipped: Redis unreachable", room_id=room_id, error=str(exc))

    async def _listen(self) -> None:
        assert self._reactions is not None
        async with self._reactions.subscribe() as queue:
            while True:
                checkpoint()
                reaction = await queue.get()
                kind, room_id = reaction.get("kind"), str(reaction.get("room_id"))
                if kind == "job_hint":
                    # A vendor's callback says the job's status changed: look at the room now (the
                    # reconciler asks the vendor's API before it acts on what the callback claims).
                    self._reconcile_soon(room_id)
                    continue
                if kind != "rooms_changed":
                    continue
                room = await self._configs.get(room_id)
                if room is None:
                    with contextlib.suppress(Exception):
                        self._scheduler.remove_job(f"boundary:{room_id}")
                    continue
                self.arm(room)
                self._reconcile_soon(room_id)

    def _reconcile_soon(self, room_id: str) -> None:
        """Reconcile the room now, as a scheduler job (the listener only listens)."""
        self._scheduler.add_job(self._changed, args=[room_id], id=f"changed:{room_id}", replace_existing=True)
