"""Room actions -- start, stop, restart, refresh the output -- fenced, performed and recorded in one place.

The reconciler and the admin API's forced start/stop both come here, so a start records the same things
whoever asked for it: the new job as the room's current one, with its report URL (audience reports go to
the job that is live, never to the previous one), and an ``action`` entry in the room's event stream.
The vendor is reached through the room's provider (:class:`~orchestrator.providers.base.LiveJobs`).

Each action takes a fence (:mod:`orchestrator.store.fences`): one replica acts, and the fence is renewed
while the vendor call runs and gone one short TTL after its holder died. When the fence's previous holder
died in the middle of a start or restart (its intent is still there), the vendor is asked first: a job it
runs for the room that is not the one being replaced is adopted instead of starting another.

An action that fails, for *any* reason -- the vendor, a room naming something its provider's settings no
longer have (a callback profile), Redis -- releases its fence at once (a later pass may try again, after the
backoff), is written to the room's event stream with its reason, and raises an alert. It never raises into the
caller's pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from orchestrator import clock
from orchestrator.domain import ACTIVE_STATUSES, JobStatus
from orchestrator.providers.base import LiveJobs
from orchestrator.providers.errors import (
    ProviderAuthError,
    ProviderConfigError,
    ProviderError,
    ProviderJobNotRunning,
    ProviderNotFound,
)
from orchestrator.scheduling.rooms import ManagedRoom
from orchestrator.settings import Settings
from orchestrator.store import keys
from orchestrator.store.events import RoomEvents
from orchestrator.store.fences import Fences
from orchestrator.store.rooms import RoomStore

log = structlog.get_logger(__name__)

#: The live jobs of the room's provider (raises UnknownProvider, a ProviderConfigError).
JobsFor = Callable[[ManagedRoom], LiveJobs]
AlertFn = Callable[[ManagedRoom, str, str], Awaitable[None]]


@dataclass(frozen=True)
class Action:
    kind: str  # start | stop | restart | refresh | circuit_open | wait | adopt
    reason: str
    fence: str = ""  # the part of the fence key after the action: window (and job, url, attempt)
    output_url: str | None = None
    alert: str | None = None  # what a human should hear about, whatever the action


class Current(NamedTuple):
    """The room's current job as the caller saw it when it decided."""

    job_id: str | None
    job_state: str | None


class Outcome(NamedTuple):
    status: Literal["done", "adopted", "taken", "failed"]
    job_id: str | None = None  # the job started, stopped or adopted
    error: BaseException | None = None


class RoomActions:
    """Performs room actions for the reconciler and the admin API."""

    def __init__(
        self,
        redis: aioredis.Redis,
        state: RoomStore,
        fences: Fences,
        jobs_for: JobsFor,
        alert: AlertFn,
        settings: Settings,
        *,
        on_record: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self._redis = redis
        self._state = state
        self._fences = fences
        #: Told of each recorded action: (room, action, outcome: done, failed, skipped) -- the metrics.
        self._on_record = on_record
        self._jobs_for = jobs_for
        self._events = RoomEvents(redis, maxlen=settings.callbacks.events_maxlen)
        self._alert = alert
        self._settings = settings
        self.vendor_calls = 0

    async def take(self, room: ManagedRoom, action: Action, current: Current) -> Outcome:
        """Fence, perform and record ``action``. Never raises, but for cancellation and a Redis that cannot
        even take the fence (RedisError: nothing was done)."""
        fence = await self._fences.acquire(keys.room_fence(room.room_id, action.kind, action.fence))
        if fence is None:
            return Outcome("taken")  # another replica (or request) is doing it
        try:
            if fence.orphaned and action.kind in ("start", "restart"):
                adopted = await self._adopt_orphaned(room, current)
                if adopted is not None:
                    await fence.finish()
                    return Outcome("adopted", adopted)
            job_id = await self._perform(room, action, current)
        except asyncio.CancelledError:
            await fence.release()
            raise
        except (ProviderJobNotRunning, ProviderNotFound) as exc:
            await fence.release()
            if action.kind != "refresh":
                await self._failed(room, action, exc)
                return Outcome("failed", error=exc)
            # A repair of a job that has ended meanwhile (its link ENDed because it FAILED or was BLOCKED):
            # nothing a human must hear of -- the caller learns the job's state and restarts it.
            await self.record(room, action, f"skipped: the job is not running ({exc})")
            return Outcome("failed", error=exc)
        except Exception as exc:  # any failure: released, recorded, alerted -- the pass goes on
            await fence.release()
            await self._failed(room, action, exc)
            return Outcome("failed", error=exc)
        await fence.finish()
        await self.record(room, action, "done")
        if action.kind == "restart":  # a restart is news for a human, even when it works (rate-limited)
            await self._alert(room, "restarted", f"restarted: {action.reason}")
        return Outcome("done", job_id)

    async def _perform(self, room: ManagedRoom, action: Action, current: Current) -> str | None:
        jobs = self._jobs_for(room)
        if action.kind == "stop":
            if not current.job_id:
                return None
            self.vendor_calls += 1
            await jobs.stop(room.room_id, current.job_id)
            await self._state.set_job_state(room.room_id, current.job_id, JobStatus.SUCCEED.value)
            return current.job_id
        if action.kind in ("start", "restart"):
            if action.kind == "restart":
                await self._count_attempt(room)
                if current.job_id and current.job_state in ACTIVE_STATUSES:
                    self.vendor_calls += 1
                    await jobs.stop(room.room_id, current.job_id)
            return await self._start(room, jobs)
        if action.kind == "refresh" and current.job_id and action.output_url:
            self.vendor_calls += 1
            await jobs.repair(room, current.job_id, action.output_url)
            await self._redis.hset(
                keys.room_state(room.room_id), f"refreshed:{action.output_url}", int(clock.time() * 1000)
            )
            return current.job_id
        return None

    async def _start(self, room: ManagedRoom, jobs: LiveJobs) -> str:
        """Start a job (the provider adopts one the vendor already runs) and record it with its report URL.

        Raises ProviderError (a ProviderConfigError for a room naming what its provider lacks), RedisError.
        """
        self.vendor_calls += 1
        started = await jobs.start(room)
        await self._state.set_current_job(room.room_id, started.job_id, report_url=started.report_url)
        return started.job_id

    async def _adopt_orphaned(self, room: ManagedRoom, current: Current) -> str | None:
        """A replica died holding this start's fence: whatever it sent may have reached the vendor. A job
        the vendor runs for the room, other than the one being replaced, is made the room's job."""
        self.vendor_calls += 1
        listing = await self._jobs_for(room).list_active([room.room_id])
        jobs = [j for j in listing.get(room.room_id, []) if j.status.active and j.job_id != current.job_id]
        if not jobs:
            return None
        job = max(jobs, key=lambda j: j.created)
        await self._state.set_current_job(
            room.room_id, job.job_id, job.status.value, report_url=job.report_url
        )
        reason = f"the replica starting it died; the vendor runs job {job.job_id} ({job.status.value})"
        await self.record(room, Action("adopt", reason), "done")
        return job.job_id

    async def _count_attempt(self, room: ManagedRoom) -> None:
        now = clock.time()
        await self._redis.zadd(keys.room_restarts(room.room_id), {str(now): now})

    async def _failed(self, room: ManagedRoom, action: Action, exc: Exception) -> None:
        error = str(exc) or type(exc).__name__
        if isinstance(exc, ProviderConfigError) and exc.field:
            error = f"{exc.field}: {error}"
        expected = isinstance(exc, ProviderError | RedisError)
        (log.warning if expected else log.exception)(
            "room action failed", room_id=room.room_id, action=action.kind, error=error
        )
        try:
            if action.kind == "start":  # counts as an attempt: backoff and the circuit breaker apply
                await self._count_attempt(room)
            await self.record(room, action, f"failed: {error}")
            if isinstance(exc, RedisError):
                # Redis, not the vendor or the room: the Redis watcher pages that once for the daemon
                # (soak finding: a refresh that lost Redis half-way paged the room's owner, for nothing
                # the room did).
                return
            kind = "start_failed" if action.kind in ("start", "restart") else "action_failed"
            if isinstance(exc, ProviderAuthError):  # the vendor refuses our credentials: every room is hit
                kind = "vendor_auth"
            await self._alert(room, kind, f"{action.kind} failed: {error}")
        except RedisError as redis_exc:
            log.warning("cannot record a failed action", room_id=room.room_id, error=str(redis_exc))

    async def record(self, room: ManagedRoom, action: Action, outcome: str) -> None:
        """Log the action and add it to the room's event stream. Raises RedisError."""
        log.info(
            "room action",
            room_id=room.room_id,
            action=action.kind,
            reason=action.reason,
            outcome=outcome,
        )
        if self._on_record is not None:
            self._on_record(room.room_id, action.kind, outcome.split(":")[0].split(" ")[0])
        await self._events.action(room.room_id, action.kind, action.reason, outcome, action.fence)
