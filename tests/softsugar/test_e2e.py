"""A SoftSugar room end to end, against the sandbox and a real Redis: scheduled, created, started, kept
alive by heartbeats, answered through the takeover queue (finishes by callback, or by polling the queue),
closed at the window's end -- nothing leaked; heartbeats lost → 50 → restarted; an unknown session closed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from orchestrator.sandbox.softsugar.app import SandboxConfig, SoftSugarSandbox, running_sandbox
from orchestrator.scheduling.rooms import ManagedRoom
from tests.scheduling.conftest import Daemon, daemon_for, in_, until
from tests.softsugar.conftest import APP_ID, APP_KEY, script
from tests.support.redis_server import free_port

ROOM = "ss-room-1"
TOKEN = "softsugar-callback-token-0123456789"


def softsugar_room(windows: list[dict[str, Any]], **over: Any) -> ManagedRoom:
    return ManagedRoom.model_validate(
        {
            "room_id": ROOM,
            "provider": "softsugar",
            "template": {"script": script().model_dump(exclude_none=True)},
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
    )


@asynccontextmanager
async def softsugar_daemon(
    make_settings: Any,
    tmp_path: Path,
    *,
    callbacks: bool = True,
    heartbeat_timeout_s: float = 60.0,
    heartbeat_interval_s: float = 1.0,
    **interaction: Any,
) -> AsyncIterator[tuple[Daemon, SoftSugarSandbox]]:
    port = free_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "rules": [
                    {
                        "name": "price",
                        "match": "keyword",
                        "patterns": ["多少钱"],
                        "replies": ["价格在购物车里，今天有优惠哦。"],
                    }
                ]
            },
            allow_unicode=True,
        )
    )
    config = SandboxConfig(
        APP_ID,
        APP_KEY,
        f"http://127.0.0.1:{port}/callbacks/softsugar/{TOKEN}" if callbacks else None,
        speed=10.0,
        create_s=2.0,
        heartbeat_timeout_s=heartbeat_timeout_s,
        char_s=0.1,
    )
    async with (
        running_sandbox(config) as (box, url),
        daemon_for(
            make_settings,
            tmp_path,
            "http://127.0.0.1:9",  # no MetaStudio here
            port=port,
            softsugar={
                "endpoint": url,
                "app_id": APP_ID,
                "app_key": APP_KEY,
                "callback_token": TOKEN,
                "callbacks": callbacks,
                "heartbeat_interval_s": heartbeat_interval_s,
                "timeout_s": 3,
            },
            interaction={"policy_file": str(policy), "lease_ttl_s": 1.5, **interaction},
        ) as daemon,
    ):
        yield daemon, box


async def _session(daemon: Daemon, box: SoftSugarSandbox, status: int = 2) -> Any:
    state = await daemon.store.state(ROOM) or {}
    session = box.world.sessions.get(state.get("job_id", ""))
    return session if session is not None and session.status == status else None


async def _comment(daemon: Daemon, text: str, user: str) -> None:
    status, _ = await daemon.api(
        "POST",
        f"/api/rooms/{ROOM}/events",
        {"events": [{"type": "comment", "user": {"userId": user, "name": user}, "text": text}]},
    )
    assert status == 200


async def test_a_window_creates_starts_keeps_alive_answers_and_closes(
    make_settings: Any, tmp_path: Path
) -> None:
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        await daemon.configs.put(softsugar_room([{"kind": "once", "start": in_(0.5), "end": in_(6.0)}]))

        async def live() -> bool:
            return await _session(daemon, box) is not None

        await until(live, 10)
        session = await _session(daemon, box)
        assert session.user_data == ROOM  # callbacks name the room
        await until(lambda: _true(session.heartbeats >= 2), 5)  # by the room's owner, every second
        await _comment(daemon, "这个多少钱？", "viewer-1")
        await until(lambda: _true(any("购物车" in t.text for t in session.played)), 10)
        inserted = [e for e in await daemon.store.events(ROOM, limit=1000) if e["kind"] == "reply_inserted"]
        assert len(inserted) == 1

        async def closed() -> bool:
            return session.status == 5

        await until(closed, 15)  # the window ended: closed on request
        assert [s for s in box.world.sessions.values() if s.status in (2, 32, 35)] == []  # nothing leaked
        assert len(box.world.sessions) == 1  # one session for the window


async def test_replies_are_tracked_by_polling_the_queue_without_callbacks(
    make_settings: Any, tmp_path: Path
) -> None:
    """An account without a callback URL: sessions are polled (stat) and replies' ends seen in queue/list."""
    async with softsugar_daemon(make_settings, tmp_path, callbacks=False) as (daemon, box):
        await daemon.configs.put(softsugar_room([{"kind": "always"}]))

        async def live() -> bool:
            return await _session(daemon, box) is not None

        await until(live, 10)
        session = await _session(daemon, box)
        for i in range(3):
            await _comment(daemon, "请问多少钱", f"viewer-{i}")
        await until(lambda: _true(len(session.played) >= 1), 10)

        async def none_in_flight() -> bool:
            status, body = await daemon.api("GET", f"/api/rooms/{ROOM}/replies")
            return status == 200 and not body["in_flight"] and not body["pending"]

        await until(none_in_flight, 15)


async def test_heartbeats_lost_the_vendor_closes_with_50_and_the_room_is_restarted(
    make_settings: Any, tmp_path: Path
) -> None:
    async with softsugar_daemon(
        make_settings, tmp_path, heartbeat_timeout_s=6.0, heartbeat_interval_s=30.0
    ) as (
        daemon,
        box,
    ):
        await daemon.configs.put(softsugar_room([{"kind": "always"}]))

        async def live() -> bool:
            return await _session(daemon, box) is not None

        await until(live, 10)
        first = await _session(daemon, box)

        async def replaced() -> bool:
            now = await _session(daemon, box)
            return first.status == 50 and now is not None and now.session_id != first.session_id

        await until(replaced, 20)
        actions = [e for e in await daemon.store.events(ROOM, limit=1000) if e["kind"] == "action"]
        assert any(a["action"] == "restart" and first.session_id in a["reason"] for a in actions), actions


async def test_a_running_session_no_room_knows_is_closed(make_settings: Any, tmp_path: Path) -> None:
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        stray = box.world.create(script().to_wire(), None)
        await daemon.configs.put(softsugar_room([{"kind": "always"}]))
        await daemon.configs.put(softsugar_room([{"kind": "always"}], room_id="ss-room-2"))

        async def closed() -> bool:
            return stray.status == 5

        await until(closed, 15)


async def _true(value: bool) -> bool:
    return value
