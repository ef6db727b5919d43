"""The admin API and its CLI (`orchestrator rooms ...`, `orchestrator schedule ...`) on a running daemon."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.scheduling.conftest import ADMIN, ROOM, daemon_for, in_, managed_room

ROOT = Path(__file__).resolve().parents[2]


def _body(**over: Any) -> dict[str, Any]:
    room = managed_room([{"kind": "once", "start": in_(3600), "end": in_(7200)}], **over)
    data = json.loads(room.stored())
    return data


async def _cli(url: str, *args: str, token: str = ADMIN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "orchestrator", args[0], "--api", url, "--token", token, *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


async def test_crud_validation_and_secrets(make_settings: Any, tmp_path: Path, sandbox: Any) -> None:
    _, url = sandbox
    async with daemon_for(make_settings, tmp_path, url) as daemon:
        status, created = await daemon.api("POST", "/api/rooms", _body())
        assert status == 201 and created["room_id"] == ROOM
        assert created["template"]["stream_keys"] == ["**********"]  # secrets never come back
        assert (await daemon.api("POST", "/api/rooms", _body()))[0] == 409
        status, error = await daemon.api(
            "POST",
            "/api/rooms",
            {"room_id": "x", "template": {"output_urls": []}, "schedule": {"timezone": "Nowhere"}},
        )
        assert status == 422 and error["error_code"] == "ROOM_INVALID"
        fields = {e["field"] for e in error["errors"]}
        assert {"template.output_urls", "schedule.timezone"} <= fields
        status, listed = await daemon.api("GET", "/api/rooms")
        assert listed["rooms"][0]["desired"] == "off" and listed["rooms"][0]["next_boundary"]
        status, _ = await daemon.api(
            "PUT", f"/api/rooms/{ROOM}/schedule", {"timezone": "UTC", "windows": [{"kind": "always"}]}
        )
        assert status == 200
        status, shown = await daemon.api("GET", f"/api/rooms/{ROOM}/schedule")
        assert shown["desired"] == "live" and shown["next_boundary"] is None
        status, config = await daemon.api("GET", f"/api/rooms/{ROOM}/config")
        assert "sched-stream-key" not in json.dumps(config)
        assert (await daemon.api("GET", "/api/rooms", token="nope"))[0] == 401
        status, deleted = await daemon.api("DELETE", f"/api/rooms/{ROOM}")
        assert status == 200 and deleted["deleted"] is True
        assert (await daemon.api("GET", f"/api/rooms/{ROOM}/config"))[0] == 404


async def test_pause_resume_and_forced_actions_are_fenced(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    box, url = sandbox
    async with daemon_for(make_settings, tmp_path, url) as daemon:
        await daemon.api("PUT", f"/api/rooms/{ROOM}", _body())  # off for the next hour
        status, error = await daemon.api("POST", f"/api/rooms/{ROOM}/start")
        assert (status, error["error_code"]) == (409, "AUTOMATION_ACTIVE")
        assert (await daemon.api("POST", f"/api/rooms/{ROOM}/pause"))[1]["paused"] is True
        results = await asyncio.gather(*(daemon.api("POST", f"/api/rooms/{ROOM}/start") for _ in range(4)))
        assert sorted(s for s, _ in results).count(200) >= 1
        assert len([c for c in box.calls if c.method == "POST" and c.path.endswith("/smart-live-jobs")]) == 1
        await asyncio.sleep(0.5)  # paused: the reconciler does not stop it although the schedule says off
        assert len([j for j in box.world.jobs.values() if j.state.active]) == 1
        status, stopped = await daemon.api("POST", f"/api/rooms/{ROOM}/stop")
        assert status == 200 and stopped["job_id"]
        assert not [j for j in box.world.jobs.values() if j.state.active]
        await daemon.api("POST", f"/api/rooms/{ROOM}/resume")
        assert (await daemon.configs.get(ROOM)).paused is False  # type: ignore[union-attr]


async def test_cli_talks_to_the_admin_api(make_settings: Any, tmp_path: Path, sandbox: Any) -> None:
    _, url = sandbox
    rooms_file = tmp_path / "rooms.yaml"
    import yaml

    rooms_file.write_text(yaml.safe_dump({"rooms": [_body()]}))
    async with daemon_for(make_settings, tmp_path, url) as daemon:
        applied = await _cli(daemon.url, "rooms", "apply", str(rooms_file))
        assert applied.returncode == 0, applied.stderr
        assert f"applied {ROOM}" in applied.stdout
        listed = await _cli(daemon.url, "rooms", "list")
        assert json.loads(listed.stdout)["rooms"][0]["room_id"] == ROOM
        shown = await _cli(daemon.url, "rooms", "show", ROOM)
        assert json.loads(shown.stdout)["config"]["room_id"] == ROOM
        assert "sched-stream-key" not in shown.stdout
        sched = tmp_path / "schedule.yaml"
        sched.write_text(
            "timezone: Asia/Shanghai\nwindows:\n  - {kind: cron, start: '0 20 * * *', duration: PT2H}\n"
        )
        assert (await _cli(daemon.url, "schedule", "set", ROOM, str(sched))).returncode == 0
        shown_schedule = json.loads((await _cli(daemon.url, "schedule", "show", ROOM)).stdout)
        assert shown_schedule["schedule"]["timezone"] == "Asia/Shanghai"
        refused = await _cli(daemon.url, "rooms", "start", ROOM)
        assert refused.returncode == 1 and "AUTOMATION_ACTIVE" in refused.stderr
        assert (await _cli(daemon.url, "rooms", "pause", ROOM)).returncode == 0
        bad = tmp_path / "bad.yaml"
        bad.write_text("rooms:\n  - room_id: 'a b'\n    template: {output_urls: []}\n    schedule: {}\n")
        invalid = await _cli(daemon.url, "rooms", "apply", str(bad))
        assert invalid.returncode == 2 and "rooms[0].template.output_urls" in invalid.stderr
        wrong = await _cli(daemon.url, "rooms", "list", token="wrong")
        assert wrong.returncode == 1 and "UNAUTHORIZED" in wrong.stderr


def test_run_refuses_an_invalid_rooms_file(tmp_path: Path) -> None:
    bad = tmp_path / "rooms.yaml"
    bad.write_text(
        "rooms:\n  - room_id: ok\n    template: {output_urls: [rtmp://x]}\n    schedule: {timezone: Nowhere}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")} | {
        "ORCH_SCHEDULING__ROOMS_FILE": str(bad)
    }
    for command in ("run", "check-config"):
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator", command],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert result.returncode == 2, result.stderr
        assert "rooms[0].schedule.timezone" in result.stderr
