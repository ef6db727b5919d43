"""SoftSugar's routes: its status callbacks (003 "Live Streaming Status Callback Parameters"), and the
operator's microphone relay (003 "Streaming Voice Takeover").

``POST /callbacks/softsugar/{token}``. The callback URL is set per account by the vendor (003: "contact the
administrator to provide the live streaming status callback URL when creating an account"), not per request,
and the signature its "AuthKey" would add is not published. So the daemon authenticates callbacks by a
secret token in the URL path (``softsugar.callback_token``; compared in constant time; the path is logged
with it masked), optionally by the sender's address (``softsugar.callback_allow``), and treats the body as
untrusted: the room is the session's ``userData`` (the daemon set it to the room's id at create) and the
store applies a callback only for a session that is one of that room's jobs. A status that would restart or
close (5, 50, 9, 99) is a hint: the reconciler confirms it with ``stat`` before acting.

A callback's id -- replay and duplicate detection -- is a digest of its body: the vendor's retry of one
callback is a duplicate, acknowledged and not applied twice. 200 ``{"result": "ok", "outcome"}``; 401 wrong
token or address; 400 not a status callback; 404 the route is off (no token), or the room or session is not
the daemon's; 503 when the callback could not be made durable.

**The microphone relay**, ``GET /api/rooms/{room_id}/microphone`` (a WebSocket; admin token; never on the
public listener): an operator's voice to a live SoftSugar room. Before the socket is accepted the room's
replies are held (none is said while the operator speaks; a second operator gets 409
``MICROPHONE_TAKEN``), cleared -- the waiting ones dropped, everything the vendor has not played cancelled
(``cancel -1``: 003, "calling for microphone takeover requires cancelling everything before starting") --
and the vendor's socket opened with the session's token. Then, upstream: ``{"code": 0, "message":
"begin"}``, binary PCM frames (16 kHz, mono, 16-bit: an even number of bytes, at most
:data:`MAX_FRAME_BYTES` each), ``{"code": 99, "message": "eof"}``; anything else is answered with
``{"error_code": "BAD_MESSAGE" | "BAD_AUDIO", "error_msg"}`` and not sent on. Downstream, the vendor's
messages as they come, its error codes (1, 4, 5, 6, 7) with an ``error_code`` and ``error_msg`` added
(:data:`~orchestrator.providers.softsugar.microphone.MIC_ERRORS`); after 1 or 6 the relay closes. Closing
either side ends the relay and lets the room's replies go. Refusals before the upgrade are JSON errors:
409 ``MICROPHONE_UNSUPPORTED`` (not a SoftSugar room), 409 ``ROOM_NOT_LIVE``, 400 ``WEBSOCKET_REQUIRED``,
502 ``VENDOR_ERROR``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from typing import Any, cast

import aiohttp
import orjson
import structlog
from aiohttp import web
from aiohttp.web_request import BaseRequest
from redis.exceptions import RedisError

from orchestrator import clock
from orchestrator.appkeys import (
    AUDIENCE,
    CALLBACK_RECEIVER,
    METRICS,
    PROVIDERS,
    ROOM_CONFIGS,
    ROOM_STORE,
    SETTINGS,
)
from orchestrator.callbacks.errors import CallbackMalformed, CallbackRejected, NotManaged, RejectReason
from orchestrator.callbacks.receiver import Authenticated
from orchestrator.providers.errors import ProviderError
from orchestrator.providers.softsugar.microphone import (
    BEGIN,
    EOF,
    FATAL_CODES,
    MIC_ERRORS,
    messages,
    open_socket,
    parse,
)
from orchestrator.providers.softsugar.models import RUNNING_STATUSES, StatusCallback
from orchestrator.providers.softsugar.provider import SoftSugar
from orchestrator.web.api import managed_room_id, require_admin
from orchestrator.web.errors import ApiError
from orchestrator.web.middlewares import NO_ACCESS_LINE, REQUEST_ID, bounded_body
from orchestrator.web.openapi import describe
from orchestrator.web.public import PublicRoute

NAME = "softsugar"
CALLBACK_PREFIX = "/callbacks/softsugar/"

routes = web.RouteTableDef()


@routes.post(CALLBACK_PREFIX + "{token}")
@describe(
    "SoftSugar status callback (the vendor calls this)",
    body=StatusCallback,
    auth="vendor",
    tag="vendor callbacks",
    errors=(400, 401),
)
async def status_callback_route(request: web.Request) -> web.Response:
    return await status_callback(request.app, request, request.match_info)


async def status_callback(
    app: web.Application, request: BaseRequest, params: Mapping[str, str]
) -> web.Response:
    """The handler proper (the main application's route above, and the public listener, call it)."""
    settings = app[SETTINGS]
    metrics = app[METRICS]
    expected = settings.softsugar.callback_token.get_secret_value()
    if not expected:
        raise ApiError(404, "CALLBACK_ROUTE_OFF", "softsugar.callback_token is not set")
    try:
        if not hmac.compare_digest(params["token"].encode("utf-8", "surrogateescape"), expected.encode()):
            raise CallbackRejected(RejectReason.BAD_TOKEN)
        if not _allowed(request.remote, settings.softsugar.callback_allow):
            raise CallbackRejected(RejectReason.FORBIDDEN_ADDRESS)
        body = await bounded_body(app, request)
        callback_id = "ss:" + hashlib.sha256(body).hexdigest()[:32]
        authenticated = Authenticated(callback_id, clock.time_ms(), None, NAME)
        outcome, decoded = await app[CALLBACK_RECEIVER].receive(NAME, authenticated, body)
    except CallbackRejected as exc:
        metrics.callbacks_rejected.labels(exc.reason.value).inc()
        raise ApiError(401, exc.error_code, str(exc)) from None
    except CallbackMalformed as exc:
        metrics.callbacks_rejected.labels("malformed_body").inc()
        raise ApiError(400, "CALLBACK_MALFORMED", str(exc)) from None
    except NotManaged as exc:
        metrics.callbacks_rejected.labels("not_managed").inc()
        if exc.job_only:
            await _claim(app, body)
        raise ApiError(404, "CALLBACK_NOT_MANAGED", str(exc)) from None
    except OSError:
        raise ApiError(503, "CALLBACK_NOT_DURABLE", "cannot store the callback now; retry later") from None
    metrics.callback_received(decoded.counter, outcome)
    if not settings.logging.access_log_accepted_callbacks:
        request[NO_ACCESS_LINE] = True
    return web.Response(
        body=orjson.dumps({"result": "ok", "outcome": outcome}), content_type="application/json"
    )


async def _claim(app: web.Application, body: bytes) -> None:
    """A running session of a managed room the daemon has no record of (a replica died between the
    vendor's create and its own record; the callback's ``userData`` names the room): recorded as the
    room's, so the reconciler adopts it -- or stops it, if the room runs another -- instead of closing it
    as nobody's, or leaving it billed. Running/list confirms it is the account's before anything acts."""
    try:
        callback = StatusCallback.model_validate_json(body)
    except ValueError:
        return
    if callback.status not in RUNNING_STATUSES or not callback.userData:
        return
    try:
        provider = cast(SoftSugar, app[PROVIDERS].get(NAME))
        if await provider.jobs.claim(callback.sessionId, callback.userData):
            log.info(
                "softsugar session claimed by its callback",
                session=callback.sessionId,
                room_id=callback.userData,
            )
    except (ProviderError, RedisError) as exc:
        log.warning("cannot claim a softsugar session", session=callback.sessionId, error=str(exc))


def _allowed(remote: str | None, allow: list[str]) -> bool:
    """Whether the sender's address is in one of the allowed networks (none configured: any)."""
    if not allow:
        return True
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in allow)


#: The largest PCM frame relayed: 64 KiB is two seconds of 16 kHz 16-bit mono (browsers send ~20-100 ms).
MAX_FRAME_BYTES = 64 * 1024
#: The room's replies stay held this long past the relay's last renewal (a replica dying mid-relay).
HOLD_TTL_S = 10.0


@routes.get("/api/rooms/{room_id}/microphone")
@describe(
    "Relay an operator's microphone to a live SoftSugar room (WebSocket)",
    tag="audience",
    status=101,
    content_type="application/octet-stream",
    errors=(409, 502),
)
async def microphone_relay(request: web.Request) -> web.StreamResponse:
    require_admin(request)
    room_id = await managed_room_id(request)
    app = request.app
    room = await app[ROOM_CONFIGS].get(room_id)
    if room is None or room.provider != NAME:
        raise ApiError(409, "MICROPHONE_UNSUPPORTED", "only a SoftSugar room takes an operator's microphone")
    state = await app[ROOM_STORE].state(room_id) or {}
    job_id = str(state.get("job_id") or "")
    if not job_id or state.get("job_state") != "PROCESSING":
        raise ApiError(409, "ROOM_NOT_LIVE", f"room {room_id!r} is not live")
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise ApiError(400, "WEBSOCKET_REQUIRED", "this is a WebSocket: connect with an Upgrade request")
    provider = cast(SoftSugar, app[PROVIDERS].for_room(room))
    audience = app[AUDIENCE]
    holder = f"microphone:{request.get(REQUEST_ID) or id(request)}"
    if not await audience.queue.hold(room_id, holder, HOLD_TTL_S):
        raise ApiError(409, "MICROPHONE_TAKEN", "another operator has this room's microphone")
    vendor = None
    try:
        try:
            vendor = await open_socket(provider.client(), job_id)
        except ProviderError as exc:
            raise ApiError(502, "VENDOR_ERROR", f"the vendor's voice socket: {exc}") from None
        if vendor is None:
            raise ApiError(409, "ROOM_NOT_LIVE", f"room {room_id!r} has no running session")
        _, _, refused = await audience.clear_replies(room_id, provider.audience)
        if refused is not None:
            raise ApiError(502, "VENDOR_ERROR", f"the vendor did not cancel its queue: {refused}")
        operator = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES + 1024, heartbeat=30.0)
        await operator.prepare(request)
        await audience.events.add(room_id, "microphone", job_id=job_id, outcome="taken")
        log.info("microphone taken", room_id=room_id, job_id=job_id)
        ended = await _relay(operator, vendor, lambda: audience.queue.hold(room_id, holder, HOLD_TTL_S))
        await audience.events.add(room_id, "microphone", job_id=job_id, outcome="released", **ended)
        log.info("microphone released", room_id=room_id, job_id=job_id, **ended)
        return operator
    finally:
        if vendor is not None:
            await vendor.close()
        with contextlib.suppress(Exception):
            await audience.release_replies(room_id, holder)


async def _relay(
    operator: web.WebSocketResponse, vendor: aiohttp.ClientWebSocketResponse, renew: Any
) -> dict[str, str]:
    """Pass messages both ways until either side closes; the vendor's error that ended it, if one did."""
    ended: dict[str, str] = {}

    async def upstream() -> None:
        async for frame in operator:
            if frame.type is aiohttp.WSMsgType.BINARY:
                data: bytes = frame.data
                if len(data) % 2 or len(data) > MAX_FRAME_BYTES:
                    await operator.send_json(
                        {
                            "error_code": "BAD_AUDIO",
                            "error_msg": "PCM 16-bit frames: an even number of bytes, at most "
                            f"{MAX_FRAME_BYTES}",
                        }
                    )
                    continue
                await vendor.send_bytes(data)
            elif frame.type is aiohttp.WSMsgType.TEXT:
                code = (parse(frame.data) or {}).get("code")
                if code in (BEGIN["code"], EOF["code"]):
                    await vendor.send_json(BEGIN if code == BEGIN["code"] else EOF)
                else:
                    await operator.send_json(
                        {
                            "error_code": "BAD_MESSAGE",
                            "error_msg": 'send {"code": 0, "message": "begin"}, binary PCM frames, then '
                            '{"code": 99, "message": "eof"}',
                        }
                    )

    async def downstream() -> None:
        async for message in messages(vendor):
            code = message.get("code")
            if isinstance(code, int) and code in MIC_ERRORS:
                error_code, error_msg = MIC_ERRORS[code]
                message = {**message, "error_code": error_code, "error_msg": error_msg}
                ended.update(error_code=error_code, error_msg=error_msg)
            await operator.send_json(message)
            if code in FATAL_CODES:
                return

    async def keep_hold() -> None:
        while True:
            await asyncio.sleep(HOLD_TTL_S / 3)
            await renew()

    tasks = [asyncio.create_task(t()) for t in (upstream, downstream, keep_hold)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await operator.close()
    return ended


PUBLIC_ROUTES = [PublicRoute(CALLBACK_PREFIX, status_callback, param="token")]


def setup(app: web.Application) -> None:
    """Add the route (the composition root calls this)."""
    app.add_routes(routes)


log = structlog.get_logger(__name__)
