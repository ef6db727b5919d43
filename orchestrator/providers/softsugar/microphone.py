"""A session's voice-takeover WebSocket (003 "Streaming Voice Takeover", l.487-590), for two uses.

**Following HTTP takeovers.** The vendor tells the socket's holder when an HTTP (text or audio) takeover is
queued (20), starts playing (19) and completes or is cancelled (18). For an account without a status
callback URL, the room's owner holds the socket (:func:`follow`) and these notices end its replies as the
callbacks 36/37 would; ``queue/list`` stays the safety net (polled, slowly, while the socket is up).

**An operator's microphone.** The admin relay (``GET /api/rooms/{room}/microphone``, a WebSocket; see
:mod:`orchestrator.providers.softsugar.web`) passes an operator's ``begin``, PCM frames (16 kHz, mono,
16-bit) and ``eof`` to the vendor, and the vendor's answers back -- its error codes with a clear
``error_code`` and ``error_msg`` (:data:`MIC_ERRORS`).

Downstream codes (003): 1 authentication failed, 2 ready to receive, 4 stop sending voice (unmatched, or
the algorithm's connection broke), 5 failed to send voice data, 6 not ready (no live information), 7 a
takeover conflict, and the three notices above.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import orjson
import structlog

from orchestrator import clock
from orchestrator.domain import ReplyFinished, ReplyStarted, RoomEvent
from orchestrator.providers.errors import ProviderError
from orchestrator.providers.softsugar.client import SoftSugarClient
from orchestrator.providers.softsugar.models import RUNNING_STATUSES, Status
from orchestrator.tasks import being_cancelled, checkpoint, pause

log = structlog.get_logger(__name__)

#: The vendor's error codes on the socket, as the relay reports them: (error_code, what it means).
MIC_ERRORS: dict[int, tuple[str, str]] = {
    1: ("MIC_AUTH_FAILED", "the vendor refused the session's token"),
    4: ("MIC_STOPPED", "the vendor stopped taking voice (unmatched, or its connection to the avatar broke)"),
    5: ("MIC_SEND_FAILED", "the vendor failed to take the voice data"),
    6: ("MIC_NOT_READY", "the vendor has no live session to take voice for"),
    7: ("MIC_CONFLICT", "another takeover holds the avatar; try again when it has ended"),
}
#: After these the vendor takes nothing more on the connection.
FATAL_CODES = frozenset({1, 6})
READY = 2
TAKEOVER_DONE, TAKEOVER_PLAYING, TAKEOVER_QUEUED = 18, 19, 20
#: 003's upstream messages.
BEGIN: dict[str, Any] = {"code": 0, "message": "begin"}
EOF: dict[str, Any] = {"code": 99, "message": "eof"}

Notify = Callable[[RoomEvent], Awaitable[None]]


def notice_event(message: Mapping[str, Any]) -> RoomEvent | None:
    """The room event an HTTP takeover's notice says (pure): 19 started, 18 finished (or cancelled)."""
    data = message.get("data")
    trace = data.get("commandTraceId") if isinstance(data, Mapping) else None
    if not isinstance(trace, str) or not trace:
        return None
    code = message.get("code")
    if code == TAKEOVER_PLAYING:
        return ReplyStarted(trace)
    if code == TAKEOVER_DONE:
        return ReplyFinished(trace)
    return None


def parse(data: str) -> dict[str, Any] | None:
    """A text frame as a JSON object, or None."""
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None


async def open_socket(client: SoftSugarClient, session_id: str) -> aiohttp.ClientWebSocketResponse | None:
    """The session's socket, with the session token ``stat`` gives; None when the session is not running.
    Raises ProviderError."""
    stat = await client.stat(session_id)
    if stat.status not in RUNNING_STATUSES or not stat.sessionToken:
        return None
    return await client.microphone(session_id, stat.sessionToken)


async def follow(
    client: Callable[[], SoftSugarClient],
    session_id: str,
    notify: Notify,
    *,
    connected: set[str] | None = None,
    retry_s: float = 1.0,
    max_retry_s: float = 30.0,
) -> None:
    """Hold the session's socket and pass its takeover notices to ``notify``, reconnecting (with backoff)
    until cancelled or until the session is no longer running. ``connected`` holds the session's id while
    the socket is open.

    The socket is opened only once the session is live (2): before, the vendor refuses it (6, "not ready").
    The backoff starts again only after a socket stayed up ``max_retry_s``: a socket refused at once, again
    and again, is retried ever more slowly (the first benchmark with 1,000 rooms found every owner
    reconnecting each second to sessions not yet live -- 13,000 refusals in six minutes, the vendor's
    answers to everything else timing out)."""
    delay = retry_s
    while True:
        checkpoint()
        try:
            stat = await client().stat(session_id)
            if stat.status not in RUNNING_STATUSES:
                return
            if stat.status == Status.LIVE and stat.sessionToken:
                ws = await client().microphone(session_id, stat.sessionToken)
                opened = clock.monotonic()
                try:
                    if connected is not None:
                        connected.add(session_id)
                    await _pass_notices(ws, session_id, notify)
                finally:
                    if connected is not None:
                        connected.discard(session_id)
                    await ws.close()
                if clock.monotonic() - opened >= max_retry_s:
                    delay = retry_s  # it held: a new outage starts its backoff afresh
        except (ProviderError, aiohttp.ClientError, OSError) as exc:
            if being_cancelled():
                raise
            log.info("softsugar socket unavailable; retrying", session=session_id, error=str(exc))
        await pause(delay)
        delay = min(delay * 2, max_retry_s)


async def messages(ws: aiohttp.ClientWebSocketResponse) -> AsyncIterator[dict[str, Any]]:
    """The socket's text frames that are JSON objects, until it closes (others are skipped)."""
    async for frame in ws:
        if frame.type is aiohttp.WSMsgType.TEXT:
            message = parse(frame.data)
            if message is not None:
                yield message


async def _pass_notices(ws: aiohttp.ClientWebSocketResponse, session_id: str, notify: Notify) -> None:
    """Until the socket closes, or the vendor refuses it for good."""
    async for message in messages(ws):
        event = notice_event(message)
        if event is not None:
            await notify(event)
        elif message.get("code") in FATAL_CODES:
            log.warning("softsugar socket refused", session=session_id, code=int(message["code"]))
            return
