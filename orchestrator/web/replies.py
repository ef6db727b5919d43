"""Operators' replies.

``POST /api/rooms/{room_id}/replies`` (admin token): ``{"text", "priority": "operator" (default) |
"gift" | "question" | "reaction" | "idle", "play_type"?}`` → 202 ``{"outcome", "reply_id", "evicted"}``.
``GET`` the same path lists the waiting replies and those in flight. ``DELETE`` clears them: the waiting
ones dropped, and everything the vendor has not played yet withdrawn there (MetaStudio:
CLEAN_UP_INSERT_COMMAND; SoftSugar: cancel ``-1``) → 200 ``{"dropped", "withdrawn"}`` (502
``VENDOR_ERROR`` if the vendor refused; the waiting ones are dropped all the same). ``DELETE
.../replies/{reply_id}`` cancels one waiting reply. A reply longer than
the room's vendor takes is refused (400 ``BAD_REPLY``). A reply holding a word the room's policy
forbids is queued all the same (the operator's words), with ``"warnings"`` naming the word.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.appkeys import AUDIENCE, PROVIDERS, ROOM_CONFIGS
from orchestrator.domain import Priority
from orchestrator.interaction.policy import forbidden_in
from orchestrator.providers.errors import ProviderError
from orchestrator.store.replies import Reply
from orchestrator.web.api import OPERATOR, managed_room_id, require_admin
from orchestrator.web.errors import ApiError
from orchestrator.web.openapi import describe

routes = web.RouteTableDef()

#: The longest reply any vendor takes (MetaStudio: 131,072 characters); the room's own vendor may take less.
MAX_REPLY_CHARS = 131_072


class OperatorReply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., min_length=1, max_length=MAX_REPLY_CHARS)
    priority: Priority = "operator"
    play_type: Literal["APPEND", "INSERT", "PLAY_NOW"] | None = None


async def forbidden_warnings(request: web.Request, policy_name: str | None, text: str) -> list[str]:
    """One warning per word of the room's policy's ``forbidden_words`` that ``text`` holds."""
    book = request.app[AUDIENCE].desk.book
    await book.want_also(policy_name)
    return [
        f"the reply holds a word the room's policy forbids: {word}"
        for word in book.policy_for(policy_name).forbidden_words
        if forbidden_in(text, [word])
    ]


def _validation_error(exc: ValidationError, code: str) -> ApiError:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return ApiError(400, code, f"{where}: {first['msg']}")


@routes.post("/api/rooms/{room_id}/replies")
@describe("Queue an operator's reply", body=OperatorReply, status=202, tag="replies")
async def operator_reply(request: web.Request) -> web.Response:
    require_admin(request)
    room_id = await managed_room_id(request)
    try:
        body = OperatorReply.model_validate_json(await request.read())
    except ValidationError as exc:
        raise _validation_error(exc, "BAD_REPLY") from None
    room = await request.app[ROOM_CONFIGS].get(room_id)
    if room is not None:
        try:
            limit = request.app[PROVIDERS].for_room(room).audience.max_reply_chars
        except ProviderError:
            limit = MAX_REPLY_CHARS
        if len(body.text) > limit:
            raise ApiError(
                400, "BAD_REPLY", f"text: longer than the room's vendor takes ({limit} characters)"
            )
    audience = request.app[AUDIENCE]
    # An operator's words are said as written -- but a forbidden word of the room's policy is pointed out.
    warnings = await forbidden_warnings(request, room.policy if room is not None else None, body.text)
    play_type = body.play_type or audience.play_type(body.priority)
    outcome, reply_id, evicted = await audience.enqueue(
        room_id, Reply(body.text, body.priority, play_type), source="operator_api"
    )
    answer: dict[str, object] = {"outcome": outcome, "reply_id": reply_id, "evicted": evicted}
    if warnings:
        answer["warnings"] = warnings
    return web.json_response(answer, status=202)


@routes.delete("/api/rooms/{room_id}/replies")
@describe(
    "Clear the waiting replies and withdraw what the vendor has not played", tag="replies", errors=(502,)
)
async def clear_replies(request: web.Request) -> web.Response:
    require_admin(request)
    room_id = await managed_room_id(request)
    room = await request.app[ROOM_CONFIGS].get(room_id)
    dropped, withdrawn, error = await request.app[AUDIENCE].clear_replies(
        room_id, request.app[PROVIDERS].for_room(room).audience if room is not None else None
    )
    if error is not None:
        raise ApiError(502, "VENDOR_ERROR", f"the waiting replies were dropped; the vendor refused: {error}")
    return web.json_response({"dropped": dropped, "withdrawn": sorted(withdrawn)})


@routes.delete("/api/rooms/{room_id}/replies/{reply_id}")
@describe("Cancel one waiting reply", tag="replies")
async def cancel_reply(request: web.Request) -> web.Response:
    """Cancel one waiting reply (404 ``REPLY_NOT_WAITING`` once it has been sent, or if it never was)."""
    require_admin(request)
    room_id = await managed_room_id(request)
    reply_id = request.match_info["reply_id"]
    audience = request.app[AUDIENCE]
    if len(reply_id) > 128 or not await audience.queue.cancel(room_id, reply_id):
        raise ApiError(
            404, "REPLY_NOT_WAITING", f"reply {reply_id[:128]!r} is not waiting (sent, or unknown)"
        )
    await audience.events.add(room_id, "reply_cancelled", reply_id=reply_id, by=request[OPERATOR])
    return web.json_response({"reply_id": reply_id, "cancelled": True})


@routes.get("/api/rooms/{room_id}/replies")
@describe("The waiting replies and those in flight", tag="replies")
async def list_replies(request: web.Request) -> web.Response:
    require_admin(request)
    room_id = await managed_room_id(request)
    queue = request.app[AUDIENCE].queue
    pending = await queue.pending(room_id)
    flights = await queue.in_flight(room_id)
    return web.json_response(
        {
            "pending": [
                {"reply_id": r.reply_id, "priority": r.priority, "text": r.text, "play_type": r.play_type}
                for r in pending
            ],
            "in_flight": [
                {"reply_id": f.reply_id, "priority": f.priority, "text": f.text, "sent_ms": f.sent_ms}
                for f in flights
            ],
        }
    )
