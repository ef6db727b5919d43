"""The daemon as a process: graceful shutdown on SIGTERM, surviving a Redis outage, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import redis

from tests.support.daemon import Daemon
from tests.support.redis_server import RedisServer


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_sigterm_lets_inflight_request_finish_then_exits_0(
    controllable_redis: RedisServer, redis_url: str
) -> None:
    # /readyz PINGs Redis; DEBUG SLEEP makes Redis (and so the request) slow for 2 s.
    env = {"ORCH_REDIS__URL": redis_url, "ORCH_REDIS__READINESS_TIMEOUT_S": "10"}
    with Daemon(env) as daemon:
        blocker = redis.Redis.from_url(redis_url)
        sleeper = asyncio.create_task(asyncio.to_thread(blocker.execute_command, "DEBUG", "SLEEP", "2"))
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as http:
            slow = asyncio.create_task(http.get(f"{daemon.base_url}/readyz"))
            await asyncio.sleep(0.3)  # the request is in flight, waiting on Redis
            started = time.monotonic()
            daemon.terminate()
            await asyncio.sleep(0.3)
            # The listener is closed: new connections are refused while the old request finishes.
            with pytest.raises(aiohttp.ClientConnectionError):
                await http.get(f"{daemon.base_url}/healthz")
            resp = await slow
            body = await resp.json()
            assert resp.status in (200, 503)  # 503 "draining" is the honest answer during shutdown
            assert body["checks"]["redis"]["ok"] is True
            assert body["draining"] is True
        code = await asyncio.to_thread(daemon.wait, 30)
        assert code == 0, daemon.output()
        assert time.monotonic() - started < 10
        await sleeper
        blocker.close()
        events = [json.loads(line)["event"] for line in daemon.output().splitlines() if line.startswith("{")]
        assert events.index("shutting down") < events.index("redis client closed") < events.index("stopped")


async def test_daemon_survives_redis_outage(controllable_redis: RedisServer, redis_url: str) -> None:
    env = {"ORCH_REDIS__URL": redis_url, "ORCH_REDIS__READINESS_TIMEOUT_S": "0.5"}
    with Daemon(env) as daemon:
        assert _get(f"{daemon.base_url}/readyz")[0] == 200
        controllable_redis.stop()
        for _ in range(3):
            status, body = await asyncio.to_thread(_get, f"{daemon.base_url}/readyz")
            assert status == 503, body
            assert body["ready"] is False and body["checks"]["redis"]["ok"] is False
            assert (await asyncio.to_thread(_get, f"{daemon.base_url}/healthz"))[0] == 200
        controllable_redis.start()
        deadline = time.monotonic() + 10
        while (await asyncio.to_thread(_get, f"{daemon.base_url}/readyz"))[0] != 200:
            assert time.monotonic() < deadline, "daemon did not become ready after Redis came back"
            await asyncio.sleep(0.1)
        assert daemon.proc is not None and daemon.proc.poll() is None  # same process, never restarted
        daemon.terminate()
        assert daemon.wait() == 0


def test_port_in_use_exits_1(redis_url: str, tmp_path: Path) -> None:
    with Daemon({"ORCH_REDIS__URL": redis_url}) as first:
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator", "run", "--port", str(first.port), "--log-format", "json"],
            env={
                **os.environ,
                "ORCH_REDIS__URL": redis_url,
                "ORCH_CALLBACKS__JOURNAL_PATH": str(tmp_path / "j"),
            },
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1, result.stderr
        assert "cannot serve" in result.stderr


def test_a_second_replica_on_the_same_journal_is_refused(redis_url: str, tmp_path: Path) -> None:
    """Soak finding: three replicas started from one directory shared the default journal path; one's replay
    rewrote the file while another appended, and an acknowledged callback was lost. Now the second is
    refused at start, saying why."""
    journal = f"{tmp_path}/journal.jsonl"
    env = {"ORCH_REDIS__URL": redis_url, "ORCH_CALLBACKS__JOURNAL_PATH": journal}
    with Daemon(env):
        second = subprocess.run(
            [sys.executable, "-m", "orchestrator", "run", "--port", "0", "--log-format", "json"],
            env={**{k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert second.returncode == 2, second.stdout + second.stderr
    line = json.loads((second.stdout + second.stderr).strip().splitlines()[-1])
    assert line["event"] == "cannot start" and "in use by another process" in line["error"]
    assert "Traceback" not in second.stdout + second.stderr
