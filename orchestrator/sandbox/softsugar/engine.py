"""The SoftSugar sandbox's world: accounts' tokens, live sessions, their takeover queues, status callbacks.

Everything here follows document 003 (line numbers cite it) and, for tokens, the vendor's public access
guide; where both are silent, the choice is said beside it:

* a session is created at 32 and becomes 35 after ``create_s`` simulated seconds (l.21: "if the
  initialization takes too long, it will return status 32 ... When the status is 35 ... live broadcasting
  can be started"), 2 once started (l.700-735); closed on request: 5; without a heartbeat for longer than
  ``heartbeat_timeout_s``: 50 (l.85: "passively closed"); every change of a session's status to 35, 5, 50,
  9 or 99 is called back (l.1204);
* the takeover queue (l.251-257): the item playing is at position 1; ``priority`` N puts a new item at
  position N + 1 ("if the insertion position number is 1, it will be the second content in the queue");
  absent or beyond the queue: last. An item plays for a time proportional to its text (``char_s``
  simulated seconds a character); its queueing (34), start (36), end (37) and failure (39) are called back
  (l.1205); a cancelled item ends without a 37 of its own (our choice: 003 names no cancel status);
* the interruptible takeover (v2 command, l.206) plays at once: the item playing is interrupted;
* chat handoff (l.443): refused (code 10010, our choice) while another handoff plays;
* errors are ``{"code", "message"}`` with HTTP 200 (the examples'); 003 publishes no code table, so the
  sandbox's codes are its own: 10001 invalid parameter, 10004 session not found, 10005 session not
  running, 10010 handoff refused while a chat plays; tokens: HTTP 401 with code 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import structlog

from orchestrator import clock
from orchestrator.sandbox.clock import SimClock

log = structlog.get_logger(__name__)

#: The sandbox's own error codes (003 publishes none).
INVALID = 10001
NOT_FOUND = 10004
NOT_RUNNING = 10005
CHAT_BUSY = 10010
#: Tokens live 8 h (the access guide: expiresIn 28800 by default).
TOKEN_LIFETIME_S = 8 * 3600
#: 003 l.1205: statuses of a takeover that are called back.
RUNNING = {2, 32, 35}


class VendorError(Exception):
    """An answer ``{"code", "message"}`` (HTTP ``status``: 200 unless the gateway refuses)."""

    def __init__(self, code: int, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass
class Item:
    """One takeover in a session's queue."""

    trace_id: str
    text: str
    kind: str = "queue"  # queue | command (v2, interruptible) | v1 | quick
    started_at: float | None = None  # simulated seconds, when it began to play
    received_at: float = field(default_factory=time.time)  # wall clock, when it arrived (benchmarks)


@dataclass
class Session:
    session_id: str
    script: dict[str, Any]
    user_data: str | None
    session_token: str
    status: int = 32
    created_at: float = 0.0  # simulated seconds
    start_time: str = ""
    end_time: str = ""
    last_heartbeat: float = 0.0
    queue: deque[Item] = field(default_factory=deque)
    played: list[Item] = field(default_factory=list)  # finished items, in order
    received: list[Item] = field(default_factory=list)  # every takeover received, in order
    cancelled: list[str] = field(default_factory=list)
    heartbeats: int = 0
    voice_bytes: int = 0  # PCM received on the microphone socket while streaming
    rtc_channel_id: str = ""
    #: Status changes as they happened: (simulated seconds, status).
    history: list[tuple[float, int]] = field(default_factory=list)


@dataclass
class Delivery:
    body: dict[str, Any]
    status: int | None  # HTTP status of our POST, None: it failed
    error: str = ""


class World:
    """The accounts' sessions, advanced by a ticker every ``tick_s`` simulated seconds."""

    def __init__(
        self,
        sim: SimClock,
        *,
        callback_url: str | None,
        create_s: float,
        heartbeat_timeout_s: float,
        char_s: float,
        session: aiohttp.ClientSession,
    ) -> None:
        self.sim = sim
        self.callback_url = callback_url
        self.create_s = create_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.char_s = char_s
        self.sessions: dict[str, Session] = {}
        self.deliveries: list[Delivery] = []
        #: Status callbacks to hold back (0: none): the next N are dropped, as a lossy network would.
        self.drop_callbacks = 0
        self.create_faults: deque[int] = deque()  # statuses the next creates answer (97, 98, 9)
        self.qa: dict[str, dict[str, str]] = {}  # Q&A database id → question → answer
        self._http = session
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.listeners: set[asyncio.Queue[dict[str, Any]]] = set()  # microphone WebSockets' notices
        #: Every session status change as (the daemon's clock, userData, session id, status), when a harness
        #: sets a list here (the chaos soak measures availability from it).
        self.history: list[tuple[float, str, str, int]] | None = None

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._tick_forever(), name="softsugar-sandbox-tick"),
            asyncio.create_task(self._send_forever(), name="softsugar-sandbox-callbacks"),
        ]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- sessions ---

    def create(self, script: dict[str, Any], user_data: str | None) -> Session:
        now = self.sim.elapsed_s()
        session = Session(uuid.uuid4().hex, script, user_data, secrets.token_urlsafe(24), created_at=now)
        session.last_heartbeat = now
        session.rtc_channel_id = f"rtc-{session.session_id[:12]}"
        self.sessions[session.session_id] = session
        session.history.append((now, 32))
        if self.history is not None:
            self.history.append((clock.time(), user_data or "", session.session_id, 32))
        if self.create_faults:
            self._set(session, self.create_faults.popleft(), notify=False)  # answered by create itself
        elif self.create_s <= 0:
            self._set(session, 35, notify=False)
        return session

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise VendorError(NOT_FOUND, f"session {session_id} not found")
        return session

    def running(self, session_id: str) -> Session:
        session = self.get(session_id)
        if session.status not in RUNNING:
            raise VendorError(NOT_RUNNING, f"session {session_id} is not running (status {session.status})")
        return session

    def start_session(self, session_id: str) -> None:
        session = self.running(session_id)
        if session.status == 32:
            raise VendorError(NOT_RUNNING, "the video stream is still being created (status 32)")
        if session.status == 35:
            self._set(session, 2, notify=False)  # 003 l.1204: 2 is not among the called-back statuses
            session.start_time = _stamp()

    def heartbeat(self, session_id: str) -> None:
        session = self.running(session_id)
        session.last_heartbeat = self.sim.elapsed_s()
        session.heartbeats += 1

    def close(self, session_id: str, status: int = 5) -> None:
        session = self.get(session_id)
        if session.status not in RUNNING:
            return  # closing a closed session: done already
        self._end_queue(session)
        self._set(session, status)
        session.end_time = _stamp()

    def fail(self, session_id: str, status: int) -> None:
        """A fault: the session ends with ``status`` (9 exception, 99 init failure, 50 closed)."""
        self.close(session_id, status)

    # --- takeovers ---

    def enqueue(self, session_id: str, text: str, priority: int | None, kind: str = "queue") -> Item:
        session = self.running(session_id)
        item = Item(uuid.uuid4().hex, text, kind)
        session.received.append(item)
        if kind in ("command", "v1"):  # interruptible: plays now, the item playing is interrupted
            if session.queue and session.queue[0].started_at is not None:
                self._finish(session, session.queue.popleft(), 37, "interrupted")
            session.queue.appendleft(item)
            self._play(session)
            return item
        if kind == "quick":
            if session.queue and session.queue[0].kind == "quick":
                raise VendorError(CHAT_BUSY, "handoff refused: a chat is ongoing")
            session.queue.appendleft(item)
            self._play(session)
            return item
        position = len(session.queue) if priority is None else min(priority, len(session.queue))
        session.queue.insert(position, item)  # priority 1: right after the item playing (l.253)
        self._notify(session, 34, item.trace_id)
        self._listen_notice(session, 20, item.trace_id)
        self._play(session)
        return item

    def reorder(self, session_id: str, trace_id: str, priority: int) -> None:
        session = self.running(session_id)
        item = next((i for i in session.queue if i.trace_id == trace_id), None)
        if item is None:
            raise VendorError(NOT_FOUND, f"takeover {trace_id} is not queued")
        if item.started_at is not None:
            raise VendorError(INVALID, "the takeover playing cannot be reordered")
        session.queue.remove(item)
        session.queue.insert(min(priority, len(session.queue)), item)

    def cancel(self, session_id: str, trace_ids: list[str] | None) -> list[str]:
        """Cancel the items named (None: all, l.353); the ids cancelled."""
        session = self.running(session_id)
        doomed = [i for i in session.queue if trace_ids is None or i.trace_id in trace_ids]
        for item in doomed:
            session.queue.remove(item)
            session.cancelled.append(item.trace_id)
            self._listen_notice(session, 18, item.trace_id)  # l.542: "takeover/cancellation completed"
        self._play(session)
        return [i.trace_id for i in doomed]

    def _play(self, session: Session) -> None:
        if session.queue and session.queue[0].started_at is None and session.status == 2:
            item = session.queue[0]
            item.started_at = self.sim.elapsed_s()
            self._notify(session, 36, item.trace_id)
            self._listen_notice(session, 19, item.trace_id)

    def _finish(self, session: Session, item: Item, status: int, result: str = "") -> None:
        session.played.append(item)
        self._notify(session, status, item.trace_id, task_result=result)
        self._listen_notice(session, 18, item.trace_id)

    def _end_queue(self, session: Session) -> None:
        while session.queue:
            self._finish(session, session.queue.popleft(), 39, "the session ended")

    # --- time ---

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            self.tick()

    def tick(self) -> None:
        now = self.sim.elapsed_s()
        for session in list(self.sessions.values()):
            if session.status == 32 and now - session.created_at >= self.create_s:
                self._set(session, 35)
            if session.status in RUNNING and now - session.last_heartbeat > self.heartbeat_timeout_s:
                self._end_queue(session)
                self._set(session, 50)  # l.85: "passively closed"
                session.end_time = _stamp()
                continue
            if session.status == 2:
                self._play(session)
                head = session.queue[0] if session.queue else None
                started = head.started_at if head is not None else None
                if (
                    head is not None
                    and started is not None
                    and now - started >= max(1, len(head.text)) * self.char_s
                ):
                    session.queue.popleft()
                    self._finish(session, head, 37)
                    self._play(session)

    def _set(self, session: Session, status: int, *, notify: bool = True) -> None:
        if session.status == status:
            return
        session.status = status
        session.history.append((self.sim.elapsed_s(), status))
        if self.history is not None:
            self.history.append((clock.time(), session.user_data or "", session.session_id, status))
        if notify and status in (35, 5, 50, 9, 99):
            self._notify(session, status)

    # --- callbacks ---

    def _notify(
        self, session: Session, status: int, trace_id: str | None = None, task_result: str = ""
    ) -> None:
        body: dict[str, Any] = {"sessionId": session.session_id, "status": status}
        if session.user_data is not None:
            body["userData"] = session.user_data
        if status == 35:
            body.update(rtcAppId="sandbox-rtc-app", rtcChannelId=session.rtc_channel_id, rtcUid="1000")
        if trace_id is not None:
            body["commandTraceId"] = trace_id
        if status in (37, 39):
            body["commandFinishTime"] = _stamp()
        if task_result:
            body["taskResult"] = task_result
        self._outbox.put_nowait(body)

    def _listen_notice(self, session: Session, code: int, trace_id: str) -> None:
        message = {
            18: "Takeover/cancellation completed",
            19: "Start playing takeover",
            20: "Takeover queued successfully",
        }
        notice = {
            "code": code,
            "message": message[code],
            "data": {
                "sessionId": session.session_id,
                "commandTraceId": trace_id,
                "timestamp": clock.time_ms(),
            },
        }
        for listener in list(self.listeners):
            listener.put_nowait(notice)

    async def _send_forever(self) -> None:
        while True:
            body = await self._outbox.get()
            if self.callback_url is None:
                continue
            if self.drop_callbacks > 0:
                self.drop_callbacks -= 1
                self.deliveries.append(Delivery(body, None, "dropped (fault)"))
                continue
            try:
                async with self._http.post(
                    self.callback_url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
                ) as resp:
                    self.deliveries.append(Delivery(body, resp.status))
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.deliveries.append(Delivery(body, None, str(exc) or type(exc).__name__))


def _stamp() -> str:
    """``yyyy-MM-dd HH:mm:ss`` (003's time format), on the daemon's clock."""
    return clock.now().strftime("%Y-%m-%d %H:%M:%S")
