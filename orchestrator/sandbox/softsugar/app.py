"""A faithful SoftSugar 2D interactive live emulator (document 003), for tests, the demo and operators.

Every endpoint of 003 with its request and response shapes (line numbers cite it), the account's tokens as
the vendor's access guide gives them (an md5-signed request; 8 h tokens; **at most two valid at once**: a
third issued invalidates the oldest), status callbacks to ``callback_url``, and the microphone WebSocket's
notices. The world itself -- sessions, their queues, time -- is :mod:`.engine`.

Requests are validated with the daemon's own models (:mod:`orchestrator.providers.softsugar.models`), which
carry 003's ranges: a request the daemon would refuse is refused here too, ``code`` 10001 (our code: 003
publishes none). Control routes under ``/_sandbox`` inject faults and read the state; never expose them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType, web
from pydantic import BaseModel, ValidationError

from orchestrator import clock
from orchestrator.providers.softsugar.models import (
    CancelBody,
    CommandBody,
    CreateChannel,
    HistoryQuery,
    LiveScript,
    NlpQuery,
    QueueBody,
    QuickHandoff,
    ReorderBody,
    RtcTokenBody,
    SessionBody,
    Takeover,
)
from orchestrator.sandbox.clock import SimClock
from orchestrator.sandbox.softsugar.engine import (
    INVALID,
    RUNNING,
    TOKEN_LIFETIME_S,
    VendorError,
    World,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BASE = "/api/2dvh"
MICROPHONE = "/api/live-takeover-cc/v1/material/live/channel/command/microphone"
#: The access guide: a token request's timestamp may be off by this much (our choice: 5 minutes).
TIMESTAMP_SKEW_MS = 300_000


@dataclass
class SandboxConfig:
    app_id: str
    app_key: str
    callback_url: str | None = None
    speed: float = 1.0
    create_s: float = 3.0  # 32 → 35 (simulated seconds)
    heartbeat_timeout_s: float = 180.0  # no heartbeat this long: closed with 50 (003 l.85: "threshold")
    char_s: float = 0.25  # a takeover plays this long per character


@dataclass
class Fault:
    """One injected fault, applied to the next ``count`` matching calls."""

    kind: str  # error (a code != 0) | status (HTTP status) | hang | slow | reset
    count: int = 1
    code: int = 10500
    message: str = "Internal error"
    status: int = 500
    hang_s: float = 30.0
    after: bool = False  # the call took effect before the fault
    path_contains: str | None = None

    def matches(self, request: web.Request) -> bool:
        return self.count > 0 and (self.path_contains is None or self.path_contains in request.path)


@dataclass
class Tokens:
    """The account's valid access tokens, oldest first; refresh tokens alongside."""

    access: list[tuple[str, float]] = field(default_factory=list)  # (token, expires at: epoch s)
    refresh: dict[str, float] = field(default_factory=dict)
    issued: int = 0


class SoftSugarSandbox:
    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.sim = SimClock(config.speed)
        self.faults: list[Fault] = []
        self.calls: list[tuple[str, str, int | None]] = []
        self.tokens = Tokens()
        self._world: World | None = None

    @property
    def world(self) -> World:
        if self._world is None:
            raise RuntimeError("the sandbox app is not running")
        return self._world

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._record, self._errors, self._inject_faults, self._authenticate]
        )
        app.cleanup_ctx.append(self._world_ctx)
        r = app.router
        r.add_post("/api/uc/v1/access/api/token", self.token)
        r.add_post("/api/uc/v1/access/api/token/refresh", self.refresh)
        live = f"{BASE}/v1/material/live/channel"
        r.add_post(f"{BASE}/v2/material/live/channel/create", self.create)  # l.28
        r.add_post(f"{live}/heartbeat", self.heartbeat)  # l.89
        r.add_post(f"{live}/start", self.start)  # l.128
        r.add_post(f"{live}/command", self.command_v1)  # l.168
        r.add_post(f"{BASE}/v2/material/live/channel/command", self.command)  # l.210
        r.add_post(f"{live}/command/queue", self.queue)  # l.261
        r.add_post(f"{live}/command/queue/reorder", self.reorder)  # l.310
        r.add_post(f"{live}/command/cancel", self.cancel)  # l.357
        r.add_post(f"{live}/command/queue/list", self.queue_list)  # l.404
        r.add_post(f"{BASE}/v2/material/live/channel/command/quick", self.quick)  # l.447
        r.add_post(f"{live}/close", self.close)  # l.660
        r.add_get(f"{live}/stat", self.stat)  # l.700
        r.add_get(f"{live}/running/list", self.running_list)  # l.751
        r.add_post(f"{live}/history/list", self.history)  # l.798
        r.add_post(f"{BASE}/v1/material/rtc/token/audience", self.rtc_token)  # l.876
        r.add_post(f"{BASE}/v1/nlp/model/reply", self.nlp)  # l.602
        r.add_get(MICROPHONE, self.microphone)  # l.495
        _control_routes(app, self)
        return app

    async def _world_ctx(self, app: web.Application) -> AsyncIterator[None]:
        session = aiohttp.ClientSession()
        self._world = World(
            self.sim,
            callback_url=self.config.callback_url,
            create_s=self.config.create_s,
            heartbeat_timeout_s=self.config.heartbeat_timeout_s,
            char_s=self.config.char_s,
            session=session,
        )
        self._world.start()
        yield
        await self._world.aclose()
        await session.close()
        self._world = None

    # --- middlewares ---

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        status: int | None = None  # None: the handler failed (or was cancelled) without an answer
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            status = exc.status
            raise
        else:
            status = response.status
            return response
        finally:
            if not request.path.startswith("/_sandbox"):
                self.calls.append((request.method, request.path, status))

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except VendorError as exc:
            return web.json_response(
                {"code": exc.code, "message": exc.message, "data": None}, status=exc.status
            )

    @web.middleware
    async def _inject_faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_sandbox"):
            return await handler(request)
        fault = next((f for f in self.faults if f.matches(request)), None)
        if fault is None:
            return await handler(request)
        fault.count -= 1
        response = await handler(request) if fault.after else None
        if fault.kind == "error":
            raise VendorError(fault.code, fault.message)
        if fault.kind == "status":
            raise VendorError(fault.code, fault.message, status=fault.status)
        if fault.kind in ("hang", "slow"):
            await self.sim.sleep(fault.hang_s)
            if fault.kind == "slow":
                return response or await handler(request)
        if request.transport is not None:
            request.transport.close()
        return response or web.Response(status=504)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(("/_sandbox", "/api/uc/", MICROPHONE)):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        token = header[len("Bearer ") :] if header.startswith("Bearer ") else ""
        if not self._valid_access(token):
            raise VendorError(
                401, "unauthorized: the token is missing, expired or no longer valid", status=401
            )
        return await handler(request)

    def _valid_access(self, token: str) -> bool:
        now = clock.time()
        return any(hmac.compare_digest(token, t) and expires > now for t, expires in self.tokens.access)

    # --- tokens (the access guide) ---

    def _issue(self) -> dict[str, Any]:
        now = clock.time()
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.tokens.access = [(t, e) for t, e in self.tokens.access if e > now]
        self.tokens.access.append((access, now + TOKEN_LIFETIME_S))
        self.tokens.access = self.tokens.access[-2:]  # at most two valid at once: the oldest goes
        self.tokens.refresh[refresh] = now + 2 * TOKEN_LIFETIME_S
        self.tokens.issued += 1
        return {"accessToken": access, "expiresIn": TOKEN_LIFETIME_S, "refreshToken": refresh}

    async def token(self, request: web.Request) -> web.Response:
        body = await _json(request)
        app_id, timestamp, sign = body.get("appId"), body.get("timestamp"), body.get("sign")
        if body.get("grantType") != "sign" or app_id != self.config.app_id or not isinstance(timestamp, int):
            raise VendorError(401, "invalid appId, timestamp or grantType", status=401)
        if abs(clock.time_ms() - timestamp) > TIMESTAMP_SKEW_MS:
            raise VendorError(401, "timestamp too far from the server's time", status=401)
        expected = hashlib.md5(
            f"{app_id}{timestamp}{self.config.app_key}".encode(), usedforsecurity=False
        ).hexdigest()
        if not isinstance(sign, str) or not hmac.compare_digest(sign, expected):
            raise VendorError(401, "sign does not match", status=401)
        return _ok(self._issue())

    async def refresh(self, request: web.Request) -> web.Response:
        body = await _json(request)
        header = request.headers.get("Authorization", "")
        refresh = header[len("Bearer ") :] if header.startswith("Bearer ") else ""
        expires = self.tokens.refresh.pop(refresh, 0.0)
        if (
            body.get("grantType") != "refreshToken"
            or body.get("appId") != self.config.app_id
            or expires <= clock.time()
        ):
            raise VendorError(401, "invalid or expired refresh token", status=401)
        return _ok(self._issue())

    # --- channels ---

    async def create(self, request: web.Request) -> web.Response:
        body = _parse(CreateChannel, await _json(request))
        try:
            script = LiveScript.model_validate_json(body.param)
        except ValidationError as exc:
            raise VendorError(INVALID, f"param: {_first(exc)}") from None
        session = self.world.create(script.to_wire(), body.userData)
        data: dict[str, Any] = {
            "sessionId": session.session_id,
            "sessionToken": session.session_token,
            "status": session.status,
        }
        if session.status in (35, 2):  # l.56-60: the RTC fields are not there while 32
            data.update(_rtc(session))
        return _ok(data)

    async def heartbeat(self, request: web.Request) -> web.Response:
        self.world.heartbeat(_parse(SessionBody, await _json(request)).sessionId)
        return _ok(None)

    async def start(self, request: web.Request) -> web.Response:
        self.world.start_session(_parse(SessionBody, await _json(request)).sessionId)
        return _ok(True)

    async def close(self, request: web.Request) -> web.Response:
        self.world.close(_parse(SessionBody, await _json(request)).sessionId)
        return _ok(True)

    async def stat(self, request: web.Request) -> web.Response:
        session = self.world.get(request.query.get("sessionId", ""))
        data: dict[str, Any] = {"status": session.status, "sessionToken": session.session_token}
        if session.status in (2, 35):
            data.update(_rtc(session))
        return _ok(data)

    async def running_list(self, request: web.Request) -> web.Response:
        return _ok(
            [
                {"sessionId": s.session_id, "status": s.status}
                for s in self.world.sessions.values()
                if s.status in RUNNING
            ]
        )

    async def history(self, request: web.Request) -> web.Response:
        query = _parse(HistoryQuery, await _json(request))
        done = [s for s in self.world.sessions.values() if s.status not in RUNNING]
        if query.sessionId:
            done = [s for s in done if s.session_id == query.sessionId]
        if query.status is not None:
            done = [s for s in done if s.status == query.status]
        field_name = {"startTime": "start_time", "endTime": "end_time"}.get(
            query.sortName or "endTime", "end_time"
        )
        done.sort(key=lambda s: getattr(s, field_name), reverse=(query.sortValue or "desc") == "desc")
        page, size = query.pageNo or 1, query.pageSize or 10
        chunk = done[(page - 1) * size : page * size]
        return _ok(
            {
                "pagination": {
                    "pageNo": page,
                    "numberPages": (len(done) + size - 1) // size,
                    "numberRecords": len(done),
                    "pageSize": size,
                    "startIndex": (page - 1) * size,
                },
                "result": [
                    {
                        "sessionId": s.session_id,
                        "startTime": s.start_time,
                        "endTime": s.end_time,
                        "status": s.status,
                    }
                    for s in chunk
                ],
            }
        )

    async def rtc_token(self, request: web.Request) -> web.Response:
        body = _parse(RtcTokenBody, await _json(request))
        session = self.world.running(body.sessionId)
        if body.rtcChannelId != session.rtc_channel_id:
            raise VendorError(INVALID, "rtcChannelId is not the session's")
        return _ok(secrets.token_urlsafe(48))

    # --- takeovers ---

    def _takeover(self, param: str) -> Takeover:
        try:
            return Takeover.model_validate_json(param)
        except ValidationError as exc:
            raise VendorError(INVALID, f"param: {_first(exc)}") from None

    async def command_v1(self, request: web.Request) -> web.Response:
        body = _parse(CommandBody, await _json(request))
        self.world.enqueue(body.sessionId, _text(self._takeover(body.param)), None, kind="v1")
        return _ok(True)

    async def command(self, request: web.Request) -> web.Response:
        body = _parse(CommandBody, await _json(request))
        item = self.world.enqueue(body.sessionId, _text(self._takeover(body.param)), None, kind="command")
        return _ok({"isSuccess": True, "commandTraceId": item.trace_id})

    async def queue(self, request: web.Request) -> web.Response:
        body = _parse(QueueBody, await _json(request))
        item = self.world.enqueue(body.sessionId, _text(self._takeover(body.param)), body.priority)
        return _ok({"commandStatus": 34, "commandTraceId": item.trace_id})

    async def reorder(self, request: web.Request) -> web.Response:
        body = _parse(ReorderBody, await _json(request))
        self.world.reorder(body.sessionId, body.commandTraceId, body.priority)
        return _ok({"isSuccess": True})

    async def cancel(self, request: web.Request) -> web.Response:
        body = _parse(CancelBody, await _json(request))
        ids = None if body.commandTraceId == "-1" else [i for i in body.commandTraceId.split(";") if i]
        self.world.cancel(body.sessionId, ids)
        return _ok({"isSuccess": True, "commandFinishTime": clock.now().strftime("%Y-%m-%d %H:%M:%S")})

    async def queue_list(self, request: web.Request) -> web.Response:
        session = self.world.running(_parse(SessionBody, await _json(request)).sessionId)
        return _ok({"commandTraceIds": [i.trace_id for i in session.queue]})

    async def quick(self, request: web.Request) -> web.Response:
        body = _parse(CommandBody, await _json(request))
        try:
            handoff = QuickHandoff.model_validate_json(body.param)
        except ValidationError as exc:
            raise VendorError(INVALID, f"param: {_first(exc)}") from None
        session = self.world.running(body.sessionId)
        replies = session.script.get("sceneList", [{}])[0].get("quick_response") or []
        if not replies:
            raise VendorError(INVALID, "the live script defines no quick_response")
        if handoff.order >= len(replies):
            raise VendorError(INVALID, f"order {handoff.order} beyond the {len(replies)} quick responses")
        chosen = replies[handoff.order] if handoff.order >= 0 else secrets.choice(replies)
        text = (
            chosen
            if isinstance(chosen, str)
            else str((chosen.get("tts_query") or {}).get("content", "audio"))
        )
        item = self.world.enqueue(body.sessionId, text, None, kind="quick")
        return _ok({"isSuccess": True, "commandTraceId": item.trace_id})

    async def nlp(self, request: web.Request) -> web.Response:
        query = _parse(NlpQuery, await _json(request))
        answers = self.world.qa.get(query.appId)
        if answers is None:
            error, answer = f"Q&A database {query.appId} not found", ""
        else:
            answer = next((a for q, a in answers.items() if q in query.query or query.query in q), "")
            error = "" if answer else "no answer matched"
        # 003 l.640-655: this endpoint answers without the {code, message, data} envelope.
        return web.json_response(
            {
                "answer": answer,
                "device_id": query.device,
                "error_message": error,
                "language": query.language,
                "query": query.query,
                "session": query.session,
                "trace": query.trace,
            }
        )

    # --- the microphone WebSocket (l.487-590) ---

    async def microphone(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session = self.world.sessions.get(request.query.get("sessionId", ""))
        auth = request.query.get("Authorization", "")
        if (
            session is None
            or auth != f"Bearer {session.session_token}"
            or request.query.get("clientType") != "BROWSER"
        ):
            await ws.send_json({"code": 1, "message": "Authentication failed"})
            await ws.close()
            return ws
        if session.status != 2:
            await ws.send_json({"code": 6, "message": "Server not ready to receive"})
            await ws.close()
            return ws
        notices: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.world.listeners.add(notices)
        relay = asyncio.create_task(_relay(ws, notices, session.session_id))
        streaming = False
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    control = _loads(message.data)
                    if control.get("message") == "begin":
                        if session.queue:  # l.353: every takeover must be cancelled before the microphone
                            await ws.send_json(
                                {"code": 7, "message": "Algorithm-side takeover conflict rejected"}
                            )
                            continue
                        streaming = True
                        await ws.send_json({"code": 2, "message": "Server ready to receive"})
                    elif control.get("message") == "eof":
                        streaming = False
                elif message.type == WSMsgType.BINARY:
                    if not streaming:
                        await ws.send_json({"code": 4, "message": "Stop sending voice data"})
                    elif len(message.data) % 2:
                        await ws.send_json(
                            {"code": 5, "message": "Failed to send voice data"}
                        )  # not 16-bit PCM
                    else:
                        session.voice_bytes += len(message.data)
        finally:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            self.world.listeners.discard(notices)
        return ws


async def _relay(ws: web.WebSocketResponse, notices: asyncio.Queue[dict[str, Any]], session_id: str) -> None:
    while True:
        notice = await notices.get()
        if notice["data"]["sessionId"] == session_id and not ws.closed:
            await ws.send_json(notice)


def _control_routes(app: web.Application, box: SoftSugarSandbox) -> None:
    async def add_faults(request: web.Request) -> web.Response:
        items = await request.json()
        for item in items if isinstance(items, list) else [items]:
            box.faults.append(Fault(**item))
        return web.json_response({"faults": len(box.faults)})

    async def clear_faults(request: web.Request) -> web.Response:
        box.faults.clear()
        return web.json_response({"faults": 0})

    async def session_fault(request: web.Request) -> web.Response:
        status = int(request.match_info["status"])
        box.world.fail(request.match_info["session_id"], status)
        return web.json_response({"status": status})

    async def create_faults(request: web.Request) -> web.Response:
        box.world.create_faults.extend(int(s) for s in (await request.json())["statuses"])
        return web.json_response({"pending": list(box.world.create_faults)})

    async def drop_callbacks(request: web.Request) -> web.Response:
        box.world.drop_callbacks += int((await request.json())["count"])
        return web.json_response({"drop": box.world.drop_callbacks})

    async def qa(request: web.Request) -> web.Response:
        box.world.qa[request.match_info["app_id"]] = dict(await request.json())
        return web.json_response({"questions": len(box.world.qa[request.match_info["app_id"]])})

    async def state(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "sessions": [
                    {
                        "sessionId": s.session_id,
                        "status": s.status,
                        "userData": s.user_data,
                        "heartbeats": s.heartbeats,
                        "queue": [i.trace_id for i in s.queue],
                        "played": [i.text for i in s.played],
                    }
                    for s in box.world.sessions.values()
                ],
                "tokens_issued": box.tokens.issued,
                "deliveries": len(box.world.deliveries),
            }
        )

    app.router.add_post("/_sandbox/faults", add_faults)
    app.router.add_delete("/_sandbox/faults", clear_faults)
    app.router.add_post("/_sandbox/sessions/{session_id}/status/{status}", session_fault)
    app.router.add_post("/_sandbox/create-faults", create_faults)
    app.router.add_post("/_sandbox/drop-callbacks", drop_callbacks)
    app.router.add_post("/_sandbox/qa/{app_id}", qa)
    app.router.add_get("/_sandbox/state", state)


def _rtc(session: Any) -> dict[str, Any]:
    return {
        "rtcAppId": "sandbox-rtc-app",
        "rtcChannelId": session.rtc_channel_id,
        "rtcUid": "1000",
        "rtcToken": uuid.uuid4().hex,
    }


def _ok(data: Any) -> web.Response:
    return web.json_response({"code": 0, "message": "success", "data": data})


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError:
        raise VendorError(INVALID, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise VendorError(INVALID, "the body must be a JSON object")
    return body


def _loads(data: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _parse(model: type[Any], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise VendorError(INVALID, _first(exc)) from None


def _first(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    return f"{'.'.join(str(p) for p in first['loc']) or 'body'}: {first['msg']}"


def _text(takeover: Takeover) -> str:
    return takeover.tts_query.content if takeover.tts_query else (takeover.audio or "")


@contextlib.asynccontextmanager
async def running_sandbox(
    config: SandboxConfig, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[tuple[SoftSugarSandbox, str]]:
    """Serve a sandbox on ``host:port`` (0: a free port); yield it with its base URL."""
    sandbox = SoftSugarSandbox(config)
    # A stand-in stops at once: a request held by a "hang" fault is not waited for (aiohttp waits 60 s).
    runner = web.AppRunner(sandbox.app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield sandbox, f"http://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()


def demo_script(text: str = "欢迎来到直播间，今天给大家带来一款保温杯，十二小时保温。") -> dict[str, Any]:
    """003's example live script (l.1023-1140), trimmed: one scene, one avatar, one voice, ``text`` on a
    loop -- for the demo, the soak and the benchmarks."""
    return {
        "version": "0.0.1",
        "recycle": 1,
        "stream_mode": True,
        "sceneList": [
            {
                "digital_role": {
                    "id": 1,
                    "face_feature_id": "0325_nina_s3_beauty",
                    "name": "小李",
                    "url": "https://example.com/0325_nina_s3_beauty.zip",
                    "position": {"x": 10, "y": 60},
                    "scale": 1,
                },
                "tts_config": {
                    "id": "nina",
                    "name": "nina",
                    "vendor_id": 3,
                    "language": "zh-CN",
                    "pitch_offset": 0.0,
                    "speed_ratio": 1,
                    "volume": 100,
                },
                "tts_query": {"content": text, "ssml": False},
            }
        ],
    }


__all__ = ["BaseModel", "Fault", "SandboxConfig", "SoftSugarSandbox", "demo_script", "running_sandbox"]
