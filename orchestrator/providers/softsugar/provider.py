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
alert says so -- after a grace shared by the replicas through Redis (``softsugar.unknown_grace_s``, 30 s;
``create_timeout_s`` for one still creating): a replica lists sessions between another's create and its
record of it, and a replica that died in that gap leaves a session whose status callback (35, naming the
room in ``userData``) claims it for its room within the grace. Without callbacks such an orphan cannot be
told from a stranger's session, and is closed after the grace.

**Heartbeats** (003: "call every 60 seconds"; a session without them is closed by the vendor) are sent by
the room's lease holder every ``softsugar.heartbeat_interval_s`` (:attr:`SoftSugarJobs.keepalive_interval_s`).

**Replies** go through the takeover queue (:class:`SoftSugarAudience`): ``PLAY_NOW`` is an interruptible
takeover (``v2 command``), ``INSERT`` and an operator's reply are queued at position 1 (right after what
plays), the rest at the end; each is tracked by its trace id -- its end reported by the status callbacks
36/37/39, or, for an account without a callback URL, by ``queue/list`` no longer naming it. The vendor
takes at least 10 characters of text (003): a shorter reply is padded with "…" (a pause, not a word).
SoftSugar takes no audience event reports (``takes_reports`` false): comments only go through the
daemon's own reply policy.

**The room's Q&A database** (003 "Live NLP Q&A": one per live broadcast) answers the questions the policy
does not, when the room's template names one (``qa_app_id``): it is fixed for the session at its start
(kept beside the session in Redis, so every replica asks the same one) and asked through
``nlp/model/reply`` (:class:`QaDatabase`); no answer, an error or ``softsugar.qa_timeout_s`` without one,
and the policy's FAQ answers instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import cached_property

import redis.asyncio as aioredis
import structlog

from orchestrator import clock
from orchestrator.callbacks.errors import CallbackMalformed
from orchestrator.domain import (
    AnswerUnavailable,
    JobStateChanged,
    JobStatus,
    PlayMode,
    ReplyFailed,
    ReplyFinished,
    ReplyStarted,
    RoomEvent,
    Unrecognised,
)
from orchestrator.providers.base import Decoded, JobRef, Notify, ReplyOrder, RoomSpec, Said
from orchestrator.providers.errors import ProviderConfigError, ProviderError, ProviderStatusError
from orchestrator.providers.softsugar.client import SoftSugarClient
from orchestrator.providers.softsugar.microphone import follow
from orchestrator.providers.softsugar.models import (
    MAX_QUEUE,
    MIN_TTS_CHARS,
    RUNNING_STATUSES,
    NlpQuery,
    RunningSession,
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
#: While a session's socket reports its takeovers, ``queue/list`` is still asked this often (s).
SAFETY_POLL_S = 10.0
#: The longest question sent to the Q&A database (003 gives no limit; a comment is short).
MAX_QUESTION_CHARS = 500
_ALLOWED = re.compile(r"[^0-9A-Za-z-]")

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

    @property
    def _answers_key(self) -> str:
        return keys.vendor_session_answers(NAME, self._settings.app_id)

    async def start(self, room: RoomSpec) -> JobRef:
        """Create the channel and start it if it is ready. Raises ProviderError (a ProviderStatusError for
        a channel shortage: nothing to start, the reconciler backs off)."""
        assert isinstance(room.template, LiveTemplate)
        client = self._client()
        channel = await client.create_channel(
            room.template.script, user_data=room.room_id, **room.template.create_fields()
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._sessions_key, channel.sessionId, room.room_id)
            if room.template.qa_app_id:
                pipe.hset(self._answers_key, channel.sessionId, room.template.qa_app_id)
            await pipe.execute()
        status = Status(channel.status) if channel.status in Status._value2member_map_ else None
        if status in (Status.SYSTEM_CHANNEL_SHORTAGE, Status.CUSTOMER_CHANNEL_SHORTAGE, Status.EXCEPTION):
            await self._forget(channel.sessionId)
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
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self._sessions_key, session_id)
            pipe.hdel(self._answers_key, session_id)
            await pipe.execute()

    async def list_active(self, room_ids: Sequence[str]) -> dict[str, list[JobRef]]:
        """Running sessions of these rooms (``running/list``, mapped through the sessions the daemon
        created or claimed); a running session no room knows is closed or kept, with an alert. A session
        of a room found created (35) is started here: the second half of its start, wherever it is seen."""
        client = self._client()
        running = await client.running()
        owners = {text(k): text(v) for k, v in (await self._redis.hgetall(self._sessions_key)).items()}
        found: dict[str, list[JobRef]] = {room_id: [] for room_id in room_ids}
        strangers = [s for s in running if s.sessionId not in owners]
        await self._unknown(strangers)
        for session in running:
            room_id = owners.get(session.sessionId)
            if room_id is None:
                continue
            if room_id in found and session.status in RUNNING_STATUSES:
                if session.status == Status.CREATED:
                    try:
                        await client.start(session.sessionId)
                        self._creating_since.pop(session.sessionId, None)
                    except ProviderError as exc:  # started meanwhile by another replica's look at it
                        log.info("softsugar session not started", session=session.sessionId, error=str(exc))
                found[room_id].append(JobRef(session.sessionId, job_status(session.status), room_id=room_id))
        return found

    async def claim(self, session_id: str, room_id: str) -> bool:
        """Record a running session the vendor's callback names as the room's (its ``userData``) when the
        daemon has no record of it: a replica died between the vendor's create and its own record. The
        reconciler then adopts it (or stops it, if the room runs another). True when recorded now."""
        return bool(await self._redis.hsetnx(self._sessions_key, session_id, room_id))

    async def _unknown(self, sessions: Sequence[RunningSession]) -> None:
        """Running sessions no room knows: each closed or kept (with an alert) once its grace is over, the
        time it was first seen shared by every replica; sessions no longer running are forgotten."""
        key = keys.vendor_unknown_sessions(NAME, self._settings.app_id)
        seen = {text(k): int(v) for k, v in (await self._redis.hgetall(key)).items()}
        gone = set(seen) - {s.sessionId for s in sessions}
        if gone:
            await self._redis.hdel(key, *gone)
        now_ms = int(clock.time() * 1000)
        for session in sessions:
            first = seen.get(session.sessionId)
            if first is None:
                await self._redis.hsetnx(key, session.sessionId, now_ms)
                continue
            grace_s = (
                self._settings.create_timeout_s
                if session.status == Status.CREATING
                else self._settings.unknown_grace_s
            )
            if first < 0 or now_ms - first < grace_s * 1000:
                continue  # dealt with already, or its creator / its callback may still name its room
            if self._settings.unknown_sessions == "close":
                await self._client().close(session.sessionId)
                what = "closed it (softsugar.unknown_sessions = close)"
            else:
                what = "kept it (softsugar.unknown_sessions = keep): it is billed"
            await self._redis.hset(key, session.sessionId, -1)
            log.warning("softsugar session no room knows", session=session.sessionId, action=what)
            await self._alert(
                "vendor_unknown_session",
                f"SoftSugar session {session.sessionId} belongs to no room: {what}",
            )

    async def repair(self, room: RoomSpec, job_id: str, output: str) -> None:
        """SoftSugar reports no output links: nothing to repair (a broken session is restarted)."""

    async def keepalive(self, room_id: str, job_id: str) -> None:
        await self._client().heartbeat(job_id)


class SoftSugarAudience:
    """:class:`~orchestrator.providers.base.AudienceChannel` of SoftSugar: the takeover queue."""

    takes_reports = False
    max_reply_chars = MAX_REPLY_CHARS

    def __init__(
        self, client: Callable[[], SoftSugarClient], settings: SoftSugarSettings, redis: aioredis.Redis
    ) -> None:
        self._client = client
        self._settings = settings
        self._redis = redis
        #: Whether finishes arrive by callback; without, the room's owner follows the session's socket
        #: (:meth:`watch`) and :meth:`finished` polls ``queue/list`` as the safety net.
        self.reports_finishes = settings.callbacks
        self.following: set[str] = set()  # sessions whose socket is open in this process
        self._polled: dict[str, float] = {}  # session → when queue/list was last asked (monotonic)

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
        """Replies in flight that ``queue/list`` no longer names: played (or dropped by the vendor). While
        the session's socket is followed, its notices end replies and the queue is asked only every
        :data:`SAFETY_POLL_S` (a notice lost in a reconnection)."""
        now = clock.monotonic()
        if job_id in self.following and now - self._polled.get(job_id, 0.0) < SAFETY_POLL_S:
            return set()
        self._polled[job_id] = now
        queued = set(await self._client().queue_list(job_id))
        return {reply_id for reply_id in in_flight if reply_id not in queued}

    def recheck_s(self, job_id: str) -> float:
        """With callbacks, as MetaStudio's (a reaction can be lost): every second. Without, while the
        session's socket is followed its notices wake the pacer, and :meth:`finished` asks the queue only
        every :data:`SAFETY_POLL_S`: looking more often finds nothing new (the SoftSugar benchmark: a
        thousand rooms' pacers looking every second while a reply played were a fifth of the loop, and
        their replies' latency tail). Not followed (the socket is down): every second, asking the queue."""
        if not self.reports_finishes and job_id in self.following:
            return SAFETY_POLL_S
        return 1.0

    async def watch(self, room_id: str, job_id: str, notify: Notify) -> None:
        """Follow the session's socket for the 18/19 notices of its takeovers (an account without
        callbacks), until cancelled or the session ends."""
        try:
            await follow(self._client, job_id, notify, connected=self.following)
        finally:
            self._polled.pop(job_id, None)

    async def answerer(self, room_id: str, job_id: str) -> QaDatabase | None:
        """The Q&A database fixed for this session at its start, if the room named one. Raises RedisError."""
        qa_app_id = await self._redis.hget(keys.vendor_session_answers(NAME, self._settings.app_id), job_id)
        if not qa_app_id:
            return None
        return QaDatabase(self._client, text(qa_app_id), job_id, timeout_s=self._settings.qa_timeout_s)


class QaDatabase:
    """:class:`~orchestrator.providers.base.Answerer` of a room's Q&A database (003 "Live NLP Q&A").

    Each viewer is one conversation (003: "using the same session for multi-round conversations will be
    considered as continuous questions"): ``session`` is the live session's id and a digest of the
    viewer's, in the letters, digits and ``-`` 003 allows; ``trace`` a fresh id per question. ``device`` is
    ``windows``: 003 takes only ios / android / windows / macos and the daemon is none of them -- a desktop
    value is the closest. Not retried past ``timeout_s``: a late answer is worse than the FAQ's."""

    def __init__(
        self, client: Callable[[], SoftSugarClient], qa_app_id: str, session_id: str, *, timeout_s: float
    ) -> None:
        self._client = client
        self.qa_app_id = qa_app_id
        self._session = _ALLOWED.sub("", session_id) or "session"
        self._timeout_s = timeout_s

    async def answer(self, question: str, *, user: str = "", product: str = "") -> str:
        """Raises AnswerUnavailable."""
        conversation = self._session
        if user:
            conversation += "-" + hashlib.sha256(user.encode()).hexdigest()[:16]
        query = NlpQuery(
            appId=self.qa_app_id,
            device="windows",
            query=question.strip()[:MAX_QUESTION_CHARS] or "?",
            session=conversation,
            trace=uuid.uuid4().hex,
        )
        try:
            async with asyncio.timeout(self._timeout_s):
                reply = await self._client().nlp_reply(query)
        except TimeoutError:
            raise AnswerUnavailable(f"the Q&A database did not answer within {self._timeout_s:g} s") from None
        except ProviderError as exc:
            raise AnswerUnavailable(f"the Q&A database gave no answer: {exc}") from None
        answer = reply.answer.strip()
        if not answer:
            raise AnswerUnavailable("the Q&A database has no answer to it")
        return answer[:MAX_REPLY_CHARS]


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
        return SoftSugarAudience(self.client, self._settings, self._redis)

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


__all__ = [
    "MAX_QUEUE",
    "QaDatabase",
    "SoftSugar",
    "SoftSugarAudience",
    "SoftSugarCodec",
    "SoftSugarJobs",
    "job_status",
]
