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
from orchestrator.sandbox.softsugar.app import SandboxConfig, SoftSugarSandbox, running_sandbox
from tests.scheduling.conftest import webhooks  # noqa: F401 -- the fixture, for the daemon tests here

APP_ID = "sandbox-app-0001"
APP_KEY = "sandbox-app-key-0000000000000001"


def script(**over: Any) -> LiveScript:
    """003's example live script (l.1023-1140), trimmed to what a test needs."""
    data: dict[str, Any] = {
        "version": "0.0.1",
        "recycle": 0,
        "stream_mode": True,
        "sceneList": [
            {
                "digital_role": {
                    "id": 1,
                    "face_feature_id": "0325_nina_s3_beauty",
                    "name": "小李",
                    "url": "https://example.com/0325_nina_s3_beauty.zip",
                    "position": {"x": 10, "y": 60},
                    "scale": 1,
                },
                "tts_config": {
                    "id": "nina",
                    "name": "nina",
                    "vendor_id": 3,
                    "language": "zh-CN",
                    "pitch_offset": 0.0,
                    "speed_ratio": 1,
                    "volume": 400,
                },
                "tts_query": {"content": "商汤科技是一家行业领先的人工智能软件公司。", "ssml": False},
            }
        ],
        **over,
    }
    return LiveScript.model_validate(data)


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
