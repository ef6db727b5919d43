"""An optional LLM that answers the questions our rules do not, over an OpenAI-compatible chat API.

``POST {chat_url}`` with ``{"model", "messages": [system, user], "max_tokens", "temperature"}`` and, if a
key is set, ``Authorization: Bearer <key>``; the answer is ``choices[0].message.content``. Any failure --
timeout (``chat_timeout_s``, the whole call), connection error, non-2xx, a body without an answer -- is a
:class:`ChatUnavailable`, and the caller answers from the FAQ instead. Never retried: a late answer is worse
than the FAQ's. The answer is trimmed and capped; the reply policy still checks it for forbidden words.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import structlog

from orchestrator.domain import AnswerUnavailable

log = structlog.get_logger(__name__)

MAX_ANSWER_CHARS = 500


class ChatUnavailable(AnswerUnavailable):
    """The chat backend gave no usable answer in time."""


class ChatBackend:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        model: str,
        api_key: str = "",
        timeout_s: float = 3.0,
        system_prompt: str = "",
    ) -> None:
        self._session = session
        self._url = url
        self._model = model
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._system_prompt = system_prompt

    async def answer(self, question: str, *, user: str = "", product: str = "") -> str:
        system = self._system_prompt.replace("{product}", product or "-")
        payload: dict[str, Any] = {
            "model": self._model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
            "max_tokens": 200,
            "temperature": 0.3,
        }
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            async with self._session.post(
                self._url, data=orjson.dumps(payload), headers=headers, timeout=self._timeout
            ) as resp:
                body = await resp.read()
                if resp.status >= 300:
                    raise ChatUnavailable(f"chat backend answered HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ChatUnavailable(f"chat backend unreachable: {type(exc).__name__}") from None
        try:
            content = orjson.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ChatUnavailable("chat backend answered without choices[0].message.content") from None
        if not isinstance(content, str) or not content.strip():
            raise ChatUnavailable("chat backend answered an empty message")
        return content.strip()[:MAX_ANSWER_CHARS]
