"""A running daemon (in-process, real Redis) with three callback profiles: MSS_A, MSS_A_HEAD and NONE.

The ``daemon`` fixture runs every test twice: callbacks sent to the main port (the full application), and
to the public listener (``server.public_port``), where the admin API and metrics are not served.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.app import create_app
from orchestrator.appkeys import REACTIONS, ROOM_STORE
from orchestrator.providers.metastudio.callbacks import hw_time, mss_a_head_headers, mss_a_url
from orchestrator.settings import Settings
from orchestrator.store.reactions import Reactions
from orchestrator.store.rooms import RoomStore
from orchestrator.web.server import start_public
from tests.support.redis_server import free_port
from tests.support.server import serving

KEY = "cb-key-0123456789abcdef01234567"
OLD_KEY = "cb-key-previous-0000000000000000"
ADMIN = "admin-token-for-tests-0000"
PATH = "/callbacks/metastudio/live-events"


@dataclass
class Daemon:
    url: str  # where vendor callbacks go
    http: aiohttp.ClientSession
    store: RoomStore
    reactions: Reactions
    journal: Path
    admin_url: str | None = None  # the main port, when callbacks go to the public listener
    last_ms: int = 0  # the latest time a callback was signed with by default

    @property
    def admin(self) -> str:
        return self.admin_url or self.url

    def profile_url(self, profile: str) -> str:
        return f"{self.url}{PATH}" + ("" if profile == "default" else f"/{profile}")

    async def send(
        self,
        event_type: str,
        message: dict[str, Any],
        *,
        profile: str = "default",
        time_ms: int | None = None,
        key: str = KEY,
        raw: bytes | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """POST a callback signed as MetaStudio would for ``profile``."""
        body = (
            raw
            if raw is not None
            else json.dumps(
                {"event_type": event_type, "message": json.dumps(message, ensure_ascii=False)}
            ).encode()
        )
        # A signature covers the time, not the body: two callbacks signed in the same millisecond would
        # carry the same one and the second would be refused as a replay, so default times never repeat.
        now = time_ms if time_ms is not None else max(int(time.time() * 1000), self.last_ms + 1)
        self.last_ms = max(self.last_ms, now)
        url, headers = self.profile_url(profile), {"Content-Type": "application/json"}
        if profile == "default":
            url = mss_a_url(url, key, now)
        elif profile == "head":
            headers.update(mss_a_head_headers(url, key, now))
        async with self.http.post(url, data=body, headers=headers) as resp:
            return resp.status, await resp.json()

    async def api(self, path: str, token: str = ADMIN) -> tuple[int, Any]:
        async with self.http.get(f"{self.admin}{path}", headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status, await resp.json()

    async def room(self, room_id: str) -> dict[str, Any]:
        status, body = await self.api(f"/api/rooms/{room_id}")
        assert status == 200, body
        return dict(body)


def settings_for(make_settings: Any, port: int, journal: Path, **callbacks: Any) -> Any:
    base = f"http://127.0.0.1:{port}{PATH}"
    return make_settings(
        admin={"token": ADMIN},
        metastudio={
            "callback_profiles": {
                "default": {"public_url": base, "auth_type": "MSS_A", "keys": [KEY, OLD_KEY]},
                "head": {"public_url": f"{base}/head", "auth_type": "MSS_A_HEAD", "keys": [KEY]},
                "none": {"public_url": f"{base}/none", "auth_type": "NONE"},
            }
        },
        callbacks={"journal_path": str(journal), **callbacks},
    )


@pytest.fixture(params=["main", "public"])
async def daemon(request: pytest.FixtureRequest, make_settings: Any, tmp_path: Path) -> AsyncIterator[Daemon]:
    port, journal = free_port(), tmp_path / "journal.jsonl"
    public_port = free_port() if request.param == "public" else None
    settings = settings_for(make_settings, public_port or port, journal, rtmp_grace_s=0.3)
    if public_port is not None:
        settings = with_public_port(settings, public_port)
    app = create_app(settings)
    async with serving(app, settings, port=port) as url, aiohttp.ClientSession() as http:
        await app[REACTIONS].connected.wait()
        if public_port is None:
            yield Daemon(url, http, app[ROOM_STORE], app[REACTIONS], journal)
            return
        public = await start_public(app, settings)
        try:
            public_url = f"http://127.0.0.1:{public_port}"
            yield Daemon(public_url, http, app[ROOM_STORE], app[REACTIONS], journal, admin_url=url)
        finally:
            await public.cleanup()


def with_public_port(settings: Settings, port: int) -> Settings:
    return settings.model_copy(update={"server": settings.server.model_copy(update={"public_port": port})})


def switch(room: str, job: str, seq: int, title: str = "", scene: str = "Scene") -> dict[str, Any]:
    return {
        "room_id": room,
        "job_id": job,
        "scene_script_name": scene,
        "shoot_script_sequence_no": str(seq),
        "shoot_script_title": title or f"Paragraph {seq}",
    }


def rtmp(room: str, job: str, state: str, url: str = "rtmp://push/live") -> dict[str, Any]:
    return {
        "room_id": room,
        "job_id": job,
        "output_url": url,
        "stream_key": "secret-stream-key",
        "state": state,
    }


__all__ = ["ADMIN", "KEY", "OLD_KEY", "Daemon", "hw_time", "rtmp", "switch", "with_public_port"]
