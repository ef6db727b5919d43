"""POST /llm/metastudio (004 §7.1): the document's worked example is accepted; JSON and SSE answers."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.app import create_app
from orchestrator.providers.metastudio.callbacks import hw_time, mss_a_signature
from tests.support.server import serving

LLM_URL = "https://metastudio-llm/digital-human/chat"  # the PDF prints "metastudio-l1m": an OCR slip
APP_KEY = "huawei_metaStudio"
EXAMPLE_MS = 1744612873350
EXAMPLE_SECRET = "a02fc32111795dc6f760e6bd15bb0cbc9a35921dc5dc86e57eea56ae644d793e"
BODY = {
    "messages": [{"content": "请介绍一下长江"}, {"content": "保温杯能保温多久？"}],
    "app_id": "5ca7f",
    "user": "f6bef",
    "session_id": "b1cb4",
}


@pytest.fixture
async def llm(make_settings: Any, tmp_path: Path) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "faq:\n  - {question: 保温杯能保温多久, answer: 能保温十二小时。晚上泡的茶，早上还是热的！}\n"
    )
    settings = make_settings(
        interaction={"policy_file": str(policy)},
        metastudio={"llm_public_url": LLM_URL, "llm_app_key": APP_KEY},
        callbacks={"max_skew_s": 20 * 365 * 86400, "journal_path": str(tmp_path / "j.jsonl")},
    )
    async with serving(create_app(settings), settings) as url, aiohttp.ClientSession() as http:
        yield url, http


def _signed(ms: int) -> str:
    return f"secret={mss_a_signature(APP_KEY, LLM_URL, str(ms))}&time_stamp={hw_time(ms)}"


async def test_the_documents_worked_example_is_accepted(llm: Any) -> None:
    url, http = llm
    assert _signed(EXAMPLE_MS) == f"secret={EXAMPLE_SECRET}&time_stamp=1963307d486"
    async with http.post(
        f"{url}/llm/metastudio?secret={EXAMPLE_SECRET}&time_stamp=1963307d486", json=BODY
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("application/json")
        answer = await resp.json()
    assert answer["choices"] == [
        {"message": {"content": "能保温十二小时。晚上泡的茶，早上还是热的！"}, "index": 0}
    ]
    assert answer["id"] and isinstance(answer["created"], int)


async def test_stream_answer_is_sse_ending_with_done(llm: Any) -> None:
    url, http = llm
    async with http.post(
        f"{url}/llm/metastudio?{_signed(int(time.time() * 1000))}", json={**BODY, "is_stream": True}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = (await resp.read()).decode()
    events = [line[len("data:") :] for line in raw.split("\n\n") if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    parts = [json.loads(e)["choices"][0]["message"]["content"] for e in events[:-1]]
    assert parts == ["能保温十二小时。", "晚上泡的茶，早上还是热的！"]


async def test_unknown_question_gets_the_fallback(llm: Any) -> None:
    url, http = llm
    body = {**BODY, "messages": [{"content": "你喜欢什么颜色"}]}
    async with http.post(f"{url}/llm/metastudio?{_signed(int(time.time() * 1000))}", json=body) as resp:
        assert (await resp.json())["choices"][0]["message"][
            "content"
        ] == "这个问题我记下了，稍后为您详细解答。"


@pytest.mark.parametrize(
    ("query", "body", "status", "code"),
    [
        ("secret=" + "0" * 64 + "&time_stamp=" + hw_time(EXAMPLE_MS), BODY, 401, "LLM_BAD_SIGNATURE"),
        ("time_stamp=1963307d486", BODY, 401, "LLM_MISSING"),
        ("secret=abc&time_stamp=zz", BODY, 401, "LLM_MALFORMED_TIME"),
        (None, {"messages": [], "app_id": "a", "user": "u", "session_id": "s"}, 400, "LLM_BAD_REQUEST"),
        (
            None,
            {"messages": [{"content": "x" * 4097}], "app_id": "a", "user": "u", "session_id": "s"},
            400,
            "LLM_BAD_REQUEST",
        ),
    ],
)
async def test_rejections(llm: Any, query: str | None, body: dict[str, Any], status: int, code: str) -> None:
    url, http = llm
    query = query or _signed(int(time.time() * 1000))
    async with http.post(f"{url}/llm/metastudio?{query}", json=body) as resp:
        error = await resp.json()
        assert (resp.status, error["error_code"]) == (status, code)


async def test_a_signature_is_answered_once(llm: Any) -> None:
    url, http = llm
    query = _signed(int(time.time() * 1000))
    async with http.post(f"{url}/llm/metastudio?{query}", json=BODY) as resp:
        assert resp.status == 200
    async with http.post(f"{url}/llm/metastudio?{query}", json=BODY) as resp:
        assert (resp.status, (await resp.json())["error_code"]) == (401, "LLM_REPLAY")


async def test_endpoint_is_off_without_a_key(make_settings: Any, tmp_path: Path) -> None:
    settings = make_settings(callbacks={"journal_path": str(tmp_path / "j.jsonl")})
    query = _signed(int(time.time() * 1000))
    async with (
        serving(create_app(settings), settings) as url,
        aiohttp.ClientSession() as http,
        http.post(f"{url}/llm/metastudio?{query}", json=BODY) as resp,
    ):
        assert (resp.status, (await resp.json())["error_code"]) == (404, "LLM_ENDPOINT_OFF")
