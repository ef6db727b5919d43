"""The operator console: its pages, its login, and the read-outs only it needs (room tiles, live streams,
activity, alerts, the daemon).

Served on the admin listener only (the public listener routes vendor paths alone). The page is static --
``orchestrator/web/console_assets`` -- and steers the daemon through the same ``/api`` every other client
uses; what it adds is a way in for a browser:

* **login**: ``POST /console/login`` with the admin token or an operator's (``admin.operators``), or a
  one-time link (``GET /console/login?once=...``, made by ``POST /api/console/links``), opens a session in
  Redis (every replica knows it) and sets an HttpOnly, SameSite=Strict cookie that expires with it;
* **CSRF**: a request that a session cookie authenticates and that changes something must carry the
  session's CSRF token in ``X-CSRF-Token`` (the page reads it from ``GET /console/session``), and a request
  from a browser on another origin is refused whatever it carries (403);
* **live updates**: server-sent events from the rooms' event streams -- ``/api/stream/rooms`` (tiles of the
  rooms that changed) and ``/api/rooms/{id}/events/stream`` (a room's timeline), at most
  ``admin.console.max_streams`` at once, each on a Redis connection of its own (a blocking read must not
  hold one of the shared pool's).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import platform
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import structlog
from aiohttp import web
from pydantic import BaseModel, Field

from orchestrator import __version__, clock
from orchestrator.appkeys import (
    AUDIENCE,
    CONSOLE,
    LIFECYCLE,
    PROVIDERS,
    READINESS_CHECKS,
    REDIS,
    ROOM_CONFIGS,
    ROOM_STORE,
    SETTINGS,
)
from orchestrator.scheduling.rooms import ManagedRoom
from orchestrator.scheduling.schedules import local_iso, outlook, upcoming_windows
from orchestrator.store import keys
from orchestrator.store.console import Session
from orchestrator.store.redis import chunks, create_redis, xread_many
from orchestrator.store.rooms import decode_entry
from orchestrator.web.admin import room_of
from orchestrator.web.api import OPERATOR, int_query, managed_room_id, read_model, require_admin
from orchestrator.web.errors import ApiError
from orchestrator.web.openapi import Query, describe

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

ASSETS = Path(__file__).parent / "console_assets"
COOKIE = "orch_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION = web.RequestKey("console_session", Session)
LINK_TTL_S = 600
#: A page's own rules: nothing from elsewhere, no inline script, never framed.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


# -- sessions ---------------------------------------------------------------------------------------


async def authenticate(request: web.Request) -> None:
    """Resolve a session cookie (the middleware calls this for ``/api`` and ``/console`` requests without an
    Authorization header): sets :data:`OPERATOR` for a valid session; raises ApiError 403 when the request
    changes something without the session's CSRF token, or comes from another origin."""
    sid = request.cookies.get(COOKIE, "")
    console = request.app.get(CONSOLE)
    if not sid or console is None:
        return
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise ApiError(403, "CROSS_ORIGIN", "a console session is not accepted from another origin")
    session = await console.session(sid)
    if session is None:
        return
    if request.method not in SAFE_METHODS:
        given = request.headers.get(CSRF_HEADER, "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, session.csrf.encode()):
            raise ApiError(
                403, "CSRF_FAILED", f"a change made with a console session needs its {CSRF_HEADER} header"
            )
    request[SESSION] = session
    request[OPERATOR] = session.operator


class _FailedLogins:
    """Failed logins per client address in the current minute (in memory: a guesser hits one replica)."""

    def __init__(self) -> None:
        self._minute = 0
        self._by_client: dict[str, int] = {}

    def over(self, client: str, limit: int) -> bool:
        self._roll()
        return self._by_client.get(client, 0) >= limit

    def add(self, client: str) -> None:
        self._roll()
        self._by_client[client] = self._by_client.get(client, 0) + 1

    def _roll(self) -> None:
        minute = int(time.monotonic() // 60)
        if minute != self._minute:
            self._minute, self._by_client = minute, {}


FAILED_LOGINS = web.AppKey("console_failed_logins", _FailedLogins)


def operator_for(request: web.Request, token: str) -> str | None:
    """Who ``token`` logs in: ``admin`` for the admin token, an operator's name for theirs."""
    admin = request.app[SETTINGS].admin
    given = token.encode("utf-8", "surrogateescape")
    expected = admin.token.get_secret_value()
    if expected and hmac.compare_digest(given, expected.encode()):
        return "admin"
    for operator in admin.operators:
        if hmac.compare_digest(given, operator.token.get_secret_value().encode()):
            return operator.name
    return None


class Login(BaseModel):
    token: str = Field(..., min_length=1, max_length=512, description="The admin token or an operator's.")


class LoginLink(BaseModel):
    operator: str | None = Field(
        None, description="Whom the link logs in (an operator's name); the caller when omitted."
    )


async def _open_session(request: web.Request, operator: str, response: web.StreamResponse) -> Session:
    settings = request.app[SETTINGS].admin.console
    sid, session = await request.app[CONSOLE].open_session(operator, settings.session_ttl_s)
    response.set_cookie(
        COOKIE,
        sid,
        max_age=settings.session_ttl_s,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=settings.secure_cookie,
    )
    log.info("console login", operator=operator)
    return session


def _session_body(session: Session) -> dict[str, Any]:
    return {"operator": session.operator, "csrf": session.csrf, "expires_ms": session.expires_ms}


@routes.post("/console/login")
@describe(
    "Log in to the console (sets the session cookie)",
    body=Login,
    auth="none",
    tag="console",
    errors=(401, 429),
)
async def login(request: web.Request) -> web.Response:
    failed, client = request.app[FAILED_LOGINS], request.remote or "?"
    limit = request.app[SETTINGS].admin.console.login_attempts_per_minute
    if failed.over(client, limit):
        raise ApiError(
            429, "TOO_MANY_LOGINS", "too many failed logins; wait a minute", headers={"Retry-After": "60"}
        )
    body = await read_model(request, Login, "LOGIN_INVALID")
    operator = operator_for(request, body.token)
    if operator is None:
        failed.add(client)
        raise ApiError(401, "LOGIN_FAILED", "that token opens nothing here")
    response = web.json_response({})
    session = await _open_session(request, operator, response)
    response.body = orjson.dumps(_session_body(session))
    return response


@routes.get("/console/login")
@describe(
    "Log in with a one-time link, then go to the console",
    auth="none",
    tag="console",
    content_type="text/html",
    status=302,
    query=(Query("once", "the one-time code", required=True),),
)
async def login_link(request: web.Request) -> web.StreamResponse:
    """A one-time link: log in and go to the console (once; a used or expired link says so)."""
    operator = await request.app[CONSOLE].take_link(request.query.get("once", ""))
    if operator is None:
        return _redirect("/console/#/login?expired=1")
    response = _redirect("/console/")
    await _open_session(request, operator, response)
    return response


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


@routes.post("/console/logout")
@describe("Log out (ends the session, clears the cookie)", auth="session", tag="console")
async def logout(request: web.Request) -> web.Response:
    sid = request.cookies.get(COOKIE, "")
    if sid and request.get(SESSION) is not None:
        await request.app[CONSOLE].close_session(sid)
    response = web.json_response({"logged_out": True})
    response.del_cookie(COOKIE, path="/")
    return response


@routes.get("/console/session")
@describe("The console session: operator, CSRF token, expiry", auth="session", tag="console")
async def session_info(request: web.Request) -> web.Response:
    session = request.get(SESSION)
    if session is None:
        raise ApiError(401, "UNAUTHORIZED", "log in first (POST /console/login)")
    return web.json_response(_session_body(session))


@routes.post("/api/console/links")
@describe(
    "Make a one-time console login link (valid ten minutes)",
    body=LoginLink,
    status=201,
    tag="console",
    errors=(422,),
)
async def new_login_link(request: web.Request) -> web.Response:
    """A one-time console login link (``orchestrator demo`` prints one; ``orchestrator console-link``)."""
    require_admin(request)
    body = await read_model(request, LoginLink, "LINK_INVALID", if_empty={})
    operator = body.operator or request[OPERATOR]
    known = {"admin", *(o.name for o in request.app[SETTINGS].admin.operators)}
    if operator not in known:
        raise ApiError(422, "LINK_INVALID", f"no operator named {operator!r}")
    code = await request.app[CONSOLE].new_link(operator, LINK_TTL_S)
    return web.json_response(
        {
            "url": f"{request.scheme}://{request.host}/console/login?once={code}",
            "operator": operator,
            "expires_in_s": LINK_TTL_S,
        },
        status=201,
    )


# -- pages ------------------------------------------------------------------------------------------


@routes.get("/")
@describe("Redirect to the console", auth="none", tag="console", content_type="text/html", status=302)
async def root(request: web.Request) -> web.StreamResponse:
    return _redirect("/console/")


@routes.get("/console")
@describe("Redirect to the console", auth="none", tag="console", content_type="text/html", status=302)
async def console_bare(request: web.Request) -> web.StreamResponse:
    return _redirect("/console/")


@routes.get("/console/")
@describe("The console page", auth="none", tag="console", content_type="text/html")
async def page(request: web.Request) -> web.StreamResponse:
    return _asset("index.html")


@routes.get("/console/assets/{name}")
@describe(
    "A console file (script, style)", auth="none", tag="console", content_type="text/plain", errors=(404,)
)
async def asset(request: web.Request) -> web.StreamResponse:
    return _asset(request.match_info["name"])


def _asset(name: str) -> web.StreamResponse:
    path = ASSETS / name
    content_type = _CONTENT_TYPES.get(path.suffix)
    if "/" in name or name.startswith(".") or content_type is None or not path.is_file():
        raise ApiError(404, "NOT_FOUND", "no such console file")
    return web.Response(
        body=path.read_bytes(), content_type=content_type, charset="utf-8", headers=PAGE_HEADERS
    )


# -- read-outs --------------------------------------------------------------------------------------


def tile(room_id: str, state: dict[str, Any], config: ManagedRoom | None, now: datetime) -> dict[str, Any]:
    """What a room's tile shows (pure): its status, vendor, what plays, links, viewers, next boundary in
    its time zone, open alerts.

    Status: ``live`` (the job plays), ``starting`` (a job is being set up, or the schedule wants one
    and none runs yet), ``failing`` (an alert is open), ``paused`` (automation off), ``off``.
    """
    job_state = state.get("job_state")
    alerts = sorted(state.get("open_alerts", []))
    desired = outlook(config.schedule, now) if config is not None else None
    paused = bool(config.paused) if config is not None else False
    if job_state == "PROCESSING":
        status = "live"
    elif alerts:
        status = "failing"
    elif paused:
        status = "paused"
    elif job_state == "WAITING" or (desired is not None and desired.live):
        status = "starting"
    else:
        status = "off"
    timezone = config.schedule.timezone if config is not None else "UTC"
    boundary = desired.next_boundary if desired is not None else None
    links = {url: link["state"] for url, link in state.get("rtmp", {}).items()}
    return {
        "room_id": room_id,
        "name": config.name if config is not None else None,
        "vendor": config.provider if config is not None else None,
        "status": status,
        "paused": paused,
        "desired": None if desired is None else ("live" if desired.live else "off"),
        "job_id": state.get("job_id"),
        "job_state": job_state,
        "paragraph": state.get("paragraph_title"),
        "product": state.get("product_title"),
        "links": links,
        "viewers": _int(state.get("viewers")),
        "timezone": timezone,
        "next_boundary": boundary.isoformat() if boundary else None,
        "next_boundary_local": local_iso(boundary, timezone),
        "open_alerts": alerts,
        "last_event_at": state.get("last_event_at"),
        "since_ms": _int(state.get("job_state_at")),
    }


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


async def _tiles(app: web.Application, room_ids: list[str]) -> list[dict[str, Any]]:
    states = await app[ROOM_STORE].states(room_ids)
    now = clock.now()
    configs = app[ROOM_CONFIGS]
    tiles = []
    for room_id in room_ids:
        if room_id in states:
            tiles.append(tile(room_id, states[room_id], await configs.get(room_id), now))
    return tiles


def _matches(tile_: dict[str, Any], query: str, status: str) -> bool:
    if status and tile_["status"] != status:
        return False
    if not query:
        return True
    text = " ".join(str(tile_.get(k) or "") for k in ("room_id", "name", "vendor", "paragraph", "product"))
    return query.lower() in text.lower()


@routes.get("/api/overview")
@describe(
    "Every room's tile: status, vendor, paragraph, product, links, viewers, next boundary, alerts",
    tag="rooms",
    query=(
        Query("q", "search in id, name, vendor, paragraph and product"),
        Query("status", "live, starting, failing, paused or off"),
    ),
)
async def overview(request: web.Request) -> web.Response:
    """Every managed room's tile (``q``: search in id, name, vendor, paragraph and product; ``status``)."""
    require_admin(request)
    query, status = request.query.get("q", "")[:200], request.query.get("status", "")
    tiles = await _tiles(request.app, await request.app[ROOM_STORE].rooms())
    counts: dict[str, int] = {}
    for t in tiles:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    return web.json_response(
        {"rooms": [t for t in tiles if _matches(t, query, status)], "counts": counts, "total": len(tiles)}
    )


@routes.get("/api/rooms/{room_id}/windows")
@describe(
    "The room's next live windows, in UTC and its time zone",
    query=(Query("count", "how many (1-20, default 5)", "integer"),),
)
async def windows(request: web.Request) -> web.Response:
    """The room's next live windows (``count``, at most 20), in UTC and in its time zone."""
    require_admin(request)
    config = await room_of(request)
    room_id = config.room_id
    count = int_query(request, "count", 5, 1, 20) or 5
    tz = config.schedule.timezone
    found = upcoming_windows(config.schedule, clock.now(), count)
    return web.json_response(
        {
            "room_id": room_id,
            "timezone": tz,
            "windows": [
                {
                    "start": start.isoformat() if start else None,
                    "end": end.isoformat() if end else None,
                    "start_local": local_iso(start, tz),
                    "end_local": local_iso(end, tz),
                }
                for start, end in found
            ],
        }
    )


@routes.get("/api/rooms/{room_id}/activity")
@describe(
    "Viewers, comments and replies per minute (the console's charts)",
    query=(Query("minutes", "how far back (1-1440, default 180)", "integer"),),
)
async def activity(request: web.Request) -> web.Response:
    """Viewers, comments and replies per sampling interval over the last ``minutes`` (at most 1,440)."""
    require_admin(request)
    room_id = await managed_room_id(request)
    minutes = int_query(request, "minutes", 180, 1, 1440) or 180
    since_ms = clock.time_ms() - minutes * 60_000
    samples = await request.app[CONSOLE].activity(room_id, since_ms)
    points = []
    for before, after in itertools.pairwise(samples):
        minutes = max((after["at_ms"] - before["at_ms"]) / 60_000, 1e-9)
        points.append(
            {
                "at_ms": after["at_ms"],
                "viewers": after["viewers"],
                "comments_per_min": _rate(before["comments"], after["comments"], minutes),
                "replies_per_min": _rate(before["replies"], after["replies"], minutes),
            }
        )
    interval = request.app[SETTINGS].admin.console.activity_interval_s
    return web.json_response({"room_id": room_id, "interval_s": interval, "points": points})


def _rate(before: int | None, after: int | None, minutes: float) -> float | None:
    if after is None:
        return None
    return round(max(0, after - (before or 0)) / minutes, 2)


@routes.get("/api/alerts")
@describe(
    "Open alerts of every room, and the latest alert records",
    tag="alerts",
    query=(Query("limit", "records per room (1-50, default 10)", "integer"),),
)
async def alerts(request: web.Request) -> web.Response:
    """Open alerts of every room, and the latest alert records (``limit`` per room, at most 50)."""
    require_admin(request)
    limit = int_query(request, "limit", 10, 1, 50) or 10
    store, redis = request.app[ROOM_STORE], request.app[REDIS]
    room_ids = await store.rooms()
    states = await store.states(room_ids)
    open_alerts = [
        {"room_id": room_id, "alert": kind, "since_s": state.get("alerts_since", {}).get(kind)}
        for room_id, state in states.items()
        for kind in state.get("open_alerts", [])
    ]
    recent: list[dict[str, Any]] = []
    pipe = redis.pipeline(transaction=False)
    for room_id in room_ids:
        pipe.xrevrange(keys.room_events(room_id), count=200)
    for room_id, entries in zip(room_ids, await pipe.execute(), strict=True):
        alert_entries = [(i, f) for i, f in entries if f.get(b"kind") == b"alert"][:limit]
        for entry_id, fields in alert_entries:
            entry = {k.decode(): v.decode() for k, v in fields.items()}
            with contextlib.suppress(ValueError):
                entry["text"] = json.loads(entry.pop("message", "{}")).get("text", "")
            recent.append({"room_id": room_id, "id": entry_id.decode(), **entry})
    recent.sort(key=lambda e: e["id"], reverse=True)
    return web.json_response({"open": open_alerts, "recent": recent})


@routes.get("/api/daemon")
@describe("Replicas alive and the rooms each owns, Redis, vendor credentials, versions", tag="daemon")
async def daemon(request: web.Request) -> web.Response:
    """The replicas alive and the rooms each owns, Redis, the vendors' credentials, versions."""
    require_admin(request)
    app = request.app
    checks = {}
    for name, check in app[READINESS_CHECKS].items():
        ok, detail = await check()
        checks[name] = {"ok": ok, "detail": detail}
    info: dict[str, Any] = {}
    with contextlib.suppress(Exception):  # Redis down: the checks say so
        raw = await app[REDIS].info()
        info = {
            k: raw.get(k)
            for k in (
                "redis_version",
                "redis_mode",
                "role",
                "used_memory_human",
                "connected_clients",
                "uptime_in_seconds",
            )
        }
    return web.json_response(
        {
            "replica_id": app[AUDIENCE].leases.replica_id,
            "replicas": await app[CONSOLE].replicas(),
            "redis": info,
            "checks": checks,
            "vendors": app[PROVIDERS].credentials_state(),
            "versions": {
                "orchestrator": __version__,
                "python": platform.python_version(),
                "aiohttp": _version("aiohttp"),
                "redis-py": _version("redis"),
            },
        }
    )


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


# -- live streams (server-sent events) --------------------------------------------------------------


class StreamSlots:
    """Server-sent event streams open at once, capped (each holds a Redis connection of its own)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.open >= self.limit:
            raise ApiError(
                503,
                "TOO_MANY_STREAMS",
                "too many live streams are open; retry shortly",
                headers={"Retry-After": "5"},
            )
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1


STREAM_SLOTS = web.AppKey("console_stream_slots", StreamSlots)
#: How long one blocking read waits; shutdown and a dropped browser are noticed within it.
BLOCK_MS = 1000
#: A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE_S = 15.0
#: Every room's tile this often, and rooms added or deleted noticed (viewers change without an event).
REFRESH_S = 10.0


async def _event_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    return response


async def _send(response: web.StreamResponse, event: str, data: Any, event_id: str | None = None) -> None:
    head = f"id: {event_id}\n" if event_id else ""
    await response.write(f"{head}event: {event}\ndata: ".encode() + orjson.dumps(data) + b"\n\n")


@routes.get("/api/stream/rooms")
@describe(
    "Room tiles, live (server-sent events: tiles, rooms)", tag="rooms", content_type="text/event-stream"
)
async def stream_rooms(request: web.Request) -> web.StreamResponse:
    """Tiles, live: every room's at first (``tiles``), then the tiles of the rooms whose event streams
    moved, and every :data:`REFRESH_S` all of them (viewers and boundaries change without an event)."""
    require_admin(request)
    app = request.app
    async with app[STREAM_SLOTS].slot(), _own_redis(app) as redis:
        response = await _event_stream(request)
        room_ids = await app[ROOM_STORE].rooms()
        last = await _stream_ends(redis, room_ids)  # named before the tiles: nothing in between is missed
        await _send(response, "tiles", await _tiles(app, room_ids))
        refreshed = sent = time.monotonic()
        while not app[LIFECYCLE].draining:
            answer: Any = None
            if last:
                answer = await xread_many(redis, last, count=100, block_ms=BLOCK_MS)
            else:
                await asyncio.sleep(BLOCK_MS / 1000)
            changed = set()
            for stream, entries in answer or []:
                last[stream.decode()] = entries[-1][0].decode()
                changed.add(keys.room_of_events(stream.decode()))
            now = time.monotonic()
            if now - refreshed >= REFRESH_S:
                room_ids = await app[ROOM_STORE].rooms()
                streams = {keys.room_events(r) for r in room_ids}
                last = {stream: at for stream, at in last.items() if stream in streams}  # deleted: gone
                last |= await _stream_ends(redis, [r for r in room_ids if keys.room_events(r) not in last])
                changed, refreshed = set(room_ids), now
                await _send(response, "rooms", {"room_ids": room_ids})
            if changed:
                await _send(response, "tiles", await _tiles(app, sorted(changed)))
                sent = now
            elif now - sent >= KEEPALIVE_S:
                await response.write(b": keep-alive\n\n")
                sent = now
        return response


async def _stream_ends(redis: Any, room_ids: list[str]) -> dict[str, str]:
    """Each room's event stream and the id of its latest entry (``0-0`` for none), read in pipelines: a
    blocking read from ``$`` again and again would miss what is written between two reads."""
    ends: dict[str, str] = {}
    for chunk in chunks(room_ids):
        pipe = redis.pipeline(transaction=False)
        for room_id in chunk:
            pipe.xrevrange(keys.room_events(room_id), count=1)
        for room_id, newest in zip(chunk, await pipe.execute(), strict=True):
            ends[keys.room_events(room_id)] = newest[0][0].decode() if newest else "0-0"
    return ends


@routes.get("/api/rooms/{room_id}/events/stream")
@describe(
    "A room's event stream, live (server-sent events: entry)",
    content_type="text/event-stream",
    query=(Query("backlog", "entries sent first (0-500, default 100)", "integer"),),
)
async def stream_events(request: web.Request) -> web.StreamResponse:
    """A room's event stream, live: the last ``backlog`` entries (at most 500; after ``Last-Event-ID`` when
    the browser reconnects), then each entry as it is written."""
    require_admin(request)
    room_id = await managed_room_id(request)
    backlog_size = int_query(request, "backlog", 100, 0, 500) or 0
    app = request.app
    stream = keys.room_events(room_id)
    async with app[STREAM_SLOTS].slot(), _own_redis(app) as redis:
        response = await _event_stream(request)
        resume = request.headers.get("Last-Event-ID", "")
        if resume and resume.replace("-", "").isdigit():
            backlog = await app[ROOM_STORE].events(room_id, since=resume, limit=500)
        else:
            backlog = await app[ROOM_STORE].latest_events(room_id, backlog_size) if backlog_size else []
        last = backlog[-1]["id"] if backlog else "$"
        for entry in backlog:
            await _send(response, "entry", entry, entry["id"])
        if last == "$":  # the stream's current end, named, so nothing written meanwhile is missed
            newest = await redis.xrevrange(stream, count=1)
            last = newest[0][0].decode() if newest else "0-0"
        sent = time.monotonic()
        while not app[LIFECYCLE].draining:
            answer = await redis.xread({stream: last}, count=200, block=BLOCK_MS)
            for _stream, entries in answer or []:
                for entry_id, fields in entries:
                    entry = decode_entry(entry_id, fields)
                    await _send(response, "entry", entry, entry["id"])
                    last = entry["id"]
                sent = time.monotonic()
            if time.monotonic() - sent >= KEEPALIVE_S:
                await response.write(b": keep-alive\n\n")
                sent = time.monotonic()
        return response


@contextlib.asynccontextmanager
async def _own_redis(app: web.Application) -> AsyncIterator[Any]:
    settings = app[SETTINGS].redis
    redis = create_redis(
        settings.model_copy(update={"max_connections": 1}), client_name="orchestrator-console"
    )
    try:
        yield redis
    finally:
        await redis.aclose()


def setup(app: web.Application) -> None:
    """The console's routes and state, when ``admin.console.enabled``."""
    settings = app[SETTINGS].admin.console
    app[FAILED_LOGINS] = _FailedLogins()
    app[STREAM_SLOTS] = StreamSlots(settings.max_streams)
    if settings.enabled:
        app.add_routes(routes)
