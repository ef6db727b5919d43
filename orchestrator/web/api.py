"""The read API behind the admin bearer token: rooms, a room's state, a room's events.

Every ``/api`` request needs ``Authorization: Bearer <admin.token>``; with no token configured the API
refuses everyone (401), it is never open by default.
"""

from __future__ import annotations

import fnmatch
import hmac
import re
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from orchestrator import clock
from orchestrator.appkeys import METRICS, ROOM_CONFIGS, ROOM_STORE, SETTINGS
from orchestrator.scheduling.rooms import field_problems
from orchestrator.scheduling.schedules import local_iso, outlook
from orchestrator.store.keys import InvalidKeyPart, check_room_id
from orchestrator.web.errors import ApiError, invalid_fields
from orchestrator.web.openapi import SPEC, Query, describe

M = TypeVar("M", bound=BaseModel)

routes = web.RouteTableDef()

_STREAM_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")
MAX_EVENTS = 1000
ACTUAL_FIELDS = ("job_id", "job_state", "scene", "paragraph_seq", "paragraph_title", "last_event_at")


#: Who is asking: ``admin`` (the admin token), an operator's name (``admin.operators``), set by
#: :func:`require_admin` or by the console's session check (:func:`orchestrator.web.console.authenticate`).
OPERATOR = web.RequestKey("operator", str)


def require_admin(request: web.Request) -> None:
    """Raises ApiError 401 unless the request carries the admin bearer token, an operator's, or a console
    session (checked, with its CSRF token, before the handler); sets :data:`OPERATOR`."""
    if request.get(OPERATOR) is not None:
        return
    admin = request.app[SETTINGS].admin
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        # A header that is not UTF-8 arrives with surrogates: it cannot match, and must not raise.
        given = token.encode("utf-8", "surrogateescape")
        expected = admin.token.get_secret_value()
        if expected and hmac.compare_digest(given, expected.encode()):
            request[OPERATOR] = "admin"
            return
        for operator in admin.operators:
            if hmac.compare_digest(given, operator.token.get_secret_value().encode()):
                request[OPERATOR] = operator.name
                return
    raise ApiError(
        401,
        "UNAUTHORIZED",
        "a valid admin bearer token (or console session) is required",
        headers={"WWW-Authenticate": 'Bearer realm="orchestrator"'},
    )


def require_ingest(request: web.Request, room_id: str) -> None:
    """The admin token, or a bridge's token whose rooms match ``room_id``; ApiError 401/403 otherwise."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        given = token.encode("utf-8", "surrogateescape")
        for bridge in request.app[SETTINGS].admin.bridges:
            if hmac.compare_digest(given, bridge.token.get_secret_value().encode()):
                if not any(fnmatch.fnmatchcase(room_id, pattern) for pattern in bridge.rooms):
                    raise ApiError(
                        403, "ROOM_NOT_ALLOWED", f"bridge {bridge.name!r} may not post to room {room_id!r}"
                    )
                return
    require_admin(request)


_EVENTS_PATH = re.compile(r"^/api/rooms/([^/]+)/events$")


def require_credentials(request: web.Request) -> None:
    """What an ``/api`` request must carry before its body is read: a bridge's token may post events to its
    rooms; everything else needs the admin token. ApiError 401/403 otherwise."""
    match = _EVENTS_PATH.match(request.path)
    if match is not None and request.method == "POST":
        require_ingest(request, match.group(1))
    else:
        require_admin(request)


async def read_json(request: web.Request, *, if_empty: Any = None) -> Any:
    """The request's JSON body (``if_empty`` for an empty one, when given); ApiError 400 ``BAD_JSON``."""
    raw = await request.read()
    if if_empty is not None and not raw.strip():
        return if_empty
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "BAD_JSON", "the body must be a JSON document") from None


async def read_model(request: web.Request, model: type[M], error_code: str, *, if_empty: Any = None) -> M:
    """The request's JSON body as ``model``: 400 ``BAD_JSON``, or 422 ``error_code`` naming every invalid
    field."""
    try:
        return model.model_validate(await read_json(request, if_empty=if_empty))
    except ValidationError as exc:
        raise invalid_fields(error_code, field_problems(exc)) from None


def int_query(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    """The query parameter ``name`` as an integer from ``low`` to ``high`` (``default`` when absent);
    ApiError 400 ``BAD_QUERY`` otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    # isascii: "²".isdigit() is true, and int("²") raises (the fuzz test found it).
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ApiError(400, "BAD_QUERY", f"{name} must be an integer from {low} to {high}")
    return int(raw)


def room_id_param(request: web.Request) -> str:
    try:
        return check_room_id(request.match_info["room_id"])
    except InvalidKeyPart as exc:
        raise ApiError(400, "BAD_ROOM_ID", str(exc)) from None


async def managed_room_id(request: web.Request) -> str:
    """The path's room id, checked and managed here; ApiError 400 or 404 otherwise."""
    room_id = room_id_param(request)
    if not await request.app[ROOM_STORE].is_managed(room_id):
        raise ApiError(404, "ROOM_NOT_FOUND", f"room {room_id!r} is not managed here")
    return room_id


@routes.get("/api/rooms")
@describe("Every managed room: desired and actual state")
async def list_rooms(request: web.Request) -> web.Response:
    """Every managed room: desired state (schedule, pause) and next boundary beside the actual state."""
    require_admin(request)
    store, configs = request.app[ROOM_STORE], request.app[ROOM_CONFIGS]
    now = clock.now()
    rooms = []
    for room_id in await store.rooms():
        state = await store.state(room_id) or {}
        config = await configs.get(room_id)
        desired = outlook(config.schedule, now) if config is not None else None
        boundary = desired.next_boundary if desired is not None else None
        rooms.append(
            {
                "room_id": room_id,
                "paused": config.paused if config is not None else None,
                "desired": None if desired is None else ("live" if desired.live else "off"),
                "next_boundary": boundary.isoformat() if boundary else None,
                "next_boundary_local": local_iso(boundary, config.schedule.timezone) if config else None,
                "timezone": config.schedule.timezone if config else None,
                **{k: state.get(k) for k in ACTUAL_FIELDS},
                "rtmp": state.get("rtmp", {}),
            }
        )
    return web.json_response({"rooms": rooms})


@routes.get("/api/rooms/{room_id}")
@describe("A room's state (job, paragraph, links, counters, alerts)")
async def room_state(request: web.Request) -> web.Response:
    require_admin(request)
    room_id = room_id_param(request)
    state = await request.app[ROOM_STORE].state(room_id)
    if state is None:
        raise ApiError(404, "ROOM_NOT_FOUND", f"room {room_id!r} is not managed here")
    return web.json_response({"room_id": room_id, **state})


@routes.get("/api/rooms/{room_id}/events")
@describe(
    "A room's event record, oldest first",
    query=(
        Query("since", "after this entry id (or - for the start)"),
        Query("limit", "at most this many (1-1000, default 100)", "integer"),
        Query("last", "instead: the latest this many (1-1000), oldest first", "integer"),
    ),
)
async def room_events(request: web.Request) -> web.Response:
    require_admin(request)
    room_id = room_id_param(request)
    since = request.query.get("since", "-")
    if since != "-" and not _STREAM_ID.fullmatch(since):
        raise ApiError(400, "BAD_QUERY", "since must be an event id (1700000000000-0) or milliseconds")
    limit = int_query(request, "limit", 100, 1, MAX_EVENTS)
    last = int_query(request, "last", None, 1, MAX_EVENTS)
    await managed_room_id(request)
    store = request.app[ROOM_STORE]
    if last is not None:
        events = await store.latest_events(room_id, last)
    else:
        events = await store.events(room_id, since=since, limit=limit or 100)
    return web.json_response({"events": events, "next": events[-1]["id"] if events else since})


@routes.get("/openapi.json")
@describe("This API's description (OpenAPI 3.1)", tag="meta")
async def openapi_document(request: web.Request) -> web.Response:
    require_admin(request)
    return web.Response(body=request.app[SPEC], content_type="application/json")


@routes.get("/metrics")
@describe("Prometheus metrics", auth="none", tag="meta", content_type="text/plain")
async def metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    await metrics.rooms.refresh()  # the rooms' state, read now if the last reading is old
    return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8")
