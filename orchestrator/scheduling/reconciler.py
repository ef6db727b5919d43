"""The reconciler: desired state (schedule, pause) against actual state (Redis, refreshed from the vendor),
and the one action that closes the gap -- taken once, by one replica.

:func:`decide` is pure and table-tested:

* paused → nothing;
* should be live, no job → **start**; job FAILED / BLOCKED / SUCCEED / CANCELED, or gone at the vendor
  (a documented "does not exist or has expired" answer) → **restart** (after an exponential backoff; at
  ``max_restarts_per_hour`` the circuit opens: alert, no restart);
* should be live, an RTMP output ENDed, or DISCONNECTED/RECONNECTING longer than the grace → **refresh**
  the output URL once, then **restart** if it is still not up ``refresh_wait_s`` later;
* should be off, job active → **stop** (also a job left running when the window ended while the daemon
  was down).

Destructive transitions are confirmed with the vendor before a restart: a job's state comes only from
the vendor's API (callbacks carry none), polled every pass while it is active; an RTMP ``END`` arrives by
callback, whose body MSS_A does not sign, so it first gets the harmless repair (REFRESH_OUTPUT_URL), and
only a link still not up after ``refresh_wait_s`` restarts the job.

Actions are performed by :mod:`orchestrator.scheduling.actions` (shared with the admin API): a fence keyed
by room, action and desired window (plus the job it replaces), so N replicas reconciling the same room at
once make one vendor call; every action and its reason go into the room's event stream; a failed action
releases its fence, and a failed start counts as an attempt (backoff, circuit breaker).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from orchestrator import clock
from orchestrator.domain import ACTIVE_STATUSES, DOWN_LINK_STATES, TERMINAL_STATUSES, JobStatus
from orchestrator.providers.base import JobRef
from orchestrator.providers.errors import ProviderError, ProviderJobNotRunning, ProviderNotFound
from orchestrator.scheduling.actions import Action, AlertFn, Current, JobsFor, Outcome, RoomActions
from orchestrator.scheduling.rooms import ManagedRoom, RoomConfigs
from orchestrator.scheduling.schedules import Desired, describe_instant, evaluate
from orchestrator.settings import Settings
from orchestrator.store import keys
from orchestrator.store.fences import Fences
from orchestrator.store.rooms import RoomStore

log = structlog.get_logger(__name__)

ACTIVE = ACTIVE_STATUSES
TERMINAL = TERMINAL_STATUSES
DOWN = DOWN_LINK_STATES
ResolveFn = Callable[[ManagedRoom, list[str], str], Awaitable[bool]]
#: Active jobs per room, from each provider's listing of them (None: a provider could not say).
Listing = dict[str, list[JobRef]]


@dataclass(frozen=True)
class Actual:
    """What Redis says about the room now."""

    job_id: str | None
    job_state: str | None
    rtmp: dict[str, dict[str, Any]]  # url → {state, since_ms}
    restarts_last_hour: list[float]  # epoch seconds
    refreshed_at_ms: dict[str, int]  # url → when we asked for REFRESH_OUTPUT_URL during this outage
    job_started_ms: int | None = None  # when we recorded the current job
    open_alerts: tuple[str, ...] = ()  # alerts sent for the room and not yet resolved
    down_since_ms: int | None = None  # since when it should have been live and was not (none: it is)


def healthy(desired: Desired, actual: Actual) -> bool:
    """Live as it should be: the job PROCESSING, every output link connected (pure)."""
    return (
        desired.live
        and actual.job_state == "PROCESSING"
        and all(link["state"] == "CONNECTED" for link in actual.rtmp.values())
    )


def decide(room: ManagedRoom, desired: Desired, actual: Actual, now: float) -> Action | None:
    """The one action that moves the room toward its desired state, or None. Pure."""
    if room.paused:
        return None
    active = actual.job_state in ACTIVE
    window = desired.window_id
    if not desired.live:
        if active:
            next_live = describe_instant(desired.next_boundary, room.schedule.timezone)
            return Action("stop", f"outside its schedule (next live: {next_live})", window)
        if actual.job_state == "BLOCKED" and "room_blocked" not in actual.open_alerts:
            # Soak finding: a job blocked by the vendor's content review just before its window ended was
            # seen after the end -- no restart, so no page; the next window would start into the same block.
            reason = f"job {actual.job_id} was BLOCKED by the vendor's content review"
            return Action("wait", reason, alert="room_blocked")
        return None
    # Soak finding: overlapping windows merge into one live period; a job started in the first window and
    # BLOCKED in the second was taken for a finished job of an earlier window -- restarted as a "start",
    # and the block that needs a human never paged. Earlier means before the live period began.
    period_start = desired.period[0] if desired.period is not None else None
    previous_period = (
        period_start is not None
        and actual.job_started_ms is not None
        and actual.job_started_ms < period_start.timestamp() * 1000
    )
    if actual.job_id is None or (not active and previous_period):
        # No job, or only a finished one from an earlier live period: this window's start, not a repair.
        return _restart_or_wait(room, actual, now, "start", "scheduled window began", window)
    if not active:
        reason = f"job {actual.job_id} is {actual.job_state} while the room should be live"
        alert = "room_blocked" if actual.job_state == "BLOCKED" else None
        return _restart_or_wait(room, actual, now, "restart", reason, f"{window}:{actual.job_id}", alert)
    for url, link in actual.rtmp.items():
        ended = link["state"] == "END"
        down_s = now - link["since_ms"] / 1000
        if ended or (link["state"] in DOWN and down_s > room.restart.rtmp_grace_s):
            alert = "rtmp_end" if ended else None
            what = "ended (the vendor says it will not reconnect)" if ended else f"{link['state']}"
            refreshed = actual.refreshed_at_ms.get(url)
            if refreshed is None or refreshed < link["since_ms"]:
                reason = f"RTMP output {url} {what} for {down_s:.0f}s"
                return Action("refresh", reason, f"{window}:{url}:{link['since_ms']}", url, alert=alert)
            if now - refreshed / 1000 > room.restart.refresh_wait_s:
                reason = f"RTMP output {url} still {link['state']} after refreshing the output URL"
                return _restart_or_wait(
                    room, actual, now, "restart", reason, f"{window}:{actual.job_id}:{url}", alert
                )
    return None


def settled(room: ManagedRoom, desired: Desired, now: float, tolerance_s: float) -> bool:
    """Whether the schedule says the same ``tolerance_s`` either side of ``now`` (pure).

    Soak finding: replicas' clocks differ (by the skew NTP leaves); at a window's end the replica ahead
    stopped the job while one behind still saw the window and restarted it -- a job started after its
    window, a flap at every boundary. Starts, restarts and stops wait until no replica within the tolerance
    can disagree (it must exceed the largest skew between replicas); the boundary wake-up is armed that much
    after the boundary."""
    if tolerance_s <= 0:
        return True
    if desired.next_boundary is not None and desired.next_boundary.timestamp() - now <= tolerance_s:
        return False
    return evaluate(room.schedule, datetime.fromtimestamp(now - tolerance_s, UTC)).live == desired.live


def _restart_or_wait(
    room: ManagedRoom,
    actual: Actual,
    now: float,
    kind: str,
    reason: str,
    fence: str,
    alert: str | None = None,
) -> Action:
    """``kind`` now, or wait out the backoff, or open the circuit (pure)."""
    recent = sorted(t for t in actual.restarts_last_hour if now - t < 3600)
    if kind == "start" and not recent:
        return Action("start", reason, fence, alert=alert)
    policy = room.restart
    if len(recent) >= policy.max_restarts_per_hour:
        return Action("circuit_open", f"{len(recent)} restarts in the last hour; not restarting: {reason}")
    delay = (
        min(policy.backoff_max_s, policy.backoff_initial_s * 2 ** max(0, len(recent) - 1)) if recent else 0.0
    )
    if recent and now - recent[-1] < delay:
        return Action("wait", f"backoff {delay:.0f}s after the last attempt: {reason}", alert=alert)
    return Action(kind, reason, f"{fence}:attempt{len(recent)}", alert=alert)


def _listed_state(vendor_active: Listing | None, room_id: str, job_id: str) -> str | None:
    """The job's state in the tenant-wide listing of active jobs, if it is there."""
    for job in (vendor_active or {}).get(room_id, []):
        if job.job_id == job_id:
            return job.status.value
    return None


class Reconciler:
    def __init__(
        self,
        redis: aioredis.Redis,
        configs: RoomConfigs,
        state: RoomStore,
        jobs_for: JobsFor,
        alert: AlertFn,
        settings: Settings,
        *,
        resolve: ResolveFn | None = None,
        on_action: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self._redis = redis
        self._resolve = resolve
        self._configs = configs
        self._state = state
        self._jobs_for = jobs_for
        self._alert = alert
        self._settings = settings
        self._polls = 0
        self.actions = RoomActions(
            redis,
            state,
            Fences(redis, ttl_s=settings.scheduling.fence_ttl_s),
            jobs_for,
            alert,
            settings,
            on_record=on_action,
        )
        self._room_locks: dict[str, asyncio.Lock] = {}

    @property
    def vendor_calls(self) -> int:
        """Vendor API calls made by this reconciler: its listings and polls, and its actions'."""
        return self._polls + self.actions.vendor_calls

    async def reconcile_all(self) -> None:
        """One pass over every room, ``scheduling.pass_concurrency`` rooms at a time.

        Soak finding: rooms were reconciled one after another, so the 26 rooms whose windows opened
        together started a vendor round trip apart -- the last over half a minute late -- and one room's
        hanging vendor call held up every other room's repair for the vendor timeout.

        Raises RedisError: Redis is gone for every room, so the pass ends (one line, not one per room)."""
        rooms = await self._configs.all()
        vendor_active = await self._vendor_active_jobs(rooms)
        limit = asyncio.Semaphore(self._settings.scheduling.pass_concurrency)
        lost: list[RedisError] = []

        async def one(room: ManagedRoom) -> None:
            async with limit:
                if lost:
                    return
                try:
                    await self.reconcile(room, vendor_active)
                except RedisError as exc:
                    lost.append(exc)
                except Exception:  # one room's failure must not stop the others
                    log.exception("reconcile failed", room_id=room.room_id)

        await asyncio.gather(*(one(room) for room in rooms))
        if lost:
            raise lost[0]

    async def reconcile_room(self, room_id: str) -> Action | None:
        room = await self._configs.get(room_id)
        return await self.reconcile(room) if room is not None else None

    async def reconcile(self, room: ManagedRoom, vendor_active: Listing | None = None) -> Action | None:
        # One pass per room at a time in this process: a boundary wake-up and the periodic pass must not
        # interleave -- the periodic pass would see the job the other is starting in the vendor's listing
        # before it is recorded, and adopt it a second time. (Across replicas the fences decide.)
        lock = self._room_locks.setdefault(room.room_id, asyncio.Lock())
        async with lock:
            return await self._reconcile(room, vendor_active)

    async def _reconcile(
        self, room: ManagedRoom, vendor_active: Listing | None, *, again: bool = True
    ) -> Action | None:
        actual = await self._observe(room, vendor_active)
        if vendor_active is not None and actual.job_id and actual.job_state in ACTIVE:
            await self._stop_strays(room, actual, vendor_active)
        # The time is read after the look at Redis and the vendor, which can take seconds (a slow poll or
        # listing, retries): soak finding -- a pass that read it before restarted a failed job by a window
        # that had ended while it looked, a job started outside every window.
        now = clock.time()
        desired = evaluate(room.schedule, datetime.fromtimestamp(now, UTC))
        action = decide(room, desired, actual, now)
        tolerance_s = self._settings.scheduling.boundary_tolerance_s
        if action is not None and action.kind in ("start", "restart", "stop"):
            # Within the tolerance of a boundary: every replica's clock agrees after it.
            action = action if settled(room, desired, now, tolerance_s) else None
        if action is not None and action.alert:
            await self._alert(room, action.alert, action.reason)
        await self._watch_down(room, desired, actual, now)
        if action is None and actual.open_alerts and self._resolve is not None and healthy(desired, actual):
            await self._resolve(room, list(actual.open_alerts), "the room is live again")
        if action is None or action.kind == "wait":
            return action
        with structlog.contextvars.bound_contextvars(room_id=room.room_id):
            outcome = await self._act(room, action, actual, desired)
        if (
            again
            and action.kind == "refresh"
            and outcome is not None
            and isinstance(outcome.error, ProviderJobNotRunning | ProviderNotFound)
            and actual.job_id
        ):
            # Soak finding: a link ENDs because its job FAILED or was BLOCKED; a pass working from a listing
            # taken before that refreshed the dead job's output (refused), alerted, and restarted only a pass
            # later. Now: learn the job's state from the vendor and decide again, at once.
            await self._poll(room, actual.job_id, actual.job_state or "PROCESSING")
            return await self._reconcile(room, None, again=False)
        return action

    async def _observe(self, room: ManagedRoom, vendor_active: Listing | None) -> Actual:
        state, restarts = await self._state.observe(room.room_id, restarts_since_s=clock.time() - 3600)
        job_id, job_state = state.get("job_id"), state.get("job_state")
        if job_id and job_state in ACTIVE:
            listed = _listed_state(vendor_active, room.room_id, job_id)
            if listed is not None:  # the pass's tenant-wide listing already says: no call per room
                if listed != job_state:
                    await self._state.set_job_state(room.room_id, job_id, listed)
                job_state = listed
            else:  # not listed as active (or no listing): ask about this job
                job_state = await self._poll(room, job_id, job_state)
        if job_state not in ACTIVE:
            adopted = await self._adopt(room, vendor_active)
            if adopted is not None:
                state = await self._state.state(room.room_id) or {}
                job_id, job_state = adopted.job_id, adopted.status.value
        refreshed = {k[len("refreshed:") :]: int(v) for k, v in state.items() if k.startswith("refreshed:")}
        started = state.get("job_started_at")
        down_since = state.get("down_since")
        return Actual(
            job_id,
            job_state,
            state.get("rtmp", {}),
            restarts,
            refreshed,
            int(started) if started else None,
            tuple(state.get("open_alerts", ())),
            int(down_since) if down_since else None,
        )

    async def _watch_down(self, room: ManagedRoom, desired: Desired, actual: Actual, now: float) -> None:
        """``room_down``, once per outage: the room should be live and has not been for
        ``down_alert_after_s`` -- whatever the reason, and whatever the daemon is doing about it (its own
        repairs get that long first). The outage's start is kept in the room's state, shared by replicas."""
        state_key = keys.room_state(room.room_id)
        if room.paused or not desired.live or healthy(desired, actual):
            if actual.down_since_ms is not None:
                await self._redis.hdel(state_key, "down_since")
            return
        if actual.down_since_ms is None:
            await self._redis.hsetnx(state_key, "down_since", int(now * 1000))
            return
        down_s = now - actual.down_since_ms / 1000
        if down_s > self._settings.scheduling.down_alert_after_s and "room_down" not in actual.open_alerts:
            links = ", ".join(f"{url} {link['state']}" for url, link in actual.rtmp.items()) or "no output"
            what = f"job {actual.job_id} {actual.job_state}" if actual.job_id else "no job"
            await self._alert(
                room, "room_down", f"should be live and has not been for {down_s:.0f}s ({what}; {links})"
            )

    async def _vendor_active_jobs(self, rooms: list[ManagedRoom]) -> Listing | None:
        """Active jobs per room, one listing per provider (MetaStudio's is tenant-wide and paged); None if
        a provider cannot say -- its rooms are then asked about one by one."""
        if not rooms:
            return {}
        found: Listing = {}
        by_provider: dict[str, list[ManagedRoom]] = {}
        for room in rooms:
            by_provider.setdefault(room.provider, []).append(room)
        for members in by_provider.values():
            try:
                self._polls += 1
                found.update(await self._jobs_for(members[0]).list_active([r.room_id for r in members]))
            except ProviderError as exc:
                log.warning("cannot list the vendor's active jobs", error=str(exc))
                return None
        return found

    async def _adopt(self, room: ManagedRoom, vendor_active: Listing | None) -> JobRef | None:
        """A job the vendor runs for the room that Redis has never recorded (a crash between the vendor's
        start and our record of it, or a start by hand): make it the room's current job."""
        if vendor_active is None:
            try:
                self._polls += 1
                vendor_active = await self._jobs_for(room).list_active([room.room_id])
            except ProviderError:
                return None
        jobs = [j for j in vendor_active.get(room.room_id, []) if j.status.active]
        if jobs:
            # A job Redis already knows is ours and recorded: a listing that shows it active while Redis
            # says it ended is older than our record (the pass listed before another pass stopped it).
            known = await self._redis.smismember(keys.room_jobs(room.room_id), [j.job_id for j in jobs])
            jobs = [j for j, is_known in zip(jobs, known, strict=True) if not is_known]
        if not jobs:
            return None
        job = max(jobs, key=lambda j: j.created)
        await self._state.set_current_job(
            room.room_id, job.job_id, job.status.value, report_url=job.report_url
        )
        await self.actions.record(
            room, Action("adopt", f"the vendor runs job {job.job_id} ({job.status.value})"), "done"
        )
        return job

    async def _stop_strays(self, room: ManagedRoom, actual: Actual, vendor_active: Listing) -> None:
        """Stop a second job the vendor runs for a room whose own job is active, if the daemon never
        recorded it: a room runs one job, and a second is billed for nothing (SoftSugar: a session a replica
        created and died before recording, named the room's by its callbacks). A job the daemon did record
        is left alone: a listing that shows it active while Redis says it ended is older than the record."""
        others = [
            j for j in vendor_active.get(room.room_id, []) if j.job_id != actual.job_id and j.status.active
        ]
        if not others:
            return
        known = await self._redis.smismember(keys.room_jobs(room.room_id), [j.job_id for j in others])
        for job, is_known in zip(others, known, strict=True):
            if is_known:
                continue
            reason = f"a second job {job.job_id} for the room, which runs {actual.job_id}"
            with structlog.contextvars.bound_contextvars(room_id=room.room_id):
                await self.actions.take(
                    room, Action("stop", reason, f"stray:{job.job_id}"), Current(job.job_id, job.status.value)
                )

    async def _poll(self, room: ManagedRoom, job_id: str, known: str) -> str:
        """The vendor's view of the job, written to Redis when it changed (callbacks are only hints)."""
        try:
            self._polls += 1
            job = await self._jobs_for(room).status(room.room_id, job_id)
        except ProviderNotFound:
            await self._state.set_job_state(room.room_id, job_id, JobStatus.FAILED.value)
            return JobStatus.FAILED.value
        except ProviderError as exc:
            log.warning(
                "cannot poll the job; using the last known state", room_id=room.room_id, error=str(exc)
            )
            return known
        if job.status.value != known:
            await self._state.set_job_state(room.room_id, job_id, job.status.value)
        return job.status.value

    async def _act(
        self, room: ManagedRoom, action: Action, actual: Actual, desired: Desired
    ) -> Outcome | None:
        if action.kind == "circuit_open":
            await self.actions.record(room, action, "circuit open")
            await self._alert(room, "circuit_open", action.reason)
            return None
        return await self.actions.take(room, action, Current(actual.job_id, actual.job_state))
