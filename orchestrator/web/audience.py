"""A room's audience switches and the blocked viewers (admin token).

* ``GET /api/rooms/{room_id}/reactions`` → ``{"room_id", "reactions": {"join", "like", "follow", "gift"}}``:
  ``true`` where the room reacts to that kind as its policy says, ``false`` where it is switched off here;
* ``PUT`` the same path with some of those kinds (``{"join": false}``) → the same answer after the change.
  A switch is the room's own, whatever policy it names (one room of a brand without welcomes), in force on
  the room's owner within a supervisor pass (seconds).

``GET /api/rooms/{room_id}/timed`` → ``{"room_id", "next": [{"name", "at" (UTC), "local" (the room's time
zone)}]}``: the timed messages the room's owner will say next, soonest first (empty while the room is not
live or its policy has none).

Human review (a room's automatic replies -- answers and reactions -- wait for an operator instead of
being said; operator replies and the room's timed and idle lines skip it):

* ``GET /api/rooms/{room_id}/review`` → ``{"room_id", "enabled", "expire_s", "waiting": [{"review_id",
  "text", "priority", "source", "submitted_ms", "expires_ms"}]}``;
* ``PUT`` the same path ``{"enabled": bool, "expire_s"?: seconds (default 120)}`` → the mode;
* ``POST /api/rooms/{room_id}/review/{review_id}/approve`` (``{"text"?}``: edited first) → 202
  ``{"outcome": "approved" | "edited", "reply_id", "queued"}`` (``warnings`` when the text holds a word
  the room's policy forbids); ``POST .../reject`` → 200 ``{"outcome": "rejected"}``. A reply decided
  already or expired: 404 ``REVIEW_NOT_FOUND`` / 410 ``REVIEW_EXPIRED``. Items expire after
  ``expire_s`` (counted ``rejected`` in ``orch_audience_unanswered_total``).

Blocked viewers, by the platform's user id -- in one room, or everywhere:

* ``GET /api/blocklist`` and ``GET /api/rooms/{room_id}/blocklist`` → ``{"blocked": [{"user_id",
  "until_ms" (0: never), "reason", "at_ms"}]}`` (expired entries are gone);
* ``PUT /api/blocklist/{user_id}`` and ``PUT /api/rooms/{room_id}/blocklist/{user_id}`` with
  ``{"ttl_s"?: seconds (none: until unblocked), "reason"?}`` → 200 the entry;
* ``DELETE`` the same paths → 200 ``{"user_id", "unblocked": true}``, 404 ``NOT_BLOCKED``.

Nothing a blocked viewer does is answered (comments, joins, gifts): counted ``blocked_user``. A change
reaches every replica at once (``blocklist_changed``), or within seconds if that message is lost.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from orchestrator.appkeys import AUDIENCE, REACTIONS, ROOM_CONFIGS, ROOM_STORE
from orchestrator.domain import ACTIVE_STATUSES
from orchestrator.interaction.policy import REACTION_KINDS
from orchestrator.store.blocklists import MAX_REASON, Blocklists
from orchestrator.web.api import managed_room_id, read_model, require_admin
from orchestrator.web.errors import ApiError
from orchestrator.web.openapi import describe
from orchestrator.web.replies import MAX_REPLY_CHARS, forbidden_warnings

routes = web.RouteTableDef()

KINDS = tuple(REACTION_KINDS.values())


class Switches(BaseModel):
    model_config = ConfigDict(extra="forbid")

    join: bool | None = None
    like: bool | None = None
    follow: bool | None = None
    gift: bool | None = None


def _answer(room_id: str, muted: set[str]) -> web.Response:
    return web.json_response({"room_id": room_id, "reactions": {k: k not in muted for k in KINDS}})


@routes.get("/api/rooms/{room_id}/reactions")
@describe("The room's reaction switches", tag="audience")
async def get_reactions(request: web.Request) -> web.Response:
    require_admin(request)
    room_id = await managed_room_id(request)
    return _answer(room_id, await request.app[ROOM_STORE].muted(room_id))


@routes.put("/api/rooms/{room_id}/reactions")
@describe("Switch the room's reactions on or off", body=Switches, tag="audience")
async def put_reactions(request: web.Request) -> web.Response:
    require_admin(request)
    room_id = await managed_room_id(request)
    switches = await read_model(request, Switches, "REACTIONS_INVALID")
    muted = await request.app[ROOM_STORE].muted(room_id)
    for kind, on in switches.model_dump(exclude_none=True).items():
        (muted.discard if on else muted.add)(kind)
    await request.app[ROOM_STORE].set_muted(room_id, muted)
    return _answer(room_id, muted)


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_s: float | None = Field(None, gt=0, le=10 * 365 * 86400, description="none: until unblocked")
    reason: str = Field("", max_length=MAX_REASON)


def _user_id(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    if not 1 <= len(user_id) <= 128 or not user_id.isprintable():
        raise ApiError(400, "BAD_USER_ID", "a user id is 1 to 128 printable characters")
    return user_id


def _lists(request: web.Request) -> Blocklists:
    return request.app[AUDIENCE].blocklists


async def _room_or_none(request: web.Request) -> str | None:
    return await managed_room_id(request) if "room_id" in request.match_info else None


async def _announce(request: web.Request) -> None:
    with contextlib.suppress(RedisError):  # every replica compares versions within seconds anyway
        await request.app[REACTIONS].publish("blocklist_changed")


@routes.get("/api/blocklist")
@routes.get("/api/rooms/{room_id}/blocklist")
@describe("Blocked viewers (everywhere, or in one room)", tag="audience")
async def list_blocked(request: web.Request) -> web.Response:
    require_admin(request)
    room_id = await _room_or_none(request)
    entries = await _lists(request).entries(room_id)
    return web.json_response({"blocked": [e.as_dict() for e in entries]})


@routes.put("/api/blocklist/{user_id}")
@routes.put("/api/rooms/{room_id}/blocklist/{user_id}")
@describe("Block a viewer (everywhere, or in one room)", body=Block, tag="audience")
async def block(request: web.Request) -> web.Response:
    require_admin(request)
    room_id = await _room_or_none(request)
    user_id = _user_id(request)
    wanted = await read_model(request, Block, "BLOCK_INVALID", if_empty={})
    entry = await _lists(request).block(user_id, room_id=room_id, ttl_s=wanted.ttl_s, reason=wanted.reason)
    await _announce(request)
    return web.json_response(entry.as_dict())


@routes.delete("/api/blocklist/{user_id}")
@routes.delete("/api/rooms/{room_id}/blocklist/{user_id}")
@describe("Unblock a viewer", tag="audience")
async def unblock(request: web.Request) -> web.Response:
    require_admin(request)
    room_id = await _room_or_none(request)
    user_id = _user_id(request)
    if not await _lists(request).unblock(user_id, room_id=room_id):
        raise ApiError(
            404, "NOT_BLOCKED", f"{user_id!r} is not blocked {'here' if room_id else 'everywhere'}"
        )
    await _announce(request)
    return web.json_response({"user_id": user_id, "unblocked": True})


@routes.get("/api/rooms/{room_id}/timed")
@describe("The timed messages the room will say next", tag="audience")
async def timed(request: web.Request) -> web.Response:
    require_admin(request)
    room_id = await managed_room_id(request)
    state = await request.app[ROOM_STORE].state(room_id) or {}
    live = state.get("job_state") in ACTIVE_STATUSES
    upcoming = await request.app[AUDIENCE].queue.timetable(room_id) if live else []
    return web.json_response({"room_id": room_id, "next": upcoming})


DEFAULT_REVIEW_S = 120.0


class ReviewMode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool
    expire_s: float = Field(DEFAULT_REVIEW_S, gt=0, le=86400)


class Approval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, min_length=1, max_length=MAX_REPLY_CHARS)


async def _review_answer(request: web.Request, room_id: str) -> web.Response:
    expire_s = await request.app[ROOM_STORE].review_s(room_id)
    waiting = await request.app[AUDIENCE].reviews.waiting(room_id)
    return web.json_response(
        {
            "room_id": room_id,
            "enabled": expire_s > 0,
            "expire_s": expire_s or None,
            "waiting": [r.as_dict() for r in waiting],
        }
    )


@routes.get("/api/rooms/{room_id}/review")
@describe("The room's review mode and the replies waiting for review", tag="audience")
async def get_review(request: web.Request) -> web.Response:
    require_admin(request)
    return await _review_answer(request, await managed_room_id(request))


@routes.put("/api/rooms/{room_id}/review")
@describe("Turn the room's review mode on or off", body=ReviewMode, tag="audience")
async def put_review(request: web.Request) -> web.Response:
    require_admin(request)
    room_id = await managed_room_id(request)
    mode = await read_model(request, ReviewMode, "REVIEW_INVALID")
    await request.app[ROOM_STORE].set_review_s(room_id, mode.expire_s if mode.enabled else 0)
    return await _review_answer(request, room_id)


@routes.post("/api/rooms/{room_id}/review/{review_id}/{decision:approve|reject}")
@describe(
    "Approve (optionally edited) or reject a reply waiting for review",
    body=Approval,
    tag="audience",
    errors=(410,),
)
async def decide_review(request: web.Request) -> web.Response:
    require_admin(request)
    room_id = await managed_room_id(request)
    review_id = request.match_info["review_id"]
    approve = request.match_info["decision"] == "approve"
    approval = await read_model(request, Approval, "REVIEW_INVALID", if_empty={})
    audience = request.app[AUDIENCE]
    outcome, _, queued = await audience.decide_review(room_id, review_id, approve=approve, text=approval.text)
    if outcome == "gone":
        raise ApiError(404, "REVIEW_NOT_FOUND", f"no reply {review_id!r} waits for review in {room_id!r}")
    if outcome == "expired":
        raise ApiError(410, "REVIEW_EXPIRED", f"reply {review_id!r} waited too long and was dropped")
    if queued is None:
        return web.json_response({"outcome": outcome})
    answer: dict[str, Any] = {"outcome": outcome, "reply_id": queued[1], "queued": queued[0] == "queued"}
    if approval.text is not None:
        room = await request.app[ROOM_CONFIGS].get(room_id)
        warnings = await forbidden_warnings(request, room.policy if room else None, approval.text)
        if warnings:
            answer["warnings"] = warnings
    return web.json_response(answer, status=202)
