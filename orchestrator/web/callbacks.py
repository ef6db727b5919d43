"""``POST /callbacks/metastudio/live-events[/{profile}]``: MetaStudio's live-event callbacks.

A thin shell around :class:`orchestrator.callbacks.receiver.CallbackReceiver`: pick the profile, take the
credentials from where its auth type puts them (MSS_A: query ``hwSecret``/``hwTime``; MSS_A_HEAD: headers
``x-hw-mss-secret``/``x-hw-mss-time``), and map outcomes and errors to HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
import structlog
from aiohttp import web
from aiohttp.web_request import BaseRequest

from orchestrator.appkeys import CALLBACK_PROFILES, CALLBACK_RECEIVER, METRICS, SETTINGS
from orchestrator.callbacks.profiles import CALLBACK_PATH, DEFAULT_PROFILE, ROOM_QUERY
from orchestrator.callbacks.receiver import CallbackMalformed, CallbackRejected, Credentials, NotManaged
from orchestrator.providers.metastudio import callbacks as mss
from orchestrator.settings import CallbackAuthType
from orchestrator.web.errors import ApiError
from orchestrator.web.middlewares import NO_ACCESS_LINE, bounded_body

routes = web.RouteTableDef()

_OUTCOME_BODIES: dict[str, bytes] = {}


def _ok(outcome: str) -> web.Response:
    body = _OUTCOME_BODIES.get(outcome)
    if body is None:
        body = _OUTCOME_BODIES[outcome] = orjson.dumps({"result": "ok", "outcome": outcome})
    return web.Response(body=body, content_type="application/json")


def _credentials(request: BaseRequest, auth_type: CallbackAuthType) -> Credentials:
    room_id = request.query.get(ROOM_QUERY)
    if auth_type is CallbackAuthType.MSS_A_HEAD:
        return Credentials(
            request.headers.get(mss.HEADER_SECRET), request.headers.get(mss.HEADER_TIME), room_id
        )
    return Credentials(request.query.get(mss.QUERY_SECRET), request.query.get(mss.QUERY_TIME), room_id)


@routes.post(CALLBACK_PATH)
@routes.post(CALLBACK_PATH + "/{profile}")
async def live_events_route(request: web.Request) -> web.Response:
    return await live_events(request.app, request, request.match_info)


async def live_events(app: web.Application, request: BaseRequest, params: Mapping[str, str]) -> web.Response:
    """The handler proper (the main application's route above, and the public listener, call it)."""
    metrics = app[METRICS]
    name = params.get("profile", DEFAULT_PROFILE)
    profile = app[CALLBACK_PROFILES].get(name)
    if profile is None:
        metrics.callbacks_rejected.labels("unknown_profile").inc()
        raise ApiError(404, "CALLBACK_PROFILE_UNKNOWN", f"no callback profile named {name!r}")
    try:
        outcome, parsed = await app[CALLBACK_RECEIVER].receive(
            profile, _credentials(request, profile.auth_type), lambda: bounded_body(app, request)
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
    metrics.callback_received(parsed.event_type, outcome)
    if app[SETTINGS].logging.access_log_accepted_callbacks:
        structlog.contextvars.bind_contextvars(room_id=parsed.room_id, job_id=parsed.job_id)
    else:
        # Recorded in the room's event stream already: no access line (logging.access_log_accepted_callbacks).
        request[NO_ACCESS_LINE] = True
    return _ok(outcome)
