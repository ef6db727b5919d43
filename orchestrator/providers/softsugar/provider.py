"""SoftSugar as a provider: its client behind the core's protocols (:mod:`orchestrator.providers.base`).

**Sessions as jobs.** A room's live job is a SoftSugar session. Its numeric status maps onto
:class:`~orchestrator.domain.JobStatus` (:func:`job_status`): 32 creating and 35 created are ``WAITING``,
2 live is ``PROCESSING``, 5 closed on request ``SUCCEED``, 50 closed by the vendor (no heartbeat, link
lost), 9 exception, 99 initialisation failed and 97/98 channel shortage ``FAILED``.

**Start** is two calls, and billing starts at the first (003: "timing begins as soon as the live
broadcasting room is created"): :meth:`SoftSugarJobs.start` creates the channel (its ``userData`` is the
room's id, so callbacks name the room) and, when it is created at once (35), starts it. A session still
creating (32) is started by the next :meth:`SoftSugarJobs.status` that finds it created -- the reconciler's
next look at the room, at once when the status callback 35 arrives -- and one creating for longer than
``softsugar.create_timeout_s`` is closed and reported failed. A channel shortage (97/98) at create is a
refused start (backoff, alert).

**Which sessions are the daemon's.** ``running/list`` names sessions, not rooms; the sessions the daemon
created are kept, session → room, in Redis (``keys.vendor_sessions``). A running session no room knows is
closed (``softsugar.unknown_sessions = "close"``, the default: never billed silently) or kept, and an
alert says so.

**Heartbeats** (003: "call every 60 seconds"; a session without them is closed by the vendor) are sent by
the room's lease holder every ``softsugar.heartbeat_interval_s`` (:attr:`SoftSugarJobs.keepalive_interval_s`).

**Replies** go through the takeover queue (:class:`SoftSugarAudience`): ``PLAY_NOW`` is an interruptible
takeover (``v2 command``), ``INSERT`` and an operator's reply are queued at position 1 (right after what
plays), the rest at the end; each is tracked by its trace id -- its end reported by the status callbacks
36/37/39, or, for an account without a callback URL, by ``queue/list`` no longer naming it. The vendor
takes at least 10 characters of text (003): a shorter reply is padded with "…" (a pause, not a word).
SoftSugar takes no audience event reports (``takes_reports`` false): comments only go through the
daemon's own reply policy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import cached_property

import redis.asyncio as aioredis
import structlog

from orchestrator import clock
from orchestrator.callbacks.errors import CallbackMalformed
from orchestrator.domain import (
    JobStateChanged,
    JobStatus,
    PlayMode,
    ReplyFailed,
    ReplyFinished,
    ReplyStarted,
    RoomEvent,
    Unrecognised,
)
from orchestrator.providers.base import Decoded, JobRef, ReplyOrder, RoomSpec, Said
from orchestrator.providers.errors import ProviderConfigError, ProviderStatusError
from orchestrator.providers.softsugar.client import SoftSugarClient
from orchestrator.providers.softsugar.models import (
    MAX_QUEUE,
    MIN_TTS_CHARS,
    RUNNING_STATUSES,
    Status,
    StatusCallback,
    Takeover,
    TtsQuery,
)
from orchestrator.providers.softsugar.template import LiveTemplate
from orchestrator.settings import SoftSugarSettings
from orchestrator.store import keys
from orchestrator.store.redis import text

log = structlog.get_logger(__name__)

NAME = "softsugar"
#: The longest reply sent as one takeover: 003 gives no limit; a long answer is a long takeover that holds
#: the queue, so the daemon keeps replies to this.
MAX_REPLY_CHARS = 2000
PAD = "…"

_STATUS = {
    Status.CREATING: JobStatus.WAITING,
    Status.CREATED: JobStatus.WAITING,
    Status.LIVE: JobStatus.PROCESSING,
    Status.CLOSED: JobStatus.SUCCEED,
    Status.CLOSED_PASSIVELY: JobStatus.FAILED,
    Status.EXCEPTION: JobStatus.FAILED,
    Status.INIT_FAILED: JobStatus.FAILED,
    Status.SYSTEM_CHANNEL_SHORTAGE: JobStatus.FAILED,
    Status.CUSTOMER_CHANNEL_SHORTAGE: JobStatus.FAILED,
}
_REASONS = {
    Status.CLOSED_PASSIVELY: "closed by the vendor (no heartbeat for too long, or the network link broke)",
    Status.EXCEPTION: "the vendor reports an exception",
    Status.INIT_FAILED: "initialisation failed",
    Status.SYSTEM_CHANNEL_SHORTAGE: "the vendor has no channel free (system shortage)",
    Status.CUSTOMER_CHANNEL_SHORTAGE: "the account has no channel free (customer shortage)",
}
#: Alert = a callable for daemon-wide alerts: (kind, message).
Alert = Callable[[str, str], Awaitable[None]]


def job_status(status: int) -> JobStatus:
    """The domain's status of a SoftSugar session status (pure). Raises ValueError for a takeover's."""
    try:
        return _STATUS[Status(status)]
    except (KeyError, ValueError):
        raise ValueError(f"{status} is not a session status") from None


class SoftSugarJobs:
    """:class:`~orchestrator.providers.base.LiveJobs` of SoftSugar."""

    def __init__(
        self,
        client: Callable[[], SoftSugarClient],
        settings: SoftSugarSettings,
        redis: aioredis.Redis,
        alert: Alert,
    ) -> None:
        self._client = client
        self._settings = settings
        self._redis = redis
        self._alert = alert
        self.keepalive_interval_s: float | None = settings.heartbeat_interval_s
        self._creating_since: dict[str, float] = {}  # session → when it was created (monotonic)

    @property
    def _sessions_key(self) -> str:
        return keys.vendor_sessions(NAME, self._settings.app_id)

    async def start(self, room: RoomSpec) -> JobRef:
        """Create the channel and start it if it is ready. Raises ProviderError (a ProviderStatusError for
        a channel shortage: nothing to start, the reconciler backs off)."""
        assert isinstance(room.template, LiveTemplate)
        client = self._client()
        channel = await client.create_channel(
            room.template.script, user_data=room.room_id, **room.template.create_fields()
        )
        await self._redis.hset(self._sessions_key, channel.sessionId, room.room_id)
        status = Status(channel.status) if channel.status in Status._value2member_map_ else None
        if status in (Status.SYSTEM_CHANNEL_SHORTAGE, Status.CUSTOMER_CHANNEL_SHORTAGE, Status.EXCEPTION):
            await self._redis.hdel(self._sessions_key, channel.sessionId)
            raise ProviderStatusError(200, str(channel.status), _REASONS[status])
        if status is Status.CREATED:
            await client.start(channel.sessionId)
        else:
            self._creating_since[channel.sessionId] = clock.monotonic()
        return JobRef(channel.sessionId, JobStatus.WAITING, room_id=room.room_id, created=_iso_now())

    async def stop(self, room_id: str, job_id: str) -> None:
        await self._client().close(job_id)
        await self._forget(job_id)

    async def status(self, room_id: str, job_id: str) -> JobRef:
        """``stat``; a session found created (35) is started now (the second half of a start), one creating
        for too long is closed. Raises ProviderError."""
        client = self._client()
        stat = await client.stat(job_id)
        status = stat.status
        if status == Status.CREATED:
            await client.start(job_id)
            self._creating_since.pop(job_id, None)
        elif status == Status.CREATING:
            since = self._creating_since.setdefault(job_id, clock.monotonic())
            if clock.monotonic() - since > self._settings.create_timeout_s:
                log.warning("softsugar session still creating; closing it", session=job_id)
                await client.close(job_id)
                await self._forget(job_id)
                return JobRef(job_id, JobStatus.FAILED, room_id=room_id)
        elif status not in RUNNING_STATUSES:
            await self._forget(job_id)
        return JobRef(job_id, job_status(status), room_id=room_id)

    async def _forget(self, session_id: str) -> None:
        """An ended session is no longer the daemon's to account for."""
        self._creating_since.pop(session_id, None)
        await self._redis.hdel(self._sessions_key, session_id)

    async def list_active(self, room_ids: Sequence[str]) -> dict[str, list[JobRef]]:
        """Running sessions of these rooms (``running/list``, mapped through the sessions the daemon
        created); a running session no room knows is closed or kept, with an alert. A session created
        and not yet started (35) is left out: the reconciler then asks :meth:`status` about it, which
        starts it."""
        running = await self._client().running()
        owners = {text(k): text(v) for k, v in (await self._redis.hgetall(self._sessions_key)).items()}
        found: dict[str, list[JobRef]] = {room_id: [] for room_id in room_ids}
        for session in running:
            room_id = owners.get(session.sessionId)
            if room_id is None:
                await self._unknown(session.sessionId)
            elif room_id in found and session.status in RUNNING_STATUSES and session.status != Status.CREATED:
                found[room_id].append(JobRef(session.sessionId, job_status(session.status), room_id=room_id))
        return found

    async def _unknown(self, session_id: str) -> None:
        if self._settings.unknown_sessions == "close":
            await self._client().close(session_id)
            what = "closed it (softsugar.unknown_sessions = close)"
        else:
            what = "kept it (softsugar.unknown_sessions = keep): it is billed"
        log.warning("softsugar session no room knows", session=session_id, action=what)
        await self._alert(
            "vendor_unknown_session", f"SoftSugar session {session_id} belongs to no room: {what}"
        )

    async def repair(self, room: RoomSpec, job_id: str, output: str) -> None:
        """SoftSugar reports no output links: nothing to repair (a broken session is restarted)."""

    async def keepalive(self, room_id: str, job_id: str) -> None:
        await self._client().heartbeat(job_id)


class SoftSugarAudience:
    """:class:`~orchestrator.providers.base.AudienceChannel` of SoftSugar: the takeover queue."""

    takes_reports = False
    max_reply_chars = MAX_REPLY_CHARS

    def __init__(self, client: Callable[[], SoftSugarClient], settings: SoftSugarSettings) -> None:
        self._client = client
        self._settings = settings
        #: Whether finishes arrive by callback; without, :meth:`finished` polls ``queue/list``.
        self.reports_finishes = settings.callbacks

    async def report(self, report_url: str, events: Sequence[bytes], batch_id: str) -> str | None:
        raise ProviderConfigError("SoftSugar takes no audience event reports")

    async def current_report_url(self, room_id: str, job_id: str) -> str | None:
        return None

    async def say(self, room_id: str, job_id: str, reply: ReplyOrder) -> Said:
        takeover = Takeover(tts_query=TtsQuery(content=padded(reply.text)))
        client = self._client()
        if reply.mode is PlayMode.PLAY_NOW:
            result = await client.command(job_id, takeover)
            return Said(result.commandTraceId or "", tracked=bool(result.commandTraceId))
        priority = 1 if reply.operator or reply.mode is PlayMode.INSERT else None
        queued = await client.queue(job_id, takeover, priority=priority)
        return Said(queued.commandTraceId, tracked=True)

    async def withdraw(self, room_id: str, job_id: str, reply_ids: Sequence[str] | None) -> set[str]:
        """Cancel by trace ids (``;``-joined), or everything (``-1``)."""
        result = await self._client().cancel(job_id, list(reply_ids) if reply_ids else None)
        if not result.isSuccess:
            raise ProviderStatusError(200, None, result.message or "the vendor did not cancel")
        return set(reply_ids or [])

    async def finished(self, room_id: str, job_id: str, in_flight: Sequence[str]) -> set[str]:
        """Replies in flight that ``queue/list`` no longer names: played (or dropped by the vendor)."""
        queued = set(await self._client().queue_list(job_id))
        return {reply_id for reply_id in in_flight if reply_id not in queued}


class SoftSugarCodec:
    """:class:`~orchestrator.providers.base.CallbackCodec` of SoftSugar's status callbacks."""

    def decode(self, body: bytes) -> Decoded:
        """Raises CallbackMalformed."""
        try:
            callback = StatusCallback.model_validate_json(body)
        except ValueError as exc:
            raise CallbackMalformed(f"not a SoftSugar status callback: {_first_error(exc)}") from None
        if not callback.userData:
            raise CallbackMalformed("userData is missing: the session was not created by this daemon")
        status = callback.status
        event: RoomEvent
        known = status in Status._value2member_map_
        if known and Status(status) in _STATUS:
            event = JobStateChanged(job_status(status))
        elif status == Status.TAKEOVER_STARTED and callback.commandTraceId:
            event = ReplyStarted(callback.commandTraceId)
        elif status == Status.TAKEOVER_FINISHED and callback.commandTraceId:
            event = ReplyFinished(callback.commandTraceId)
        elif status == Status.TAKEOVER_FAILED and callback.commandTraceId:
            event = ReplyFailed(callback.commandTraceId, callback.taskResult or "")
        else:
            event = Unrecognised()
        vendor_type = f"status_{status}"
        return Decoded(
            callback.userData,
            callback.sessionId,
            vendor_type,
            vendor_type if known else "other",
            event,
            callback.model_dump(mode="json", exclude_none=True),
        )

    def kind_of(self, vendor_type: str) -> str:
        try:
            status = int(vendor_type.removeprefix("status_"))
        except ValueError:
            return "other"
        if status in {s.value for s in _STATUS}:
            return "job_state"
        return {36: "reply_started", 37: "reply_finished", 39: "reply_failed"}.get(status, "other")


class SoftSugar:
    """The SoftSugar provider: one client per process (its concurrency limit and the account's one shared
    token hold for every caller)."""

    name = NAME

    def __init__(
        self,
        client: Callable[[], SoftSugarClient],
        settings: SoftSugarSettings,
        redis: aioredis.Redis,
        alert: Alert,
    ) -> None:
        self.client = client
        self._settings = settings
        self._redis = redis
        self._alert = alert

    @cached_property
    def jobs(self) -> SoftSugarJobs:
        return SoftSugarJobs(self.client, self._settings, self._redis, self._alert)

    @cached_property
    def audience(self) -> SoftSugarAudience:
        return SoftSugarAudience(self.client, self._settings)

    @cached_property
    def codec(self) -> SoftSugarCodec:
        return SoftSugarCodec()


def padded(reply: str) -> str:
    """The reply with at least the 10 characters the vendor takes (003), padded with "…" (pure)."""
    return reply if len(reply) >= MIN_TTS_CHARS else reply + PAD * (MIN_TTS_CHARS - len(reply))


def _iso_now() -> str:
    return clock.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors(include_url=False, include_input=False)[0]
        return f"{'.'.join(str(p) for p in first['loc']) or 'body'}: {first['msg']}"
    return str(exc)


__all__ = ["MAX_QUEUE", "SoftSugar", "SoftSugarAudience", "SoftSugarCodec", "SoftSugarJobs", "job_status"]
