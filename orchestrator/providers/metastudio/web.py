"""MetaStudio's routes: what MetaStudio calls on the daemon, from the internet.

* ``POST /callbacks/metastudio/live-events[/{profile}]`` -- the live-event callbacks of the jobs the daemon
  starts. The profile says where the credentials are (MSS_A: query ``hwSecret``/``hwTime``; MSS_A_HEAD:
  headers ``x-hw-mss-secret``/``x-hw-mss-time``); the signature is verified here, against the callback URL
  as configured (bound to the room its query names, if it names one), before the body is read; then the
  core receiver (:mod:`orchestrator.callbacks.receiver`) decodes it with this provider's codec and makes
  it durable. Outcomes and errors map to HTTP here.
* ``POST /callbacks/metastudio/interaction/{token}`` -- a job's ``interaction_callback_url``: the vendor's
  CALLBACK-mode rules post the event that fired them. The documents give neither the body nor an
  authentication for this call, so we take what our sandbox sends -- ``{"room_id", "job_id",
  "rule_index", "event": LiveEvent}`` -- and authenticate by the token in the path (compared in constant
  time; the path is logged with the token masked). The reply desk answers it
  (:meth:`orchestrator.interaction.audience.AudienceService.answer_vendor_rule`). 200 ``{"queued": bool,
  "reply_id", "reason"}``; 401 wrong token; 404 room or job not ours, or the endpoint off (no token).
* ``POST /llm/metastudio`` -- MetaStudio's third-party LLM callback (004 §7.1): signed with query
  parameters ``secret = hmac_sha256(appKey, URI(llm_url) + timestamp)`` (the timestamp in decimal
  milliseconds, as the document's worked example computes it) and ``time_stamp = hex(timestamp)``; a
  signature is answered once (a Redis key, so across replicas). The body is ``{"messages": [{"content"}],
  "app_id", "user", "session_id", "is_stream"}``; the last message is the question, the reply policy
  answers it (or ``interaction.llm_fallback``), as ``{"id", "created", "choices": [{"message":
  {"content"}, "index": 0}]}``, or with ``is_stream`` as server-sent events, one sentence each, ending with
  ``data:[DONE]``.

Each handler takes the application and the path parameters, so the main application's routes and the
public listener (:mod:`orchestrator.web.public`, given :data:`PUBLIC_ROUTES`) call the same function.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.web_request import BaseRequest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator import clock
from orchestrator.appkeys import AUDIENCE, CALLBACK_RECEIVER, METRICS, REDIS, ROOM_STORE, SETTINGS
from orchestrator.callbacks.errors import CallbackMalformed, CallbackRejected, NotManaged
from orchestrator.callbacks.receiver import Authenticated
from orchestrator.interaction.ingest import count_of
from orchestrator.interaction.policy import Event
from orchestrator.providers.metastudio.callbacks import (
    HEADER_SECRET,
    HEADER_TIME,
    QUERY_SECRET,
    QUERY_TIME,
    SignatureVerifier,
    VerifyPolicy,
    verify_signature,
)
from orchestrator.providers.metastudio.profiles import (
    CALLBACK_PATH,
    DEFAULT_PROFILE,
    ROOM_QUERY,
    ResolvedProfile,
    room_callback_url,
)
from orchestrator.settings import CallbackAuthType
from orchestrator.store import keys
from orchestrator.store.keys import InvalidKeyPart, check_room_id
from orchestrator.web.errors import ApiError
from orchestrator.web.middlewares import NO_ACCESS_LINE, bounded_body
from orchestrator.web.openapi import describe
from orchestrator.web.public import PublicRoute

NAME = "metastudio"
INTERACTION_PREFIX = "/callbacks/metastudio/interaction/"
LLM_PATH = "/llm/metastudio"
#: Verifiers kept per (profile, room) before the cache starts again (one HMAC state per key each).
MAX_VERIFIERS = 20_000

routes = web.RouteTableDef()
log = structlog.get_logger(__name__)


class CallbackAuth:
    """MSS_A / MSS_A_HEAD for every profile: a verifier per signed URL (the profile's, bound to a room),
    made once and kept (each holds the HMAC state of its keys over the URL)."""

    def __init__(self, profiles: dict[str, ResolvedProfile], policy: VerifyPolicy) -> None:
        self.profiles = profiles
        self._policy = policy
        self._verifiers: dict[tuple[str, str], tuple[ResolvedProfile, SignatureVerifier, str]] = {}

    def authenticate(self, profile: ResolvedProfile, request: BaseRequest, now_ms: int) -> Authenticated:
        """Raises CallbackRejected."""
        room_id = request.query.get(ROOM_QUERY)
        if profile.auth_type is CallbackAuthType.NONE:
            return Authenticated(None, None, room_id, profile.name)
        if profile.auth_type is CallbackAuthType.MSS_A_HEAD:
            secret, time_text = request.headers.get(HEADER_SECRET), request.headers.get(HEADER_TIME)
        else:
            secret, time_text = request.query.get(QUERY_SECRET), request.query.get(QUERY_TIME)
        verifier, url_tag = self._verifier(profile, room_id)
        verified = verifier.verify(secret, time_text, now_ms)
        return Authenticated(f"{url_tag}:{verified.signature}", verified.event_ms, room_id, profile.name)

    def _verifier(self, profile: ResolvedProfile, room_id: str | None) -> tuple[SignatureVerifier, str]:
        """The verifier of the signed URL and a short digest of that URL (used signatures are kept per
        signed URL, so one room's signature is never taken for another's)."""
        cache_key = (profile.name, room_id or "")
        known = self._verifiers.get(cache_key)
        if known is None or known[0] is not profile:
            if len(self._verifiers) >= MAX_VERIFIERS:
                self._verifiers.clear()
            url = profile.public_url if room_id is None else room_callback_url(profile.public_url, room_id)
            tag = hashlib.sha256(url.encode()).hexdigest()[:16]
            known = self._verifiers[cache_key] = (
                profile,
                SignatureVerifier(url, profile.keys, self._policy),
                tag,
            )
        return known[1], known[2]


CALLBACK_AUTH = web.AppKey("metastudio_callback_auth", CallbackAuth)

# --- live-event callbacks -------------------------------------------------------------------------------

_OUTCOME_BODIES: dict[str, bytes] = {}


def _ok(outcome: str) -> web.Response:
    body = _OUTCOME_BODIES.get(outcome)
    if body is None:
        body = _OUTCOME_BODIES[outcome] = orjson.dumps({"result": "ok", "outcome": outcome})
    return web.Response(body=body, content_type="application/json")


@routes.post(CALLBACK_PATH)
@routes.post(CALLBACK_PATH + "/{profile}")
@describe(
    "MetaStudio live event callback (the vendor calls this)",
    auth="vendor",
    tag="vendor callbacks",
    errors=(400, 401, 403),
)
async def live_events_route(request: web.Request) -> web.Response:
    return await live_events(request.app, request, request.match_info)


async def live_events(app: web.Application, request: BaseRequest, params: Mapping[str, str]) -> web.Response:
    """The handler proper (the main application's route above, and the public listener, call it)."""
    metrics = app[METRICS]
    name = params.get("profile", DEFAULT_PROFILE)
    auth = app[CALLBACK_AUTH]
    profile = auth.profiles.get(name)
    if profile is None:
        metrics.callbacks_rejected.labels("unknown_profile").inc()
        raise ApiError(404, "CALLBACK_PROFILE_UNKNOWN", f"no callback profile named {name!r}")
    try:
        authenticated = auth.authenticate(profile, request, clock.time_ms())
        outcome, decoded = await app[CALLBACK_RECEIVER].receive(
            NAME, authenticated, lambda: bounded_body(app, request)
        )
    except CallbackRejected as exc:
        metrics.callbacks_rejected.labels(exc.reason.value).inc()
        raise ApiError(401, exc.error_code, str(exc)) from None
    except CallbackMalformed as exc:
        metrics.callbacks_rejected.labels("malformed_body").inc()
        raise ApiError(400, "CALLBACK_MALFORMED", str(exc)) from None
    except NotManaged as exc:
        metrics.callbacks_rejected.labels("not_managed").inc()
        raise ApiError(404, "CALLBACK_NOT_MANAGED", str(exc)) from None
    except OSError:
        raise ApiError(503, "CALLBACK_NOT_DURABLE", "cannot store the callback now; retry later") from None
    metrics.callback_received(decoded.counter, outcome)
    if app[SETTINGS].logging.access_log_accepted_callbacks:
        structlog.contextvars.bind_contextvars(room_id=decoded.room_id, job_id=decoded.job_id)
    else:
        # Recorded in the room's event stream already: no access line (logging.access_log_accepted_callbacks).
        request[NO_ACCESS_LINE] = True
    return _ok(outcome)


# --- CALLBACK-mode interaction rules ----------------------------------------------------------------------


class _CallbackEvent(BaseModel):
    timestamp: int = 0
    type: int
    content: dict[str, Any] | str | None = None


class InteractionCallback(BaseModel):
    model_config = ConfigDict(extra="ignore")

    room_id: str = Field(..., min_length=1, max_length=128)
    job_id: str = Field(..., min_length=1, max_length=128)
    rule_index: str | None = Field(None, max_length=64)
    event: _CallbackEvent


def _validation_error(exc: ValidationError, code: str) -> ApiError:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return ApiError(400, code, f"{where}: {first['msg']}")


def _event(body: InteractionCallback) -> Event:
    content: Any = body.event.content
    if isinstance(content, str):
        try:
            content = orjson.loads(content)
        except orjson.JSONDecodeError:
            content = {"content": content}
    content = content if isinstance(content, dict) else {}
    user = content.get("user") if isinstance(content.get("user"), dict) else {}
    gift = content.get("gift") if isinstance(content.get("gift"), dict) else {}
    return Event(
        type=body.event.type,
        user_id=str(user.get("userId", "")),
        user_name=str(user.get("name", "")),
        text=str(content.get("content") or ""),
        gift_name=str(gift.get("giftName", "")),
        gift_num=count_of(gift.get("giftNum")),
        at=(body.event.timestamp / 1000) if body.event.timestamp else clock.time(),
    )


@routes.post(INTERACTION_PREFIX + "{token}")
@describe(
    "MetaStudio interaction CALLBACK (the vendor calls this)",
    body=InteractionCallback,
    auth="vendor",
    tag="vendor callbacks",
    errors=(400, 401),
)
async def interaction_callback_route(request: web.Request) -> web.Response:
    return await interaction_callback(request.app, request, request.match_info)


async def interaction_callback(
    app: web.Application, request: BaseRequest, params: Mapping[str, str]
) -> web.Response:
    """The handler proper (the main application's route above, and the public listener, call it)."""
    expected = app[SETTINGS].metastudio.interaction_token.get_secret_value()
    if not expected:
        raise ApiError(404, "INTERACTION_CALLBACK_OFF", "metastudio.interaction_token is not set")
    if not hmac.compare_digest(params["token"].encode("utf-8", "surrogateescape"), expected.encode()):
        raise ApiError(401, "INTERACTION_BAD_TOKEN", "the token in the URL is not this daemon's")
    try:
        body = InteractionCallback.model_validate_json(await bounded_body(app, request))
    except ValidationError as exc:
        raise _validation_error(exc, "INTERACTION_BAD_BODY") from None
    try:
        check_room_id(body.room_id)
    except InvalidKeyPart:
        raise ApiError(
            404, "INTERACTION_NOT_MANAGED", "the room or job is not one this daemon runs"
        ) from None
    state = await app[ROOM_STORE].state(body.room_id)
    if state is None or state.get("job_id") != body.job_id:
        raise ApiError(404, "INTERACTION_NOT_MANAGED", "the room or job is not one this daemon runs")
    queued, reply_id, reason = await app[AUDIENCE].answer_vendor_rule(
        body.room_id,
        body.job_id,
        _event(body),
        body.rule_index,
        product=str(state.get("product_title") or ""),
    )
    return web.json_response({"queued": queued, "reply_id": reply_id, "reason": reason})


# --- the third-party LLM callback -------------------------------------------------------------------------


class _Message(BaseModel):
    content: str = Field(..., min_length=1, max_length=4096)


class LlmRequest(BaseModel):
    messages: list[_Message] = Field(..., min_length=1)
    app_id: str
    user: str
    session_id: str
    is_stream: bool = False


def _sentences(text: str) -> list[str]:
    parts = [p for p in re.split(r"(?<=[。！？!?.；;])", text) if p]
    return parts or [text]


def _chunk(answer_id: str, content: str) -> dict[str, Any]:
    return {
        "id": answer_id,
        "created": int(clock.time()),
        "choices": [{"message": {"content": content}, "index": 0}],
    }


@routes.post(LLM_PATH)
@describe(
    "MetaStudio third-party LLM (the vendor calls this)",
    body=LlmRequest,
    auth="vendor",
    tag="vendor callbacks",
    errors=(400, 401),
)
async def llm_route(request: web.Request) -> web.StreamResponse:
    return await llm(request.app, request, request.match_info)


async def llm(app: web.Application, request: BaseRequest, params: Mapping[str, str]) -> web.StreamResponse:
    """The handler proper (the main application's route above, and the public listener, call it)."""
    settings = app[SETTINGS]
    key = settings.metastudio.llm_app_key.get_secret_value()
    if not key or settings.metastudio.llm_public_url is None:
        raise ApiError(
            404, "LLM_ENDPOINT_OFF", "metastudio.llm_public_url and metastudio.llm_app_key are not set"
        )
    try:
        verified = verify_signature(
            url=str(settings.metastudio.llm_public_url),
            keys=[key],
            secret=request.query.get("secret"),
            time_text=request.query.get("time_stamp"),
            now_ms=clock.time_ms(),
            policy=VerifyPolicy(max_skew_s=settings.callbacks.max_skew_s),
        )
    except CallbackRejected as exc:
        raise ApiError(401, exc.error_code.replace("CALLBACK_", "LLM_"), str(exc)) from None
    seen = keys.llm_seen(verified.signature)
    if not await app[REDIS].set(seen, "1", nx=True, px=clock.real_ms(2 * settings.callbacks.max_skew_s + 60)):
        raise ApiError(401, "LLM_REPLAY", "signature already used")
    try:
        body = LlmRequest.model_validate_json(await bounded_body(app, request))
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        raise ApiError(
            400, "LLM_BAD_REQUEST", f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
        ) from None
    answer = app[AUDIENCE].answer_question(body.messages[-1].content, user=body.user)
    answer_id = uuid.uuid4().hex
    if not body.is_stream:
        return web.Response(
            body=orjson.dumps(_chunk(answer_id, answer)), content_type="application/json", charset="UTF-8"
        )
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream;charset=UTF-8", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    for part in _sentences(answer):
        await response.write(b"data:" + orjson.dumps(_chunk(answer_id, part)) + b"\n\n")
    await response.write(b"data:[DONE]\n\n")
    await response.write_eof()
    return response


#: The public listener's routes of this provider: exact paths, and prefixes followed by one path segment
#: (handed to the handler under the parameter named).
PUBLIC_ROUTES = [
    PublicRoute(CALLBACK_PATH, live_events),
    PublicRoute(CALLBACK_PATH + "/", live_events, param="profile"),
    PublicRoute(INTERACTION_PREFIX, interaction_callback, param="token"),
    PublicRoute(LLM_PATH, llm),
]


def setup(app: web.Application) -> None:
    """Add the routes and what they need (the composition root calls this)."""
    from orchestrator.providers.metastudio.profiles import callback_profiles

    settings = app[SETTINGS]
    app[CALLBACK_AUTH] = CallbackAuth(
        callback_profiles(settings),
        VerifyPolicy(max_skew_s=settings.callbacks.max_skew_s, strict=settings.metastudio.callback_strict),
    )
    app.add_routes(routes)
