"""SIGKILL the daemon while a room is live, and at window boundaries; after a restart the room ends in the
right state with no duplicate start."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from orchestrator.providers.metastudio.models import JobState
from orchestrator.sandbox.metastudio.app import MetaStudioSandbox
from tests.scheduling.conftest import AK, PROJECT, ROOM, SK
from tests.support.daemon import Daemon


def _daemon(redis_url: str, sandbox_url: str, rooms_file: Path, tmp_path: Path) -> Daemon:
    daemon = Daemon()
    daemon._env.update(
        {
            "ORCH_REDIS__URL": redis_url,
            "ORCH_METASTUDIO__ENDPOINT": sandbox_url,
            "ORCH_METASTUDIO__AK": AK,
            "ORCH_METASTUDIO__SK": SK,
            "ORCH_METASTUDIO__PROJECT_ID": PROJECT,
            "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__PUBLIC_URL": f"{daemon.base_url}/callbacks/metastudio/live-events",
            "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__KEYS": json.dumps(["crash-key"]),
            "ORCH_CALLBACKS__JOURNAL_PATH": str(tmp_path / f"journal-{daemon.port}.jsonl"),
            "ORCH_SCHEDULING__ROOMS_FILE": str(rooms_file),
            "ORCH_SCHEDULING__RECONCILE_INTERVAL_S": "0.2",
            "ORCH_SCHEDULING__BOUNDARY_TOLERANCE_S": "0",  # one clock here: boundaries at once
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
                        "template": {
                            "output_urls": ["rtmp://push.example/live"],
                            "stream_keys": ["crash-stream-key"],
                        },
                        "schedule": {"timezone": "UTC", "windows": windows},
                    }
                ]
            }
        )
    )
    return path


def _starts(box: MetaStudioSandbox) -> int:
    return len([c for c in box.calls if c.method == "POST" and c.path.endswith("/smart-live-jobs")])


async def _wait(predicate: Any, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def _sleep_until(instant: datetime) -> None:
    await asyncio.sleep(max(0.0, (instant - datetime.now(UTC)).total_seconds()))


async def test_sigkill_while_live_then_restart_starts_nothing_new(
    redis_url: str, sandbox: Any, tmp_path: Path
) -> None:
    box, url = sandbox
    rooms = _rooms_file(tmp_path, [{"kind": "always"}])
    with _daemon(redis_url, url, rooms, tmp_path) as first:
        await _wait(lambda: any(j.state.active for j in box.world.jobs.values()))
        first.proc.kill()  # type: ignore[union-attr]
        first.wait()
    with _daemon(redis_url, url, rooms, tmp_path):
        await asyncio.sleep(2.0)  # ten reconcile passes
        assert _starts(box) == 1 and len(box.world.jobs) == 1
        assert next(iter(box.world.jobs.values())).state.active


async def test_sigkill_at_window_boundaries(redis_url: str, sandbox: Any, tmp_path: Path) -> None:
    box, url = sandbox
    t0 = datetime.now(UTC)
    w1 = (t0 + timedelta(seconds=3), t0 + timedelta(seconds=5))
    w2 = (t0 + timedelta(seconds=8), t0 + timedelta(seconds=11))
    rooms = _rooms_file(
        tmp_path, [{"kind": "once", "start": s.isoformat(), "end": e.isoformat()} for s, e in (w1, w2)]
    )
    with _daemon(redis_url, url, rooms, tmp_path) as d1:
        await _wait(lambda: any(j.state.active for j in box.world.jobs.values()))
        await _sleep_until(w1[1] - timedelta(seconds=0.1))
        d1.proc.kill()  # type: ignore[union-attr]  # dies just before the window's end: nobody stops the job
        d1.wait()
    await _sleep_until(w1[1] + timedelta(seconds=0.5))
    job1 = next(iter(box.world.jobs.values()))
    assert job1.state.active  # left running past its window
    with _daemon(redis_url, url, rooms, tmp_path) as d2:
        await _wait(lambda: job1.state is JobState.SUCCEED)  # the restarted daemon stops it
        await _sleep_until(w2[0])
        d2.proc.kill()  # type: ignore[union-attr]  # dies right at the next window's start
        d2.wait()
    await asyncio.sleep(0.3)
    with _daemon(redis_url, url, rooms, tmp_path):
        await _wait(lambda: len([j for j in box.world.jobs.values() if j.state.active]) == 1)
        await _sleep_until(w2[1] + timedelta(seconds=1.5))
        assert _starts(box) == 2 and len(box.world.jobs) == 2  # one start per window, none duplicated
        assert all(j.state is JobState.SUCCEED for j in box.world.jobs.values())
