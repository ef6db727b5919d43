"""The admin API (bearer token): managed rooms, their schedules, automation, forced start/stop.

* ``POST /api/rooms``: create a room (409 if it exists);
* ``PUT /api/rooms/{id}``: create or replace a room;
* ``GET /api/rooms/{id}/config``: the room's definition, secrets masked;
* ``DELETE /api/rooms/{id}``: stop its job (if any) and forget the room;
* ``GET /api/rooms/{id}/schedule``: the schedule, the desired state now and the next boundary;
* ``PUT /api/rooms/{id}/schedule``: replace the schedule;
* ``POST /api/rooms/{id}/pause`` and ``/resume``: automation off / on (the reconciler leaves it be);
* ``POST /api/rooms/{id}/start`` and ``/stop``: force now; only while paused (409 otherwise), fenced.

Invalid bodies get 422 ``ROOM_INVALID`` with one ``errors`` entry per field. Forced actions need the room
paused because an active reconciler would undo them at its next pass.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from orchestrator import clock
from orchestrator.appkeys import AUDIENCE, RECONCILER, REDACTOR, ROOM_CONFIGS, ROOM_STORE, SETTINGS
from orchestrator.providers.errors import ProviderConfigError, ProviderError
from orchestrator.scheduling.actions import Action, Current
from orchestrator.scheduling.rooms import ManagedRoom, field_problems, reference_problems
from orchestrator.scheduling.schedules import Schedule, describe_instant, evaluate, local_iso
from orchestrator.web.api import require_admin, room_id_param
from orchestrator.web.errors import ApiError, invalid_fields
from orchestrator.web.openapi import describe

routes = web.RouteTableDef()


async def _body(request: web.Request) -> Any:
    try:
        # orjson: its nesting limit (1,024) refuses a deeply nested document as invalid JSON, where the
        # standard library would raise RecursionError.
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ApiError(
            400, "BAD_JSON", "the body must be a JSON document (at most 1,024 levels deep)"
        ) from None


def _validate(model: type[ManagedRoom] | type[Schedule], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_fields("ROOM_INVALID", field_problems(exc)) from None


async def room_of(request: web.Request) -> ManagedRoom:
    """The path's managed room; ApiError 400 or 404 otherwise."""
    room = await request.app[ROOM_CONFIGS].get(room_id_param(request))
    if room is None:
        raise ApiError(404, "ROOM_NOT_FOUND", f"room {request.match_info['room_id']!r} is not managed here")
    return room


async def _save(request: web.Request, room: ManagedRoom) -> None:
    """Store the room, once what it references exists (422 naming the field otherwise)."""
    problems = reference_problems(room, request.app[SETTINGS])
    if room.policy is not None and await request.app[AUDIENCE].policies.get_version(room.policy) is None:
        problems.append(
            ("policy", f"no reply policy named {room.policy!r} (PUT /api/policies/{room.policy})")
        )
    if problems:
        raise invalid_fields("ROOM_INVALID", problems)
    request.app[REDACTOR].add_values(room.secrets())
    await request.app[ROOM_CONFIGS].put(room)


@routes.post("/api/rooms")
@describe("Create a managed room", body=ManagedRoom, status=201, errors=(409,))
async def create_room(request: web.Request) -> web.Response:
    require_admin(request)
    room = _validate(ManagedRoom, await _body(request))
    if await request.app[ROOM_CONFIGS].get(room.room_id) is not None:
        raise ApiError(
            409, "ROOM_EXISTS", f"room {room.room_id!r} exists; PUT /api/rooms/{room.room_id} replaces it"
        )
    await _save(request, room)
    return web.json_response(room.public(), status=201)


@routes.put("/api/rooms/{room_id}")
@describe("Create or replace a managed room", body=ManagedRoom)
async def put_room(request: web.Request) -> web.Response:
    require_admin(request)
    room_id = room_id_param(request)
    data = await _body(request)
    if isinstance(data, dict):
        data.setdefault("room_id", room_id)
    room = _validate(ManagedRoom, data)
    if room.room_id != room_id:
        raise ApiError(
            422,
            "ROOM_INVALID",
            "room_id in the body differs from the path",
            errors=[{"field": "room_id", "message": "must equal the room id in the path"}],
        )
    await _save(request, room)
    return web.json_response(room.public())


@routes.get("/api/rooms/{room_id}/config")
@describe("A room's definition, secrets masked")
async def get_config(request: web.Request) -> web.Response:
    require_admin(request)
    return web.json_response((await room_of(request)).public())


@routes.delete("/api/rooms/{room_id}")
@describe("Stop the room's job and forget the room", errors=(502,))
async def delete_room(request: web.Request) -> web.Response:
    require_admin(request)
    room = await room_of(request)
    stopped = await _force(request, room, "stop")
    await request.app[ROOM_CONFIGS].delete(room.room_id)
    return web.json_response({"room_id": room.room_id, "deleted": True, "stopped_job": stopped})


@routes.get("/api/rooms/{room_id}/schedule")
@describe("The room's schedule, what it wants now, the next boundary")
async def get_schedule(request: web.Request) -> web.Response:
    require_admin(request)
    room = await room_of(request)
    desired = evaluate(room.schedule, clock.now())
    return web.json_response(
        {
            "schedule": room.schedule.model_dump(mode="json"),
            "desired": "live" if desired.live else "off",
            "next_boundary": desired.next_boundary.isoformat() if desired.next_boundary else None,
            "next_boundary_local": local_iso(desired.next_boundary, room.schedule.timezone),
            "next_boundary_text": describe_instant(desired.next_boundary, room.schedule.timezone),
        }
    )


@routes.put("/api/rooms/{room_id}/schedule")
@describe("Replace the room's schedule", body=Schedule)
async def put_schedule(request: web.Request) -> web.Response:
    require_admin(request)
    room = await room_of(request)
    schedule = _validate(Schedule, await _body(request))
    await _save(request, room.model_copy(update={"schedule": schedule}))
    return web.json_response({"room_id": room.room_id, "schedule": schedule.model_dump(mode="json")})


@routes.post("/api/rooms/{room_id}/pause")
@routes.post("/api/rooms/{room_id}/resume")
@describe("Pause or resume the room's automation")
async def pause_resume(request: web.Request) -> web.Response:
    require_admin(request)
    room = await room_of(request)
    paused = request.path.endswith("/pause")
    await _save(request, room.model_copy(update={"paused": paused}))
    return web.json_response({"room_id": room.room_id, "paused": paused})


@routes.post("/api/rooms/{room_id}/start")
@routes.post("/api/rooms/{room_id}/stop")
@describe("Force a start or stop now (the room must be paused)", errors=(409, 502))
async def force(request: web.Request) -> web.Response:
    require_admin(request)
    room = await room_of(request)
    if not room.paused:
        raise ApiError(
            409,
            "AUTOMATION_ACTIVE",
            "pause the room's automation first (POST .../pause): the reconciler would undo a forced action",
        )
    action = "start" if request.path.endswith("/start") else "stop"
    job = await _force(request, room, action)
    return web.json_response({"room_id": room.room_id, "action": action, "job_id": job})


async def _force(request: web.Request, room: ManagedRoom, action: str) -> str | None:
    """Start or stop now, through the same action code as the reconciler (fence, event-stream record,
    the new job's report URL), fenced on the room's current job so concurrent requests make one call."""
    app = request.app
    state = await app[ROOM_STORE].state(room.room_id) or {}
    job_id, job_state = state.get("job_id"), state.get("job_state")
    active = job_state in ("WAITING", "PROCESSING")
    if (action == "stop" and not active) or (action == "start" and active):
        return str(job_id) if action == "start" and job_id else None
    forced = Action(action, "forced through the admin API", f"force:{job_id or 'none'}")
    outcome = await app[RECONCILER].actions.take(room, forced, Current(job_id, job_state))
    if outcome.status == "taken":
        raise ApiError(409, "ACTION_IN_PROGRESS", f"a {action} of this room is already under way")
    if outcome.status == "failed":
        raise _action_error(action, outcome.error)
    return outcome.job_id


def _action_error(action: str, error: BaseException | None) -> ApiError:
    if isinstance(error, ProviderConfigError) and error.field:
        return ApiError(
            422,
            "ROOM_INVALID",
            f"{error.field}: {error}",
            errors=[{"field": error.field, "message": str(error)}],
        )
    if isinstance(error, ProviderError):
        return ApiError(502, "VENDOR_ERROR", f"the vendor refused the {action}: {error}")
    return ApiError(503, "ACTION_FAILED", f"the {action} failed: {error}; it is in the room's events")
