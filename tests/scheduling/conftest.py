"""A daemon (in-process, real Redis) driving the MetaStudio sandbox, with a webhook receiver for alerts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from orchestrator.app import create_app
from orchestrator.appkeys import RECONCILER, ROOM_CONFIGS, ROOM_STORE
from orchestrator.sandbox.metastudio.app import MetaStudioSandbox, SandboxConfig, demo_room, running_sandbox
from orchestrator.scheduling.reconciler import Reconciler
from orchestrator.scheduling.rooms import ManagedRoom, RoomConfigs
from orchestrator.store.rooms import RoomStore
from tests.support.redis_server import free_port
from tests.support.server import serving, serving_plain

AK, SK, PROJECT = "SCHEDAK", "sched-sk", "sched-project"
ADMIN = "admin-token-scheduling-0000"
ROOM = "demo-room"


@dataclass
class Webhooks:
    url: str
    got: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Daemon:
    url: str
    app: web.Application
    http: aiohttp.ClientSession

    @property
    def configs(self) -> RoomConfigs:
        return self.app[ROOM_CONFIGS]

    @property
    def store(self) -> RoomStore:
        return self.app[ROOM_STORE]

    @property
    def reconciler(self) -> Reconciler:
        return self.app[RECONCILER]

    async def api(self, method: str, path: str, json: Any = None, token: str = ADMIN) -> tuple[int, Any]:
        async with self.http.request(
            method, f"{self.url}{path}", json=json, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            return resp.status, await resp.json()

    async def events(self, kind: str = "action") -> list[dict[str, Any]]:
        return [e for e in await self.store.events(ROOM, limit=1000) if e["kind"] == kind]


def in_(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def managed_room(windows: list[dict[str, Any]], **over: Any) -> ManagedRoom:
    data: dict[str, Any] = {
        "room_id": ROOM,
        "template": {"output_urls": ["rtmp://push.example/live"], "stream_keys": ["sched-stream-key"]},
        "schedule": {"timezone": "UTC", "windows": windows},
        "restart": {
            "backoff_initial_s": 0.3,
            "backoff_max_s": 1,
            "max_restarts_per_hour": 20,
            "rtmp_grace_s": 0.5,
            "refresh_wait_s": 0.6,
        },
        **over,
    }
    return ManagedRoom.model_validate(data)


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.05)


@asynccontextmanager
async def daemon_for(
    make_settings: Any,
    tmp_path: Path,
    sandbox_url: str,
    *,
    interaction: dict[str, Any] | None = None,
    port: int | None = None,
    metastudio: dict[str, Any] | None = None,
    alerts: dict[str, Any] | None = None,
    softsugar: dict[str, Any] | None = None,
    admin: dict[str, Any] | None = None,
    **scheduling: Any,
) -> AsyncIterator[Daemon]:
    port = port or free_port()
    settings = make_settings(
        admin={"token": ADMIN, **(admin or {})},
        metastudio={
            "endpoint": sandbox_url,
            "ak": AK,
            "sk": SK,
            "project_id": PROJECT,
            "timeout_s": 3,
            "callback_profiles": {
                "default": {
                    "public_url": f"http://127.0.0.1:{port}/callbacks/metastudio/live-events",
                    "auth_type": "MSS_A",
                    "keys": ["sched-callback-key"],
                }
            },
            **(metastudio or {}),
        },
        alerts=alerts or {},
        softsugar=softsugar or {},
        callbacks={"journal_path": str(tmp_path / f"journal-{port}.jsonl")},
        # Boundaries acted on at once (one process, one clock): the tolerance has its own test.
        scheduling={
            "reconcile_interval_s": 0.2,
            "alert_min_interval_s": 60,
            "boundary_tolerance_s": 0,
            **scheduling,
        },
        interaction=interaction or {},
    )
    app = create_app(settings)
    async with serving(app, settings, port=port) as url, aiohttp.ClientSession() as http:
        yield Daemon(url, app, http)


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[MetaStudioSandbox, str]]:
    async with running_sandbox(SandboxConfig(AK, SK, PROJECT, speed=20)) as (box, url):
        box.world.add_room(demo_room())
        yield box, url


@pytest.fixture
async def webhooks() -> AsyncIterator[Webhooks]:
    hooks = Webhooks("")

    async def receive(request: web.Request) -> web.Response:
        hooks.got.append({"path": request.path, **(await request.json())})
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{name}", receive)
    async with serving_plain(app) as url:
        hooks.url = url
        yield hooks


__all__ = [
    "ADMIN",
    "ROOM",
    "AsyncExitStack",
    "Daemon",
    "Webhooks",
    "daemon_for",
    "in_",
    "managed_room",
    "time",
    "until",
]
