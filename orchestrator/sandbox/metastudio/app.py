"""The MetaStudio sandbox as an aiohttp application: the smart-live API, and a control API for tests.

The API side behaves as the documents say (004 §3, §6.1.3, §6.2; 000; 002): same paths, methods and
status codes (202 on start), error bodies ``{"error_code": "MSS.xxxxxxxx", "error_msg"}`` with an
``X-Request-Id`` header, documented ranges validated (MSS.00000003 "Invalid parameter: <field> ..."), and
AK/SK signatures verified as the real gateway does: a wrong signature, an unknown AK, or an X-Sdk-Date more
than 15 minutes off gives 401 MSS.00000001. ``X-Auth-Token`` works when the sandbox has a token. The live
event report URL also carries its own ``auth_key``/``expires_time`` (HMAC) and is refreshed on request or
when it nears expiry.

Errors carry the codes and statuses 004 documents for each case (the table is
:mod:`orchestrator.providers.metastudio.codes`, one source for the client and this sandbox):

* room not found: 400 MSS.20010045 (§11.2 l.16833) -- but showing a room: 404 MSS.00000002 (§6.1.3's
  example, l.7584);
* job not found: 500 MSS.20010046 (l.16941) for show and stop, 500 MSS.20010051 (l.16946) for a command,
  500 MSS.20010059 (l.16954) for an event report (the documents give three codes for "does not exist or
  has expired" and do not say which call answers which; we spread them so the client must know all three);
  a job removed with the ``vanish`` control (the cloud expiring it) is "not found" from then on;
* a second start in a room whose job is WAITING/PROCESSING: 500 MSS.20010036 (l.16931) -- one job per room,
  unless the start says ``job_run_config.single_job_in_room: false`` (the official SDK's field);
* a command or an event report for a job that is not PROCESSING: 500 MSS.20010099 (l.16975); an unknown
  command: 500 MSS.20010053 (l.16948);
* the report URL's own authentication: 401 MSS.20010039 (wrong ``auth_key``, l.16876), 401 MSS.20010054
  (past ``expires_time``, l.16877);
* a token or AK/SK request to another project's path: 403 MSS.00020006 (l.16385); an empty project: 400
  MSS.00020004 (l.16365).

AK/SK signatures are checked against the query string *as received*: its pairs are sorted by their decoded
name and value (as the official signer sorts) but kept in the encoding they arrived in, so a client that
signs ``%2C`` and sends ``,`` is refused, as a gateway canonicalising the raw query would refuse it.

Jobs inherit the room's ``output_urls``/``stream_keys``, ``live_event_callback_config``, ``play_policy`` and
``video_config`` when the start request does not give them. ``INSERT_PLAY_SCRIPT`` without ``play_type``
plays PLAY_NOW (§11.5), ``INSERT_PLAY_AUDIO`` APPEND. List filters ``state``, ``create_since``,
``create_until``, ``sort_key`` (create_time, update_time) and ``sort_dir`` work as documented (§6.2.2).
Throttling is 429 APIGW.0308 with Retry-After.

The control API under ``/_sandbox`` (no auth; never expose it) seeds rooms, injects faults into the next
calls (5xx, 429, hang past the client's timeout -- before or after the call takes effect --, connection
reset), drives RTMP state, blocks or fails jobs, and shapes callbacks (delay, duplicate, reorder, drop).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import unquote, urlencode

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ValidationError

from orchestrator import clock
from orchestrator.providers.metastudio import auth, codes
from orchestrator.providers.metastudio.models import (
    DEFAULT_AUDIO_PLAY_TYPE,
    DEFAULT_TEXT_PLAY_TYPE,
    CleanUpInsertCommand,
    Command,
    CommandName,
    CreateRoomRequest,
    InteractionRule,
    JobState,
    LiveEventCallbackConfig,
    LiveEventReport,
    PlayAudioInfo,
    PlayPolicy,
    PlayTextInfo,
    RefreshOutputUrlConfig,
    SceneScript,
    SmartLiveRoom,
    StartJobRequest,
    VideoConfig,
)
from orchestrator.sandbox.clock import SimClock
from orchestrator.sandbox.metastudio.engine import CallbackFaults, CallbackSender, Insert, Job, World, new_id

M = TypeVar("M", bound=BaseModel)

MAX_CLOCK_SKEW_S = 15 * 60
REPORT_URL_TTL_MS = 24 * 3600 * 1000
REPORT_URL_REFRESH_BEFORE_MS = 3600 * 1000


class SandboxError(Exception):
    def __init__(self, status: int, code: str, msg: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg, self.headers = status, code, msg, headers or {}


def invalid(msg: str) -> SandboxError:
    return SandboxError(400, codes.INVALID_PARAMETER.code, f"Invalid parameter: {msg}")


def error(code: codes.Code, message: str | None = None, status: int | None = None) -> SandboxError:
    """The documented error ``code`` with its documented status (and message)."""
    return SandboxError(status or code.status, code.code, message or code.message)


def not_found(what: str) -> SandboxError:
    """The control API's own "no such thing" (not a vendor answer)."""
    return SandboxError(404, "SANDBOX.NOT_FOUND", f"not found: {what}")


@dataclass
class Fault:
    """One injected fault, applied to the next ``count`` matching API calls."""

    kind: str  # error | throttle | hang | reset | slow (answers normally, hang_s late)
    count: int = 1
    status: int = 500
    retry_after_s: float = 1.0
    hang_s: float = 30.0
    after: bool = False  # hang/reset after the call took effect (the ambiguous case)
    code: str = "MSS.00000004"  # error: the error code answered (a documented one: codes.py)
    message: str = "Internal Error"
    method: str | None = None
    path_contains: str | None = None

    def matches(self, request: web.Request) -> bool:
        return (
            self.count > 0
            and (self.method is None or self.method.upper() == request.method)
            and (self.path_contains is None or self.path_contains in request.path)
        )


@dataclass
class Call:
    method: str
    path: str
    status: int | None
    at: float = field(default_factory=clock.time)


@dataclass
class SandboxConfig:
    ak: str
    sk: str
    project_id: str
    speed: float = 1.0
    auth_token: str | None = None


class MetaStudioSandbox:
    """One sandboxed MetaStudio project; :meth:`app` serves it."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.clock = SimClock(config.speed)
        self.faults: list[Fault] = []
        self.calls: list[Call] = []
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
        app[SANDBOX] = self
        app.cleanup_ctx.append(self._world_ctx)
        api = "/v1/{project_id}"
        jobs = f"{api}/smart-live-rooms/{{room_id}}/smart-live-jobs"
        app.router.add_post(f"{api}/smart-live-rooms", self.create_room)
        app.router.add_get(f"{api}/smart-live-rooms/{{room_id}}", self.show_room)
        app.router.add_post(jobs, self.start_job)
        app.router.add_get(jobs, self.list_room_jobs)
        app.router.add_get(f"{jobs}/{{job_id}}", self.show_job)
        app.router.add_post(f"{jobs}/{{job_id}}/stop", self.stop_job)
        app.router.add_post(f"{jobs}/{{job_id}}/command", self.command)
        app.router.add_post(f"{jobs}/{{job_id}}/live-event-report", self.report)
        app.router.add_get(f"{api}/smart-live-jobs", self.list_jobs)
        _add_control_routes(app, self)
        return app

    async def _world_ctx(self, app: web.Application) -> AsyncIterator[None]:
        session = aiohttp.ClientSession()
        sender = CallbackSender(session, self.clock)
        sender.start()
        self._world = World(self.clock, sender, session)
        yield
        await self._world.aclose()
        await sender.aclose()
        await session.close()
        self._world = None

    # --- middlewares ---

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        call = Call(request.method, request.path, None)
        if not request.path.startswith("/_sandbox"):
            self.calls.append(call)
        response = await handler(request)
        call.status = response.status
        response.headers.setdefault("X-Request-Id", uuid.uuid4().hex)
        return response

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except SandboxError as exc:
            return web.json_response(
                {"error_code": exc.code, "error_msg": exc.msg}, status=exc.status, headers=exc.headers
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return web.json_response(
                {"error_code": f"APIGW.{exc.status:04d}", "error_msg": exc.reason}, status=exc.status
            )

    @web.middleware
    async def _inject_faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_sandbox"):
            return await handler(request)
        fault = next((f for f in self.faults if f.matches(request)), None)
        if fault is None:
            return await handler(request)
        fault.count -= 1
        if fault.kind == "throttle":
            raise SandboxError(
                429,
                "APIGW.0308",
                "The throttling threshold has been reached",
                {"Retry-After": f"{fault.retry_after_s:g}"},
            )
        if fault.kind == "slow":  # latency: the call takes effect before (after=True) or after the wait
            if fault.after:
                answered = await handler(request)
                await clock.sleep(fault.hang_s)
                return answered
            await clock.sleep(fault.hang_s)
            return await handler(request)
        if fault.kind == "error":
            if fault.after:  # the call took effect, then the vendor failed to say so
                await handler(request)
            raise SandboxError(fault.status, fault.code, fault.message)
        response = await handler(request) if fault.after else None
        if fault.kind == "hang":
            await clock.sleep(fault.hang_s)
        if request.transport is not None:
            request.transport.close()  # reset: the client sees the connection die without a response
        return response or web.Response(status=504)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_sandbox"):
            return await handler(request)
        project = request.match_info.get("project_id")
        if project is not None and not project.strip():
            raise error(codes.PROJECT_NOT_FOUND)
        body = await request.read()
        reason = self._auth_failure(request, body)
        if reason is not None:
            raise error(codes.UNAUTHORIZED, f"Unauthorized: {reason}")
        if project not in (None, self.config.project_id):
            # Authenticated, but for this sandbox's project: the credentials do not own that path's project.
            raise error(codes.PROJECT_MISMATCH)
        return await handler(request)

    def _auth_failure(self, request: web.Request, body: bytes) -> str | None:
        token = request.headers.get(auth.HEADER_AUTH_TOKEN)
        if token is not None:
            ok = self.config.auth_token is not None and hmac.compare_digest(token, self.config.auth_token)
            return None if ok else "invalid token"
        header = request.headers.get("Authorization")
        if header is None:
            if request.match_info.get("job_id") and request.path.endswith("/live-event-report"):
                return None  # the report URL carries its own authentication: checked by the handler
            return "missing Authorization"
        try:
            parsed = auth.parse_authorization(header)
            sdk_date = auth.parse_sdk_date(request.headers.get(auth.HEADER_DATE, ""))
        except ValueError as exc:
            return f"malformed: {exc}"
        if abs((self.world.clock.wall() - sdk_date).total_seconds()) > MAX_CLOCK_SKEW_S:
            return "X-Sdk-Date is more than 15 minutes off"
        if not hmac.compare_digest(parsed.access_key, self.config.ak):
            return "unknown access key"
        if not {"host", "x-sdk-date"} <= set(parsed.signed_headers):
            return "host and x-sdk-date must be signed"
        lowered = {k.lower(): v for k, v in request.headers.items()}
        if any(name not in lowered for name in parsed.signed_headers):
            return "a signed header is missing"
        canonical = "\n".join(
            (
                request.method.upper(),
                auth.canonical_uri(request.rel_url.raw_path),
                raw_canonical_query(request.rel_url.raw_query_string),
                auth.canonical_headers(lowered, parsed.signed_headers),
                ";".join(parsed.signed_headers),
                auth.payload_hash(body, lowered),
            )
        )
        expected = auth.signature(self.config.sk, auth.string_to_sign(canonical, lowered["x-sdk-date"]))
        return None if hmac.compare_digest(expected, parsed.signature) else "signature mismatch"

    def _check_report_key(self, request: web.Request, job: Job) -> None:
        """The report URL's ``auth_key``/``expires_time`` (004 Table 6-347: both optional, AK/SK or a token
        being the alternative). A key that is given is checked, whatever else the request carries.

        Raises 401 MSS.20010039 (no credential at all, or a wrong key) / MSS.20010054 (expired).
        """
        key, expires = request.query.get("auth_key"), request.query.get("expires_time", "")
        if key is None and not expires:
            if request.headers.get("Authorization") or request.headers.get(auth.HEADER_AUTH_TOKEN):
                return  # authenticated by the middleware instead
            raise error(codes.REPORT_AUTH_FAILED)
        if key is None or not expires.isdigit():
            raise error(codes.REPORT_AUTH_FAILED)
        if not hmac.compare_digest(key, self.world.report_auth_key(job, int(expires))):
            raise error(codes.REPORT_AUTH_FAILED)
        if int(expires) < self.clock.epoch_ms():
            raise error(codes.REPORT_EXPIRED)

    # --- lookups ---

    def _room(self, request: web.Request) -> SmartLiveRoom:
        room = self.world.rooms.get(request.match_info["room_id"])
        if room is None:
            raise error(codes.ROOM_NOT_FOUND)
        return room

    def _job(self, request: web.Request, missing: codes.Code = codes.JOB_NOT_FOUND) -> Job:
        self._room(request)
        job = self.world.jobs.get(request.match_info["job_id"])
        if job is None or job.room_id != request.match_info["room_id"]:
            raise error(missing)
        return job

    @staticmethod
    def _running(job: Job) -> None:
        """Raises 500 MSS.20010099 unless the job is PROCESSING (commands and reports need a live job)."""
        if job.state is not JobState.PROCESSING:
            message = codes.JOB_NOT_RUNNING.message.format(job_id=job.job_id, state=job.state.value)
            raise error(codes.JOB_NOT_RUNNING, message)

    def report_url(self, request: web.Request, job: Job) -> str:
        expires = self.clock.epoch_ms() + REPORT_URL_TTL_MS
        query = urlencode({"auth_key": self.world.report_auth_key(job, expires), "expires_time": expires})
        path = f"/v1/{self.config.project_id}/smart-live-rooms/{job.room_id}/smart-live-jobs/{job.job_id}"
        return f"{request.scheme}://{request.host}{path}/live-event-report?{query}"

    # --- the API ---

    async def create_room(self, request: web.Request) -> web.Response:
        body = await _json(request)
        _parse(CreateRoomRequest, body)
        room = _parse(SmartLiveRoom, body)
        stored = self.world.add_room(room.model_copy(update={"room_id": None}))
        return web.json_response({"room_id": stored.room_id})

    async def show_room(self, request: web.Request) -> web.Response:
        room = self.world.rooms.get(request.match_info["room_id"])
        if room is None:
            raise error(codes.NOT_FOUND)  # show room's own documented 404 (004 l.7584)
        return web.json_response(room.model_dump(mode="json", exclude_none=True))

    async def start_job(self, request: web.Request) -> web.Response:
        room = self._room(request)
        body = await _json(request)
        start = _parse(StartJobRequest, {k: v for k, v in body.items() if k in StartJobRequest.model_fields})
        start = _inherit(start, room)
        if room.room_state == "BLOCKED":
            raise invalid("the live room is blocked")
        assert room.room_id is not None
        single = start.job_run_config is None or start.job_run_config.single_job_in_room is not False
        ongoing = [j for j in self.world.jobs.values() if j.room_id == room.room_id and j.state.active]
        if single and ongoing:
            raise error(codes.JOB_ONGOING)
        job = self.world.start_job(room.room_id, start, lambda j: self.report_url(request, j))
        config = start.live_event_callback_config
        return web.json_response(
            {
                "job_id": job.job_id,
                "live_event_report_url": job.report_url,
                "live_event_callback_config": config.to_wire() if config else None,
                "live_warning_info": [],
            },
            status=202,
        )

    async def show_job(self, request: web.Request) -> web.Response:
        return web.json_response(self._job_view(self._job(request)))

    async def list_room_jobs(self, request: web.Request) -> web.Response:
        room = self._room(request)
        return self._job_list(request, [j for j in self.world.jobs.values() if j.room_id == room.room_id])

    async def list_jobs(self, request: web.Request) -> web.Response:
        jobs = list(self.world.jobs.values())
        if name := request.query.get("room_name"):
            jobs = [j for j in jobs if name in j.room_name]
        return self._job_list(request, jobs)

    def _job_list(self, request: web.Request, jobs: list[Job]) -> web.Response:
        offset, limit = (
            _int_query(request, "offset", 0, 0, 2147483647),
            _int_query(request, "limit", 10, 1, 100),
        )
        if states := request.query.get("state"):
            wanted = set(states.split(","))
            jobs = [j for j in jobs if j.state.value in wanted]
        since, until = _time_query(request, "create_since"), _time_query(request, "create_until")
        jobs = [j for j in jobs if (since or "") <= j.created and (until is None or j.created <= until)]
        sort_key = _choice_query(request, "sort_key", ("create_time", "update_time", "asset_order"))
        sort_dir = _choice_query(request, "sort_dir", ("asc", "desc"))
        if sort_key == "update_time":
            jobs.sort(key=lambda j: j.updated, reverse=sort_dir == "desc")
        else:  # create_time; asset_order has no meaning for live jobs: creation order
            jobs.sort(key=lambda j: j.created, reverse=sort_dir == "desc")
        page = jobs[offset : offset + limit]
        return web.json_response({"count": len(jobs), "smart_live_jobs": [self._job_view(j) for j in page]})

    def _job_view(self, job: Job) -> dict[str, Any]:
        duration = self.clock.elapsed_s() - job.started_sim_s if job.started_sim_s is not None else 0.0
        view = {
            "job_id": job.job_id,
            "room_id": job.room_id,
            "room_name": job.room_name,
            "state": job.state.value,
            "duration": round(duration, 3),
            "start_time": job.start_time,
            "end_time": job.end_time,
            "create_time": job.create_time,
            "lastupdate_time": job.end_time or job.start_time or job.create_time,
            "live_event_report_url": job.report_url,
            "live_event_callback_config": (
                job.request.live_event_callback_config.to_wire()
                if job.request.live_event_callback_config
                else None
            ),
            "error_info": job.error_info,
            "block_reason": job.block_reason,
        }
        return {k: v for k, v in view.items() if v is not None}

    async def stop_job(self, request: web.Request) -> web.Response:
        self.world.stop_job(self._job(request))
        return web.json_response({})

    async def report(self, request: web.Request) -> web.Response:
        job = self._job(request, missing=codes.JOB_GONE_AGAIN)
        self._check_report_key(request, job)
        raw = await _json(request)
        report = _parse(LiveEventReport, raw)
        if report.total != len(report.events):
            raise invalid(f"total ({report.total}) must equal the number of events ({len(report.events)})")
        self._running(job)
        # The report takes no idempotency key (seeds 004 l.10826-10870, Table 6-348: X-Auth-Token,
        # Authorization, X-Sdk-Date, X-Project-Id, X-App-UserId): a resent batch is applied again, as the
        # cloud would. Our X-Batch-Id is only recorded, so that tests can tell a resend from a bug.
        batch_id = request.headers.get("X-Batch-Id")
        if batch_id is not None:
            job.report_batches[batch_id] = job.report_batches.get(batch_id, 0) + 1
        # The events as sent (validated above): dumping each model again costs more than the rest.
        await self.world.receive_events(job, [dict(e) for e in raw["events"]], batch_id)
        expires = int(request.query.get("expires_time", "0") or 0)
        refresh = request.query.get("refresh_url") == "true"
        if refresh or expires - self.clock.epoch_ms() < REPORT_URL_REFRESH_BEFORE_MS:
            job.report_url = self.report_url(request, job)
        return web.json_response({"live_event_report_url": job.report_url})

    async def command(self, request: web.Request) -> web.Response:
        job = self._job(request, missing=codes.JOB_GONE)
        body = await _json(request)
        if body.get("command") not in CommandName.__members__:
            raise error(codes.INVALID_COMMAND)
        command = _parse(Command, body)
        self._running(job)
        command_id = new_id()
        result = self._execute(job, command, command_id)
        return web.json_response(
            {"command_id": command_id, "command": command.command.value, "result": result}
        )

    def _execute(self, job: Job, command: Command, command_id: str) -> str:
        params = command.params or {}
        name = command.command
        if name is CommandName.INSERT_PLAY_SCRIPT:
            text = _parse(PlayTextInfo, params)
            play_type = text.play_type or DEFAULT_TEXT_PLAY_TYPE
            insert = Insert(command_id, text.text_config.text, play_type, text.rule_index)
            self.world.add_insert(job, insert)
        elif name is CommandName.INSERT_PLAY_AUDIO:
            audio = _parse(PlayAudioInfo, params)
            self.world.add_insert(
                job,
                Insert(
                    command_id,
                    audio.audio_url,
                    audio.play_type or DEFAULT_AUDIO_PLAY_TYPE,
                    audio.rule_index,
                    audio=True,
                ),
            )
        elif name is CommandName.CLEAN_UP_INSERT_COMMAND:
            cleaned = self.world.clean_up_inserts(job, _parse(CleanUpInsertCommand, params).command_ids)
            return json.dumps({"cleaned_command_ids": cleaned})
        elif name is CommandName.GET_CURRENT_PLAYING_SCRIPTS:
            return json.dumps({"scene_scripts": [_playing(s) for s in job.scene_scripts]}, ensure_ascii=False)
        elif name is CommandName.GET_LIVE_JOB_CONFIG_INFO:
            room = self.world.rooms[job.room_id]
            return room.model_dump_json(exclude_none=True)
        elif name is CommandName.REWRITE_PLAY_SCRIPT:
            job.scene_scripts = [_parse(SceneScript, s) for s in params.get("scene_scripts") or []]
        elif name is CommandName.REWRITE_INTERACTION_RULES:
            job.rules = [_parse(InteractionRule, r) for r in params.get("interaction_rules") or []]
        elif name is CommandName.REFRESH_OUTPUT_URL:
            refresh = _parse(RefreshOutputUrlConfig, params)
            self.world.refresh_output(job, refresh.output_urls, refresh.stream_keys)
        elif name is CommandName.SHOW_LAYER:
            job.layers.append(params)
        return "SUCCESS"


SANDBOX = web.AppKey("metastudio_sandbox", MetaStudioSandbox)


def _playing(scene: SceneScript) -> dict[str, Any]:
    return {
        "script_name": scene.script_name,
        "model_asset_id": scene.model_asset_id,
        "shoot_scripts": [{"sequence_no": s.sequence_no, "title": s.title} for s in scene.shoot_scripts],
    }


async def _json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise SandboxError(400, "MSS.10000002", "Request JSON error.") from None
    if not isinstance(data, dict):
        raise SandboxError(400, "MSS.10000002", "Request JSON error.")
    return data


def _parse(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        location = ".".join(str(p) for p in first["loc"]) or model.__name__
        raise invalid(f"{location}: {first['msg']}") from None


def raw_canonical_query(raw_query: str) -> str:
    """The canonical query of a request as received: its pairs, in the encoding they arrived in, sorted by
    their decoded name and value as the official signer sorts them. A query sent in another encoding than
    the one signed (``,`` for ``%2C``, ``+`` for ``%20``) gives another string here -- and a signature
    mismatch, as it would at a gateway that canonicalises the raw query."""
    pairs = []
    for part in raw_query.split("&") if raw_query else []:
        name, _, value = part.partition("=")
        pairs.append(((unquote(name), unquote(value)), f"{name}={value}"))
    return "&".join(raw for _, raw in sorted(pairs, key=lambda pair: pair[0]))


def _inherit(start: StartJobRequest, room: SmartLiveRoom) -> StartJobRequest:
    """What a job started without output, callback, play or video settings takes from its room (004
    §6.1.1: the room's ``output_urls``, ``stream_keys``, ``live_event_callback_config``, ...)."""
    update: dict[str, Any] = {}
    if not start.output_urls and room.output_urls:
        update.update(output_urls=room.output_urls, stream_keys=start.stream_keys or room.stream_keys)
    if start.live_event_callback_config is None and room.live_event_callback_config:
        update["live_event_callback_config"] = _parse(
            LiveEventCallbackConfig, room.live_event_callback_config
        )
    if start.play_policy is None and room.play_policy:
        update["play_policy"] = _parse(PlayPolicy, room.play_policy)
    if start.video_config is None and room.video_config:
        update["video_config"] = _parse(VideoConfig, room.video_config)
    return start.model_copy(update=update) if update else start


def _time_query(request: web.Request, name: str) -> str | None:
    """An RFC 3339 time filter as the sandbox's precise UTC text (compared as text). A time in whole seconds
    -- the resolution of the ``create_time`` the API shows -- covers its whole second: ``create_until`` set
    to a job's own ``create_time`` includes that job."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise invalid(f"{name} must be an RFC 3339 time, e.g. 2021-01-10T08:43:17Z") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if name == "create_until" and parsed.microsecond == 0:
        parsed = parsed.replace(microsecond=999_999)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _choice_query(request: web.Request, name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.query.get(name)
    if raw is not None and raw not in choices:
        raise invalid(f"{name} must be one of {', '.join(choices)}")
    return raw


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise invalid(f"{name} must be an integer in [{low}, {high}]")
    return int(raw)


# --- control API ------------------------------------------------------------------------------------------


def _add_control_routes(app: web.Application, sandbox: MetaStudioSandbox) -> None:
    r = app.router

    async def add_room(request: web.Request) -> web.Response:
        room = sandbox.world.add_room(_parse(SmartLiveRoom, await _json(request)))
        return web.json_response(room.model_dump(mode="json", exclude_none=True))

    async def add_faults(request: web.Request) -> web.Response:
        data = await _json(request)
        items = data.get("faults", [data])
        try:
            sandbox.faults.extend(Fault(**item) for item in items)
        except TypeError as exc:
            raise invalid(str(exc)) from None
        return web.json_response({"faults": [asdict(f) for f in sandbox.faults if f.count > 0]})

    async def clear_faults(request: web.Request) -> web.Response:
        sandbox.faults.clear()
        return web.json_response({"faults": []})

    async def callback_faults(request: web.Request) -> web.Response:
        try:
            sandbox.world.sender.faults = CallbackFaults(**await _json(request))
        except TypeError as exc:
            raise invalid(str(exc)) from None
        return web.json_response(asdict(sandbox.world.sender.faults))

    async def deliveries(request: web.Request) -> web.Response:
        if request.query.get("drain") == "true":
            await sandbox.world.sender.drain()
        return web.json_response([asdict(d) for d in sandbox.world.sender.log])

    def job_of(request: web.Request) -> Job:
        job = sandbox.world.jobs.get(request.match_info["job_id"])
        if job is None:
            raise not_found(f"job {request.match_info['job_id']}")
        return job

    async def rtmp(request: web.Request) -> web.Response:
        job, data = job_of(request), await _json(request)
        state = data.get("state")
        if state not in ("CONNECTING", "CONNECTED", "DISCONNECTED", "RECONNECTING", "END"):
            raise invalid("state must be CONNECTING, CONNECTED, DISCONNECTED, RECONNECTING or END")
        job.rtmp_sticky = bool(data.get("sticky", False))
        for url in [data["output_url"]] if data.get("output_url") else job.output_urls:
            sandbox.world.set_rtmp(job, url, state)
        return web.json_response(job.rtmp)

    async def block(request: web.Request) -> web.Response:
        job, data = job_of(request), await _json(request)
        sandbox.world.block(job, str(data.get("reason", "blocked by the live platform")))
        sandbox.world.rooms[job.room_id] = sandbox.world.rooms[job.room_id].model_copy(
            update={"room_state": "BLOCKED"}
        )
        return web.json_response({"state": job.state.value})

    async def fail(request: web.Request) -> web.Response:
        job, data = job_of(request), await _json(request)
        sandbox.world.fail(
            job,
            str(data.get("error_code", "MSS.45000010")),
            str(data.get("error_msg", "RTMP stream push failed.")),
        )
        return web.json_response({"state": job.state.value})

    async def vanish(request: web.Request) -> web.Response:
        """The cloud forgets the job (it expired): every API call naming it is "not found" from now on."""
        job = job_of(request)
        sandbox.world.vanish(job)
        return web.json_response({"vanished": job.job_id})

    async def job_detail(request: web.Request) -> web.Response:
        job = job_of(request)
        return web.json_response(
            {
                "state": job.state.value,
                "scene": job.scene,
                "paragraph": job.paragraph,
                "rtmp": job.rtmp,
                "inserts": [asdict(i) for i in job.inserts],
                "reported": job.reported,
                "report_batches": job.report_batches,
                "layers": job.layers,
                "output_urls": job.output_urls,
            }
        )

    async def calls(request: web.Request) -> web.Response:
        return web.json_response([asdict(c) for c in sandbox.calls])

    async def interaction_posts(request: web.Request) -> web.Response:
        return web.json_response(sandbox.world.interaction_posts)

    async def state(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "project_id": sandbox.config.project_id,
                "speed": sandbox.clock.speed,
                "rooms": sorted(sandbox.world.rooms),
                "jobs": {j.job_id: j.state.value for j in sandbox.world.jobs.values()},
                "reported": {j.job_id: len(j.reported) for j in sandbox.world.jobs.values() if j.reported},
            }
        )

    r.add_get("/_sandbox/state", state)
    r.add_post("/_sandbox/rooms", add_room)
    r.add_post("/_sandbox/faults", add_faults)
    r.add_delete("/_sandbox/faults", clear_faults)
    r.add_post("/_sandbox/callbacks/faults", callback_faults)
    r.add_get("/_sandbox/callbacks", deliveries)
    r.add_get("/_sandbox/calls", calls)
    r.add_get("/_sandbox/interaction-posts", interaction_posts)
    r.add_get("/_sandbox/jobs/{job_id}", job_detail)
    r.add_post("/_sandbox/jobs/{job_id}/rtmp", rtmp)
    r.add_post("/_sandbox/jobs/{job_id}/block", block)
    r.add_post("/_sandbox/jobs/{job_id}/fail", fail)
    r.add_post("/_sandbox/jobs/{job_id}/vanish", vanish)


def demo_room() -> SmartLiveRoom:
    """A seeded room: two scenes of product talk with related products, and a few interaction rules."""
    scripts = [
        {
            "script_name": "Opening",
            "shoot_scripts": [
                {
                    "sequence_no": 1,
                    "title": "Welcome",
                    "text_config": {"text": "欢迎来到直播间！今天给大家带来三款好物。"},
                },
                {
                    "sequence_no": 2,
                    "title": "Agenda",
                    "text_config": {"text": "先看保温杯，再看蓝牙耳机，最后有福利。"},
                },
            ],
        },
        {
            "script_name": "Products",
            "shoot_scripts": [
                {
                    "sequence_no": 1,
                    "title": "Thermos",
                    "text_config": {"text": "这款保温杯十二小时保温，今天直播间特价。"},
                    "relation_product": {"product_id": "p-1001", "product_title": "Thermos cup"},
                },
                {
                    "sequence_no": 2,
                    "title": "Earbuds",
                    "text_config": {"text": "蓝牙耳机续航三十小时，降噪效果很好。"},
                    "relation_product": {"product_id": "p-1002", "product_title": "Wireless earbuds"},
                },
            ],
        },
    ]
    rules = [
        {
            "rule_index": "price",
            "rule_name": "price question",
            "event_type": 1,
            "hit_condition": {
                "relation": "OR",
                "priority": 100,
                "tags": [{"tag": "content", "match": "REGEX", "value": "多少钱|价格|price"}],
            },
            "trigger": {
                "time_window": 10,
                "reply_mode": "SYSTEM_REPLY",
                "play_type": "INSERT",
                "reply_texts": ["价格在购物车里，今天有优惠哦。"],
            },
        },
        {
            "rule_index": "gift",
            "rule_name": "thanks for gifts",
            "event_type": 4,
            "hit_condition": {
                "relation": "AND",
                "priority": 200,
                "tags": [{"tag": "giftNum", "match": "MATH_GE", "value": "1"}],
            },
            "trigger": {
                "time_window": 0,
                "reply_mode": "SYSTEM_REPLY",
                "play_type": "APPEND",
                "reply_texts": ["谢谢你的礼物！"],
            },
        },
        {
            "rule_index": "ask",
            "rule_name": "questions go to the daemon",
            "event_type": 1,
            "hit_condition": {
                "relation": "OR",
                "priority": 300,
                "tags": [{"tag": "content", "match": "REGEX", "value": "[?？]$"}],
            },
            "trigger": {"time_window": 0, "reply_mode": "CALLBACK"},
        },
    ]
    return SmartLiveRoom.model_validate(
        {
            "room_id": "demo-room",
            "room_name": "Demo room",
            "scene_scripts": scripts,
            "interaction_rules": rules,
        }
    )


@contextlib.asynccontextmanager
async def running_sandbox(
    config: SandboxConfig, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[tuple[MetaStudioSandbox, str]]:
    """Serve a sandbox on ``host:port`` (0: a free port); yield it with its base URL."""
    sandbox = MetaStudioSandbox(config)
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
