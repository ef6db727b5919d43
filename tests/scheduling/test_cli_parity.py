"""The console's read-outs from a terminal: ``rooms status`` (a table, the next boundary in the room's zone),
``replies`` (list, send, cancel, clear), ``events tail`` (and ``--follow``), ``console-link`` -- against a
running daemon, with the connection options before or after the action."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from orchestrator.admin_cli import event_line, status_table
from orchestrator.cli import build_parser
from orchestrator.scheduling.actions import Action
from tests.scheduling.conftest import ADMIN, ROOM, daemon_for, managed_room
from tests.scheduling.test_admin import _cli


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}


async def test_rooms_status_replies_events_and_a_console_link(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    async with daemon_for(make_settings, tmp_path, sandbox[1]) as daemon:
        await daemon.configs.put(
            managed_room(
                [],
                name="Shoes",
                paused=True,
                schedule={
                    "timezone": "Asia/Shanghai",
                    "windows": [{"kind": "cron", "start": "0 20 * * *", "duration": "PT2H"}],
                },
            )
        )
        status = await _cli(daemon.url, "rooms", "status")
        assert status.returncode == 0, status.stderr
        header, row = status.stdout.splitlines()
        assert header.split()[:5] == ["ROOM", "NAME", "VENDOR", "STATE", "SINCE"]
        assert row.split()[:4] == [ROOM, "Shoes", "metastudio", "paused"]
        assert "20:00 Asia/Shanghai" in row  # the next boundary, in the room's own zone

        # Options after the action work as well as before it.
        env = _env()
        after = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "orchestrator",
                "rooms",
                "status",
                "--json",
                "--api",
                daemon.url,
                "--token",
                ADMIN,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert after.returncode == 0 and '"status": "paused"' in after.stdout

        sent = await _cli(daemon.url, "replies", "send", ROOM, "大家好，欢迎来到直播间")
        assert sent.returncode == 0 and sent.stdout.startswith("queued: "), sent.stdout + sent.stderr
        reply_id = sent.stdout.split(": ")[1].strip()
        listed = await _cli(daemon.url, "replies", "list", ROOM)
        assert f"waiting  [operator] 大家好，欢迎来到直播间  ({reply_id})" in listed.stdout
        cancelled = await _cli(daemon.url, "replies", "cancel", ROOM, reply_id)
        assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"cancelled {reply_id}"
        again = await _cli(daemon.url, "replies", "cancel", ROOM, reply_id)
        assert again.returncode == 1 and "REPLY_NOT_WAITING" in again.stderr
        assert (await _cli(daemon.url, "replies", "list", ROOM)).stdout.strip() == "nothing waits or plays"
        cleared = await _cli(daemon.url, "replies", "clear", ROOM)
        assert cleared.returncode == 0 and cleared.stdout.startswith("dropped 0")

        tail = await _cli(daemon.url, "events", "tail", ROOM, "-n", "5")
        assert tail.returncode == 0
        kinds = [line.split()[1] for line in tail.stdout.splitlines()]
        assert kinds[-2:] == ["reply_cancelled", "replies_cleared"]  # the latest, oldest first

        # --follow: the backlog, then what happens while it runs.
        follow = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "events",
                "tail",
                ROOM,
                "-n",
                "1",
                "--follow",
                "--api",
                daemon.url,
                "--token",
                ADMIN,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            first = await asyncio.to_thread(follow.stdout.readline)  # type: ignore[union-attr]
            assert "replies_cleared" in first
            status_, _ = await daemon.api("POST", f"/api/rooms/{ROOM}/resume")
            assert status_ == 200
            room = await daemon.configs.get(ROOM)
            assert room is not None
            await daemon.reconciler.actions.record(room, Action("refresh", "a test"), "done")
            line = await asyncio.wait_for(asyncio.to_thread(follow.stdout.readline), 15)  # type: ignore[union-attr]
            assert "action" in line and "reason=a test" in line
        finally:
            follow.terminate()
            follow.wait(10)

        link = await _cli(daemon.url, "console-link")
        assert link.returncode == 0 and link.stdout.startswith(f"{daemon.url}/console/login?once=")
        missing = await _cli(daemon.url, "events", "tail", "no-such-room")
        assert missing.returncode == 1 and "ROOM_NOT_FOUND" in missing.stderr


def test_global_options_before_or_after_every_new_action() -> None:
    parser = build_parser()
    for argv in (
        ["rooms", "status"],
        ["replies", "list", "r1"],
        ["replies", "send", "r1", "hi"],
        ["replies", "cancel", "r1", "x"],
        ["replies", "clear", "r1"],
        ["events", "tail", "r1"],
    ):
        after = parser.parse_args([*argv, "--api", "http://h:1", "--token", "t"])
        before = parser.parse_args([argv[0], "--api", "http://h:1", "--token", "t", *argv[1:]])
        assert (after.api, after.token) == (before.api, before.token) == ("http://h:1", "t"), argv


def test_the_table_and_the_lines_read_well() -> None:
    tiles = [
        {
            "room_id": "r1",
            "name": None,
            "vendor": "softsugar",
            "status": "live",
            "paused": True,
            "since_ms": 1_000_000,
            "next_boundary_local": "2026-12-07T22:00:00+08:00",
            "timezone": "Asia/Shanghai",
            "open_alerts": ["restarted"],
        }
    ]
    table = status_table(tiles, 1_000 + 3 * 3600 + 120).splitlines()
    assert table[1].split() == [
        "r1",
        "-",
        "softsugar",
        "live",
        "(paused)",
        "3h02m",
        "ago",
        "2026-12-07",
        "22:00",
        "Asia/Shanghai",
        "restarted",
    ]
    assert status_table([], 0) == "no managed rooms"
    line = event_line(
        {
            "kind": "callback",
            "event_type": "RTMP_STREAM_STATE_CHANGE",
            "event_ms": "0",
            "message": {"output_url": "rtmp://a", "state": "CONNECTED"},
        }
    )
    assert line == "00:00:00  RTMP_STREAM_STATE_CHANGE output_url=rtmp://a state=CONNECTED"
