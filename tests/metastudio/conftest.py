"""Fixtures: a MetaStudio sandbox served in-process on a free port, and our client pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from orchestrator.providers.metastudio.client import AkSkCredentials, MetaStudioClient, RetryPolicy
from orchestrator.sandbox.metastudio.app import MetaStudioSandbox, SandboxConfig, demo_room, running_sandbox

AK = "SANDBOXAK0000000001"
SK = "sandbox-secret-key-0000000001"
PROJECT = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"


@dataclass
class Env:
    sandbox: MetaStudioSandbox
    url: str
    session: aiohttp.ClientSession
    client: MetaStudioClient

    async def control(self, method: str, path: str, json: object = None) -> object:
        async with self.session.request(method, f"{self.url}/_sandbox{path}", json=json) as resp:
            assert resp.status < 400, await resp.text()
            return await resp.json()


def make_client(session: aiohttp.ClientSession, url: str, **kwargs: object) -> MetaStudioClient:
    options: dict[str, object] = {
        "credentials": AkSkCredentials(AK, SK, PROJECT),
        "timeout_s": 2.0,
        "retry": RetryPolicy(max_retries=3, backoff_base_s=0.01, backoff_cap_s=0.05),
    }
    options.update(kwargs)
    return MetaStudioClient(session, base_url=url, **options)  # type: ignore[arg-type]


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with running_sandbox(SandboxConfig(AK, SK, PROJECT, speed=50.0)) as (sandbox, url):
        sandbox.world.add_room(demo_room())
        async with aiohttp.ClientSession() as session:
            yield Env(sandbox, url, session, make_client(session, url))
