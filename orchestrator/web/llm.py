"""``POST /llm/metastudio``: MetaStudio's third-party LLM callback (004 §7.1), answered by our reply policy.

MetaStudio signs the call with query parameters ``secret = hmac_sha256(appKey, URI(llm_url) + timestamp)``
(the timestamp in decimal milliseconds, as the document's worked example computes it) and
``time_stamp = hex(timestamp)``. The verifier is the callbacks' (same HMAC construction, same clock-skew
window, constant-time comparison); a signature is answered once (a Redis key, so across replicas).

The body is ``{"messages": [{"content"}], "app_id", "user", "session_id", "is_stream"}``. The last message
is the question; the reply policy's rules and FAQ answer it, or ``interaction.llm_fallback``. The answer
goes back as ``{"id", "created", "choices": [{"message": {"content"}, "index": 0}]}``, or with
``is_stream`` as server-sent events of that shape, one sentence each, ending with ``data:[DONE]``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_request import BaseRequest
from pydantic import BaseModel, Field, ValidationError

from orchestrator import clock
from orchestrator.appkeys import AUDIENCE, REDIS, SETTINGS
from orchestrator.interaction.policy import Event, History, PolicyConfig, decide
from orchestrator.providers.metastudio.callbacks import CallbackRejected, VerifyPolicy, verify_signature
from orchestrator.store import keys
from orchestrator.web.errors import ApiError
from orchestrator.web.middlewares import bounded_body

routes = web.RouteTableDef()

POLICY = web.AppKey("reply_policy", PolicyConfig)


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


@routes.post("/llm/metastudio")
async def llm_route(request: web.Request) -> web.StreamResponse:
    return await llm(request.app, request, request.match_info)


async def llm(app: web.Application, request: BaseRequest, params: Mapping[str, str]) -> web.StreamResponse:
    """The handler proper (the main application's route above, and the public listener, call it)."""
    settings = app[SETTINGS]
    key = settings.interaction.llm_app_key.get_secret_value()
    if not key or settings.interaction.llm_public_url is None:
        raise ApiError(
            404, "LLM_ENDPOINT_OFF", "interaction.llm_public_url and interaction.llm_app_key are not set"
        )
    try:
        verified = verify_signature(
            url=str(settings.interaction.llm_public_url),
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
    question = body.messages[-1].content
    event = Event(type=1, user_id=body.user, user_name="", text=question, at=clock.time())
    decision = decide(app[AUDIENCE].policy, History(), event)  # the current policy (SIGHUP swaps it)
    answer = decision.reply or settings.interaction.llm_fallback
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
