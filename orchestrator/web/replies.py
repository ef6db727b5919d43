"""Replies from outside the audience stream: the vendor's CALLBACK-mode rules, and operators.

``POST /callbacks/metastudio/interaction/{token}`` is the ``interaction_callback_url`` of a job (set it in
the room template as ``<public base>/callbacks/metastudio/interaction/<interaction.callback_token>``). When
one of the job's interaction rules with ``reply_mode: CALLBACK`` fires, MetaStudio posts the triggering
event here. The documents give neither the body nor an authentication for this call, so we take what our
sandbox sends -- ``{"room_id", "job_id", "rule_index", "event": LiveEvent}`` -- and authenticate by the
token in the path (compared in constant time; the path is logged with the token masked). The reply policy
decides the text -- when it has none, the chat backend's answer or ``interaction.llm_fallback``, since the
vendor's rule already chose this comment for an answer (its rate limits and deduplication still apply,
so a comment we answered from the audience stream is not answered twice); the reply is queued like any
other and inserted with INSERT_PLAY_SCRIPT carrying the rule's ``rule_index``. 200 ``{"queued": bool,
"reply_id", "reason"}``; 401 wrong token; 404 room or job not ours, or the endpoint off (no token).

``POST /api/rooms/{room_id}/replies`` (admin token): ``{"text", "priority": "operator" (default) | "gift" |
"question" | "idle", "play_type"?}`` → 202 ``{"outcome", "reply_id", "evicted"}``. ``GET`` the same path
lists the waiting replies and those in flight.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Mapping
from typing import Any, Literal

import orjson
from aiohttp import web
from aiohttp.web_request import BaseRequest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator import clock
from orchestrator.appkeys import AUDIENCE, ROOM_STORE, SETTINGS
from orchestrator.interaction.chat import ChatUnavailable
from orchestrator.interaction.ingest import count_of
from orchestrator.interaction.policy import NOTHING_TO_ANSWER, Event, History, decide, speak
from orchestrator.interaction.queue import Reply
from orchestrator.providers.metastudio.models import MAX_INSERT_TEXT_CHARS
from orchestrator.store.keys import InvalidKeyPart, check_room_id
from orchestrator.web.api import managed_room_id, require_admin
from orchestrator.web.errors import ApiError
from orchestrator.web.middlewares import bounded_body

routes = web.RouteTableDef()


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


class OperatorReply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., min_length=1, max_length=MAX_INSERT_TEXT_CHARS)
    priority: Literal["operator", "gift", "question", "idle"] = "operator"
    play_type: Literal["APPEND", "INSERT", "PLAY_NOW"] | None = None


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


@routes.post("/callbacks/metastudio/interaction/{token}")
async def interaction_callback_route(request: web.Request) -> web.Response:
    return await interaction_callback(request.app, request, request.match_info)


async def interaction_callback(
    app: web.Application, request: BaseRequest, params: Mapping[str, str]
) -> web.Response:
    """The handler proper (the main application's route above, and the public listener, call it)."""
    expected = app[SETTINGS].interaction.callback_token.get_secret_value()
    if not expected:
        raise ApiError(404, "INTERACTION_CALLBACK_OFF", "interaction.callback_token is not set")
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
    audience = app[AUDIENCE]
    worker = audience.workers.get(body.room_id)
    history = worker.history if worker is not None and worker.job_id == body.job_id else History()
    event, product = _event(body), str(state.get("product_title") or "")
    decision = decide(audience.policy, history, event, product=product)
    if decision.reason == NOTHING_TO_ANSWER:
        # The vendor's rule chose this comment for an answer: the chat backend's, else the fallback line.
        text = app[SETTINGS].interaction.llm_fallback
        if audience.chat is not None:
            with contextlib.suppress(ChatUnavailable):
                text = await audience.chat.answer(event.text, product=product)
        decision = speak(audience.policy, history, event, text, rule="vendor_rule")
    if not decision.speaks or decision.reply is None:
        return web.json_response({"queued": False, "reply_id": None, "reason": decision.reason})
    reply = Reply(
        decision.reply, decision.priority, audience.play_type(decision.priority), rule_index=body.rule_index
    )
    outcome, reply_id, _ = await audience.enqueue(
        body.room_id, reply, source=f"vendor_rule:{body.rule_index or ''}"
    )
    return web.json_response({"queued": outcome == "queued", "reply_id": reply_id, "reason": decision.reason})


@routes.post("/api/rooms/{room_id}/replies")
async def operator_reply(request: web.Request) -> web.Response:
    require_admin(request)
    room_id = await managed_room_id(request)
    try:
        body = OperatorReply.model_validate_json(await request.read())
    except ValidationError as exc:
        raise _validation_error(exc, "BAD_REPLY") from None
    audience = request.app[AUDIENCE]
    play_type = body.play_type or audience.play_type(body.priority)
    outcome, reply_id, evicted = await audience.enqueue(
        room_id, Reply(body.text, body.priority, play_type), source="operator_api"
    )
    return web.json_response({"outcome": outcome, "reply_id": reply_id, "evicted": evicted}, status=202)


@routes.get("/api/rooms/{room_id}/replies")
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
