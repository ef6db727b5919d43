"""A room's audience switches (admin token).

* ``GET /api/rooms/{room_id}/reactions`` → ``{"room_id", "reactions": {"join", "like", "follow", "gift"}}``:
  ``true`` where the room reacts to that kind as its policy says, ``false`` where it is switched off here;
* ``PUT`` the same path with some of those kinds (``{"join": false}``) → the same answer after the change.
  A switch is the room's own, whatever policy it names (one room of a brand without welcomes), in force on
  the room's owner within a supervisor pass (seconds).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from orchestrator.appkeys import ROOM_STORE
from orchestrator.interaction.policy import REACTION_KINDS
from orchestrator.scheduling.rooms import field_problems
from orchestrator.web.api import managed_room_id, require_admin
from orchestrator.web.errors import ApiError, invalid_fields

routes = web.RouteTableDef()

KINDS = tuple(REACTION_KINDS.values())


class Switches(BaseModel):
    model_config = ConfigDict(extra="forbid")

    join: bool | None = None
    like: bool | None = None
    follow: bool | None = None
    gift: bool | None = None


async def json_body(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ApiError(400, "BAD_JSON", "the body must be a JSON document") from None


def _answer(room_id: str, muted: set[str]) -> web.Response:
    return web.json_response({"room_id": room_id, "reactions": {k: k not in muted for k in KINDS}})


@routes.get("/api/rooms/{room_id}/reactions")
async def get_reactions(request: web.Request) -> web.Response:
    require_admin(request)
    room_id = await managed_room_id(request)
    return _answer(room_id, await request.app[ROOM_STORE].muted(room_id))


@routes.put("/api/rooms/{room_id}/reactions")
async def put_reactions(request: web.Request) -> web.Response:
    require_admin(request)
    room_id = await managed_room_id(request)
    try:
        switches = Switches.model_validate(await json_body(request))
    except ValidationError as exc:
        raise invalid_fields("REACTIONS_INVALID", field_problems(exc)) from None
    muted = await request.app[ROOM_STORE].muted(room_id)
    for kind, on in switches.model_dump(exclude_none=True).items():
        (muted.discard if on else muted.add)(kind)
    await request.app[ROOM_STORE].set_muted(room_id, muted)
    return _answer(room_id, muted)
