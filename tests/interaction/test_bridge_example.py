"""The reference bridge in examples/ (issue 16, point 6), run as a bridge author would run it, against a
daemon with a bridge token: every kind of platform message mapped, a resend taken once, a full backlog
waited out (429, Retry-After) without losing the batch."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from orchestrator.app import create_app
from orchestrator.appkeys import REDIS, ROOM_STORE
from orchestrator.store import keys
from tests.support.server import serving

ROOT = Path(__file__).resolve().parents[2]
BRIDGE = ROOT / "examples" / "bridge" / "replay.py"
MESSAGES = ROOT / "examples" / "bridge" / "messages.jsonl"
TOKEN = "example-bridge-token-0001"


async def _run(url: str, room: str, *more: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(BRIDGE), str(MESSAGES), "--room", room, "--url", url, "--token", TOKEN, *more,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_reference_bridge_replays_a_file_once_and_waits_out_a_full_backlog(
    make_settings: Any, tmp_path: Path
) -> None:
    settings = make_settings(
        admin={
            "token": "admin-token-0000",
            "bridges": [{"name": "example", "token": TOKEN, "rooms": ["shop-*"]}],
        },
        interaction={"ingest_backlog_max": 100},
        callbacks={"journal_path": str(tmp_path / "j.jsonl")},
    )
    app = create_app(settings)
    async with serving(app, settings) as url:
        await app[ROOM_STORE].register_room("shop-1")
        code, out, err = await _run(url, "shop-1", "--batch", "100")
        assert code == 0, err
        assert json.loads(out) == {"accepted": 7, "duplicates": 1, "rejected": 0}
        entries = await app[REDIS].xrange(keys.room_ingest("shop-1"))
        kinds = [json.loads(fields[b"event"])["type"] for _, fields in entries]
        assert kinds == [1, 4, 3, 2, 5, 6]  # comment, gift, anonymous like, join, follow, viewers
        assert json.loads(entries[0][1][b"x"]) == {"platform": "douyin"}
        # The whole file again (a bridge restarted from its start): every message a duplicate.
        code, out, _ = await _run(url, "shop-1")
        assert json.loads(out) == {"accepted": 7, "duplicates": 7, "rejected": 0}

        # A full backlog: the bridge waits (429, Retry-After) and its batch goes in once the room drains.
        await app[ROOM_STORE].register_room("shop-2")
        for _ in range(100):
            await app[REDIS].xadd(keys.room_ingest("shop-2"), {"event": b"{}"})
        running = asyncio.create_task(_run(url, "shop-2"))
        await asyncio.sleep(1.5)
        assert not running.done()
        await app[REDIS].xtrim(keys.room_ingest("shop-2"), maxlen=0)  # reported and trimmed
        code, out, err = await running
        assert code == 0, err
        assert json.loads(out)["accepted"] == 7
        assert await app[REDIS].xlen(keys.room_ingest("shop-2")) == 6

        # A room the bridge's token does not name: it stops and says why.
        await app[ROOM_STORE].register_room("other")
        code, _, err = await _run(url, "other")
        assert code != 0 and "ROOM_NOT_ALLOWED" in err
