"""`orchestrator demo`, run the way the README's quick start runs it, for a short while."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

from orchestrator.settings import RedisSettings
from orchestrator.store import keys
from orchestrator.store.redis import create_redis

ROOT = Path(__file__).resolve().parent.parent


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}


def _steps(out: str) -> dict[str, bool]:
    return {
        "schedule fires": bool(re.search(r"schedule\s+start \(scheduled window began\) → done", out)),
        "job live": "PROCESSING — the room is live" in out,
        "paragraph switches": len(re.findall(r"paragraph\s+\S+ #\d", out)) >= 2,
        "comments posted": "comment " in out,
        "comments reported": bool(re.search(r"reported\s+\d+ audience events .*comment:", out)),
        "reply inserted": "INSERT_PLAY_SCRIPT (" in out,
        "our reply finished": "finished playing (ours)" in out,
    }


def test_quick_start_demo_with_the_embedded_store() -> None:
    """The README's first command: installs into .venv (already there under the tests) and runs."""
    env = {**_clean_env(), "VENV": str(Path(sys.executable).parent.parent)}
    result = subprocess.run(
        ["bash", "scripts/demo.sh", "--duration", "16", "--live-in", "1", "--speed", "6"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    steps = _steps(result.stdout)
    assert all(steps.values()), (steps, result.stdout[-4000:])
    assert "embedded in-memory Redis" in result.stdout
    assert "Bearer $(cat " in result.stdout  # the admin token itself is never printed
    assert "Traceback" not in result.stderr


def test_demo_with_a_real_redis(redis_url: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "demo",
            "--redis-url",
            redis_url,
            "--duration",
            "10",
            "--live-in",
            "1",
        ],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the Redis at --redis-url" in result.stdout
    state = asyncio.run(_room_state(redis_url))  # a client as the daemon makes one: any redis.url form
    assert state[b"job_state"] == b"PROCESSING"
    assert int(state[b"reported"]) > 0


async def _room_state(redis_url: str) -> dict[bytes, bytes]:
    client = create_redis(RedisSettings.model_validate({"url": redis_url}))
    try:
        return dict(await client.hgetall(keys.room_state("demo-room")))
    finally:
        await client.aclose()


def test_demo_rejects_bad_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "demo", "--speed", "0"],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "--speed" in result.stderr


def test_softsugar_demo_tells_the_same_story() -> None:
    """``--vendor softsugar``: the window opens, the session is created, started and live, its owner sends
    heartbeats, comments are answered through the takeover queue and finish playing."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "demo",
            "--vendor",
            "softsugar",
            "--duration",
            "14",
            "--live-in",
            "1",
            "--speed",
            "6",
        ],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    steps = {
        "sandbox": "SoftSugar sandbox on http://127.0.0.1:" in out,
        "schedule fires": bool(re.search(r"schedule\s+start \(scheduled window began\) → done", out)),
        "session created": "the session is created (35)" in out,
        "job live": "PROCESSING — the room is live" in out,
        "heartbeats": len(re.findall(r"heartbeat\s+#\d+ for session", out)) >= 2,
        "comments posted": "comment " in out,
        "takeover queued": "takeover queued (command/queue): " in out,
        "reply playing": "a reply starts playing (36)" in out,
        "reply finished": "a reply finished playing (37)" in out,
    }
    assert all(steps.values()), (steps, out[-4000:])
    assert "Traceback" not in result.stderr
