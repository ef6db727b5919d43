"""SIGKILL the daemon around a SoftSugar room's sessions -- between the vendor's create and the daemon's own
record of it, and three replicas killed and restarted across two windows: one session per window, kept
alive by heartbeats across the kills, none left running."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from orchestrator.sandbox.softsugar.app import Fault, SandboxConfig, SoftSugarSandbox, running_sandbox
from tests.softsugar.conftest import APP_ID, APP_KEY, script
from tests.softsugar.test_e2e import ROOM, TOKEN
from tests.support.daemon import Daemon
from tests.support.server import serving_plain

pytestmark = pytest.mark.slow

RUNNING = (2, 32, 35)


def _daemon(redis_url: str, sandbox_url: str, rooms_file: Path, tmp_path: Path, **env: str) -> Daemon:
    daemon = Daemon()
    daemon._env.update(
        {
            "ORCH_REDIS__URL": redis_url,
            "ORCH_SOFTSUGAR__ENDPOINT": sandbox_url,
            "ORCH_SOFTSUGAR__APP_ID": APP_ID,
            "ORCH_SOFTSUGAR__APP_KEY": APP_KEY,
            "ORCH_SOFTSUGAR__CALLBACK_TOKEN": TOKEN,
            "ORCH_SOFTSUGAR__HEARTBEAT_INTERVAL_S": "1",
            "ORCH_SOFTSUGAR__TIMEOUT_S": "30",  # a create that hangs is still waited for when killed
            "ORCH_CALLBACKS__JOURNAL_PATH": str(tmp_path / f"journal-{daemon.port}.jsonl"),
            "ORCH_SCHEDULING__ROOMS_FILE": str(rooms_file),
            "ORCH_SCHEDULING__RECONCILE_INTERVAL_S": "0.3",
            "ORCH_SCHEDULING__BOUNDARY_TOLERANCE_S": "0",  # one clock here: boundaries at once
            "ORCH_SCHEDULING__FENCE_TTL_S": "6",
            "ORCH_INTERACTION__LEASE_TTL_S": "2",
            **env,
        }
    )
    return daemon


def _rooms_file(tmp_path: Path, windows: list[dict[str, Any]]) -> Path:
    path = tmp_path / "rooms.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "rooms": [
                    {
                        "room_id": ROOM,
                        "provider": "softsugar",
                        "template": {"script": script().model_dump(exclude_none=True)},
                        "schedule": {"timezone": "UTC", "windows": windows},
                        "restart": {"backoff_initial_s": 0.5, "backoff_max_s": 2},
                    }
                ]
            },
            allow_unicode=True,
        )
    )
    return path


async def _wait(predicate: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def _sleep_until(instant: datetime) -> None:
    await asyncio.sleep(max(0.0, (instant - datetime.now(UTC)).total_seconds()))


def _running(box: SoftSugarSandbox) -> list[Any]:
    return [s for s in box.world.sessions.values() if s.status in RUNNING]


@asynccontextmanager
async def _balancer(replicas: list[Daemon]) -> AsyncIterator[str]:
    """The account's one callback URL in front of the replicas: each callback to the first that answers."""
    async with aiohttp.ClientSession() as http:

        async def forward(request: web.Request) -> web.Response:
            body = await request.read()
            for replica in replicas:
                try:
                    async with http.post(
                        replica.base_url + request.path_qs,
                        data=body,
                        headers={"Content-Type": "application/json"},
                    ) as resp:
                        return web.Response(status=resp.status, body=await resp.read())
                except aiohttp.ClientError:
                    continue
            return web.Response(status=502)

        app = web.Application()
        app.router.add_post("/{tail:.*}", forward)
        async with serving_plain(app) as url:
            yield url


async def test_killed_between_the_vendors_create_and_its_record_the_session_is_adopted(
    redis_url: str, tmp_path: Path
) -> None:
    """The create took effect at the vendor and the replica died before recording it (the response never
    came). Its fence keeps the next replica from starting another; the session's 35 callback names the room
    (``userData``) and claims it; it is adopted, started and kept alive: one session, not two."""
    config = SandboxConfig(APP_ID, APP_KEY, None, speed=1.0, create_s=2.0, heartbeat_timeout_s=8.0)
    async with running_sandbox(config) as (box, url):
        rooms = _rooms_file(tmp_path, [{"kind": "always"}])
        box.faults.append(Fault("hang", hang_s=120.0, after=True, path_contains="/channel/create"))
        first = _daemon(redis_url, url, rooms, tmp_path)
        box.world.callback_url = f"{first.base_url}/callbacks/softsugar/{TOKEN}"
        with first:
            await _wait(lambda: len(box.world.sessions) == 1)  # created; its answer hangs
            first.proc.kill()  # type: ignore[union-attr]
            first.wait()
        (orphan,) = box.world.sessions.values()
        second = _daemon(redis_url, url, rooms, tmp_path)
        box.world.callback_url = f"{second.base_url}/callbacks/softsugar/{TOKEN}"
        with second:
            await _wait(lambda: orphan.status == 2)
            heartbeats = orphan.heartbeats
            await asyncio.sleep(9.0)  # past the fence and the vendor's heartbeat timeout
            assert orphan.status == 2 and orphan.heartbeats > heartbeats
            assert list(box.world.sessions) == [orphan.session_id]  # adopted: nothing created beside it
            assert "softsugar session claimed by its callback" in second.output()


async def test_three_replicas_killed_and_restarted_one_session_per_window(
    redis_url: str, tmp_path: Path
) -> None:
    config = SandboxConfig(APP_ID, APP_KEY, None, speed=1.0, create_s=1.0, heartbeat_timeout_s=8.0)
    async with running_sandbox(config) as (box, url):
        t0 = datetime.now(UTC)
        w1 = (t0 + timedelta(seconds=3), t0 + timedelta(seconds=11))
        w2 = (t0 + timedelta(seconds=14), t0 + timedelta(seconds=20))
        rooms = _rooms_file(
            tmp_path, [{"kind": "once", "start": s.isoformat(), "end": e.isoformat()} for s, e in (w1, w2)]
        )
        replicas = [_daemon(redis_url, url, rooms, tmp_path) for _ in range(3)]
        async with _balancer(replicas) as balancer:
            box.world.callback_url = f"{balancer}/callbacks/softsugar/{TOKEN}"
            for replica in replicas:
                replica.start()
            try:

                async def kill_and_restart(index: int, at: datetime, down_s: float) -> None:
                    await _sleep_until(at)
                    replicas[index].proc.kill()  # type: ignore[union-attr]
                    replicas[index].wait()
                    await asyncio.sleep(down_s)
                    replicas[index] = _daemon(redis_url, url, rooms, tmp_path)
                    replicas[index].start()

                # One kill right at the first window's start (the create in flight, perhaps), one while it is
                # live (heartbeats must move to the next lease holder before the vendor's 8 s run out), one
                # at its end, one at the second window's start.
                await kill_and_restart(0, w1[0] + timedelta(seconds=0.1), 1.0)
                await kill_and_restart(1, w1[0] + timedelta(seconds=4.5), 0.5)
                await kill_and_restart(2, w1[1] - timedelta(seconds=0.1), 0.5)
                await kill_and_restart(0, w2[0] + timedelta(seconds=0.1), 0.5)
                await _sleep_until(w2[1] + timedelta(seconds=3))
            finally:
                for replica in replicas:
                    if replica.proc is not None and replica.proc.poll() is None:
                        replica.terminate()
                        replica.wait()
        sessions = sorted(box.world.sessions.values(), key=lambda s: s.created_at)
        assert len(sessions) == 2, [(s.session_id, s.history) for s in sessions]  # one per window
        assert _running(box) == []  # both closed at their window's end, nothing leaked
        assert all(s.status == 5 for s in sessions), [s.history for s in sessions]  # closed on request
        for session in sessions:
            assert [s for _, s in session.history] == [32, 35, 2, 5]  # live once, never closed by the vendor
