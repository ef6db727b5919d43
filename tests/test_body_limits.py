"""Bodies are read only after authentication, and all bodies being read share one byte budget.

Before: 200 concurrent unauthenticated 1 MiB bodies took the daemon's RSS from 65 to 309 MiB -- every body
was read before the token or signature was looked at.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from orchestrator.web.errors import ApiError
from orchestrator.web.middlewares import BodyBudget
from tests.support.daemon import Daemon

MIB = 1024 * 1024


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_unauthenticated_bodies_are_not_read(redis_url: str, tmp_path: Path) -> None:
    daemon = Daemon(
        env={
            "ORCH_REDIS__URL": redis_url,
            "ORCH_ADMIN__TOKEN": "body-limit-admin-token",
            "ORCH_SERVER__MAX_BODY_BYTES": str(2 * MIB),
            "ORCH_CALLBACKS__JOURNAL_PATH": str(tmp_path / "journal.jsonl"),
            "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__PUBLIC_URL": "https://x.example/callbacks/metastudio/live-events",
            "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__KEYS": json.dumps(["k"]),
        }
    )
    with daemon:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        await asyncio.sleep(0.5)
        before = _rss_mib(pid)
        body = b"x" * MIB
        targets = [
            ("POST", "/api/rooms", {"Authorization": "Bearer wrong"}),
            ("POST", "/api/rooms/r1/events", {}),
            ("POST", "/callbacks/metastudio/live-events", {}),  # no hwSecret/hwTime
            ("POST", "/callbacks/metastudio/interaction/wrong-token", {}),
        ]
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def one(i: int) -> int:
                method, path, headers = targets[i % len(targets)]
                try:
                    async with http.request(
                        method, daemon.base_url + path, data=body, headers=headers
                    ) as resp:
                        return resp.status
                except (aiohttp.ClientError, ConnectionError):
                    return 0  # the daemon closed the connection while we were still sending

            statuses = await asyncio.gather(*(one(i) for i in range(200)))
        peak = _peak_rss_mib(pid)
        print(f"RSS before {before:.0f} MiB, peak during 200 x 1 MiB unauthenticated {peak:.0f} MiB")
        assert set(statuses) <= {401, 404, 0}, statuses
        assert statuses.count(0) < 200
        assert peak - before < 60, (before, peak)


async def test_the_body_budget_waits_then_refuses() -> None:
    budget = BodyBudget(3 * MIB)
    async with budget.reserve(2 * MIB, 1):
        assert budget.used == 2 * MIB
        with pytest.raises(ApiError) as refused:
            async with budget.reserve(2 * MIB, 0.1):
                pass
        assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "1"

        async def later() -> int:
            async with budget.reserve(2 * MIB, 2):
                return budget.used

        waiting = asyncio.create_task(later())
        await asyncio.sleep(0.1)
        assert not waiting.done()  # waits for the first to finish
    assert await waiting == 2 * MIB
    assert budget.used == 0
