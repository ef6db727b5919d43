"""The optional LLM backend (OpenAI-compatible chat API), against a local fake server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from orchestrator.interaction.chat import ChatBackend, ChatUnavailable
from orchestrator.interaction.policy import Event, History, PolicyConfig, speak
from tests.interaction.conftest import POLICY, comment, ingest, live_room, until
from tests.support.server import serving_plain


@dataclass
class FakeChat:
    url: str = ""
    mode: str = "ok"  # ok | slow | error | garbage
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)


@pytest.fixture
async def fake_chat() -> AsyncIterator[FakeChat]:
    fake = FakeChat()

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        fake.requests.append(body)
        fake.auth.append(request.headers.get("Authorization"))
        if fake.mode == "slow":
            await asyncio.sleep(3)
        if fake.mode == "error":
            return web.json_response({"error": {"message": "overloaded"}}, status=500)
        if fake.mode == "garbage":
            return web.json_response({"choices": []})
        question = body["messages"][-1]["content"]
        return web.json_response(
            {"choices": [{"message": {"role": "assistant", "content": f" 关于「{question}」：能用三年。 "}}]}
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    async with serving_plain(app) as url:
        fake.url = f"{url}/v1/chat/completions"
        yield fake


async def test_backend_answers_and_sends_the_prompt(fake_chat: FakeChat) -> None:
    async with aiohttp.ClientSession() as session:
        chat = ChatBackend(
            session,
            fake_chat.url,
            model="m1",
            api_key="sk-test",
            timeout_s=1,
            system_prompt="商品：{product}",
        )
        assert await chat.answer("能用多久", product="保温杯") == "关于「能用多久」：能用三年。"
    sent = fake_chat.requests[0]
    assert sent["model"] == "m1"
    assert sent["messages"][0] == {"role": "system", "content": "商品：保温杯"}
    assert fake_chat.auth == ["Bearer sk-test"]


@pytest.mark.parametrize("mode", ["slow", "error", "garbage"])
async def test_backend_failures_are_unavailable(fake_chat: FakeChat, mode: str) -> None:
    fake_chat.mode = mode
    async with aiohttp.ClientSession() as session:
        chat = ChatBackend(session, fake_chat.url, model="m", timeout_s=0.3)
        with pytest.raises(ChatUnavailable):
            await chat.answer("q")


async def test_unreachable_backend_is_unavailable() -> None:
    async with aiohttp.ClientSession() as session:
        chat = ChatBackend(session, "http://127.0.0.1:9/v1/chat/completions", model="m", timeout_s=0.5)
        with pytest.raises(ChatUnavailable):
            await chat.answer("q")


def test_forbidden_words_in_the_llm_answer_silence_it() -> None:
    config = PolicyConfig(forbidden_words=["竞品"], per_user_interval_s=0)
    event = Event(type=1, user_id="u", user_name="U", text="哪个好？", at=100.0)
    assert not speak(config, History(), event, "比竞品好", rule="chat").speaks
    assert speak(config, History(), event, "我们的好", rule="chat").reply == "我们的好"


async def test_questions_go_to_the_llm_and_fall_back_to_the_faq(
    make_settings: Any, tmp_path: Path, fake_chat: FakeChat
) -> None:
    policy = {**POLICY, "dedup_window_s": 60}
    async with live_room(
        make_settings,
        tmp_path,
        policy=policy,
        report_window_ms=50,
        chat_url=fake_chat.url,
        chat_timeout_s=0.5,
    ) as (daemon, box, job_id):

        def texts() -> list[str]:
            return [i.text for i in box.world.jobs[job_id].inserts]

        await ingest(daemon, [comment("这个能用多久？", user="a")])
        await until(lambda: _async("关于「这个能用多久？」：能用三年。" in texts()), 15)
        fake_chat.mode = "slow"
        await ingest(daemon, [comment("有优惠券吗？", user="b")])
        await until(lambda: _async("关注主播就能领优惠券。" in texts()), 15)
        await asyncio.sleep(1.0)  # the vendor's CALLBACK rule for the same questions answers nothing more
        assert sorted(texts()) == sorted(["关于「这个能用多久？」：能用三年。", "关注主播就能领优惠券。"])


async def _async(value: bool) -> bool:
    return value
