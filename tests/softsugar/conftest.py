"""Fixtures: a SoftSugar sandbox served in-process, and our client (with the shared token) pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from orchestrator.providers.retry import RetryPolicy
from orchestrator.providers.softsugar.auth import SharedToken
from orchestrator.providers.softsugar.client import SoftSugarClient
from orchestrator.providers.softsugar.models import LiveScript
from orchestrator.sandbox.softsugar.app import SandboxConfig, SoftSugarSandbox, demo_script, running_sandbox
from tests.scheduling.conftest import webhooks  # noqa: F401 -- the fixture, for the daemon tests here

APP_ID = "sandbox-app-0001"
APP_KEY = "sandbox-app-key-0000000000000001"


def script(**over: Any) -> LiveScript:
    """003's example live script (l.1023-1140), trimmed to what a test needs: the demo's, with 003's own
    text and volume, played once."""
    data = demo_script("商汤科技是一家行业领先的人工智能软件公司。")
    data["recycle"] = 0
    data["sceneList"][0]["tts_config"]["volume"] = 400
    return LiveScript.model_validate({**data, **over})


@dataclass
class Env:
    sandbox: SoftSugarSandbox
    url: str
    http: aiohttp.ClientSession
    redis: aioredis.Redis
    client: SoftSugarClient

    async def control(self, method: str, path: str, json: object = None) -> Any:
        async with self.http.request(method, f"{self.url}/_sandbox{path}", json=json) as resp:
            assert resp.status < 400, await resp.text()
            return await resp.json()


def make_client(
    http: aiohttp.ClientSession, url: str, redis: aioredis.Redis, **kwargs: Any
) -> SoftSugarClient:
    options: dict[str, Any] = {
        "app_id": APP_ID,
        "app_key": APP_KEY,
        "token": None,
        "timeout_s": 2.0,
        "retry": RetryPolicy(max_retries=2, backoff_base_s=0.01, backoff_cap_s=0.05),
    }
    options.update(kwargs)
    client = SoftSugarClient(http, base_url=url, **options)
    client.token = SharedToken(redis, options["app_id"], client.obtain_token)
    return client


@pytest.fixture
async def env(redis_client: aioredis.Redis) -> AsyncIterator[Env]:
    config = SandboxConfig(APP_ID, APP_KEY, speed=50.0, create_s=2.0, heartbeat_timeout_s=60.0, char_s=0.5)
    async with running_sandbox(config) as (sandbox, url), aiohttp.ClientSession() as http:
        yield Env(sandbox, url, http, redis_client, make_client(http, url, redis_client))
