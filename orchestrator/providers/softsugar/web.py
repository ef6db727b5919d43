"""SoftSugar's route: its status callbacks (003 "Live Streaming Status Callback Parameters").

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
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping

import orjson
import structlog
from aiohttp import web
from aiohttp.web_request import BaseRequest

from orchestrator import clock
from orchestrator.appkeys import CALLBACK_RECEIVER, METRICS, SETTINGS
from orchestrator.callbacks.errors import CallbackMalformed, CallbackRejected, NotManaged, RejectReason
from orchestrator.callbacks.receiver import Authenticated
from orchestrator.web.errors import ApiError
from orchestrator.web.middlewares import NO_ACCESS_LINE, bounded_body
from orchestrator.web.public import PublicRoute

NAME = "softsugar"
CALLBACK_PREFIX = "/callbacks/softsugar/"

routes = web.RouteTableDef()


@routes.post(CALLBACK_PREFIX + "{token}")
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
        raise ApiError(404, "CALLBACK_NOT_MANAGED", str(exc)) from None
    except OSError:
        raise ApiError(503, "CALLBACK_NOT_DURABLE", "cannot store the callback now; retry later") from None
    metrics.callback_received(decoded.counter, outcome)
    if not settings.logging.access_log_accepted_callbacks:
        request[NO_ACCESS_LINE] = True
    return web.Response(
        body=orjson.dumps({"result": "ok", "outcome": outcome}), content_type="application/json"
    )


def _allowed(remote: str | None, allow: list[str]) -> bool:
    """Whether the sender's address is in one of the allowed networks (none configured: any)."""
    if not allow:
        return True
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in allow)


PUBLIC_ROUTES = [PublicRoute(CALLBACK_PREFIX, status_callback, param="token")]


def setup(app: web.Application) -> None:
    """Add the route (the composition root calls this)."""
    app.add_routes(routes)


log = structlog.get_logger(__name__)
