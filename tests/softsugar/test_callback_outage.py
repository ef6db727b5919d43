"""Redis goes away while SoftSugar's status callbacks arrive: each is journaled (fsync'd) and answered 200,
then replayed when Redis returns -- applied exactly once, through the same pipeline as MetaStudio's."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.app import create_app
from orchestrator.appkeys import ROOM_STORE
from tests.support.redis_server import RedisServer, free_port
from tests.support.server import serving

ROOM, SESSION = "ss-outage", "9f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"
TOKEN = "softsugar-callback-token-outage-0001"
ADMIN = "admin-token-softsugar-outage"


async def test_redis_outage_mid_stream_loses_and_duplicates_nothing(
    controllable_redis: RedisServer, make_settings: Any, tmp_path: Path
) -> None:
    port, journal = free_port(), tmp_path / "journal.jsonl"
    settings = make_settings(
        admin={"token": ADMIN},
        softsugar={"callback_token": TOKEN},
        callbacks={"journal_path": str(journal), "write_timeout_s": 0.3},
        redis={
            "retry_attempts": 1,
            "socket_timeout_s": 0.3,
            "connect_timeout_s": 0.3,
            "readiness_timeout_s": 0.3,
        },
    )
    app = create_app(settings)
    async with serving(app, settings, port=port) as url, aiohttp.ClientSession() as http:
        store = app[ROOM_STORE]
        await store.register_room(ROOM)
        await store.set_current_job(ROOM, SESSION)
        traces = [f"{i:032x}" for i in range(30)]
        for trace in traces:
            await store.add_reply(ROOM, trace)
        outcomes: list[str] = []

        async def send(i: int) -> None:
            # Each takeover: started (36), then finished (37) -- or failed (39) for every fifth.
            trace = traces[i // 2]
            status = 36 if i % 2 == 0 else (39 if (i // 2) % 5 == 0 else 37)
            body: dict[str, Any] = {
                "sessionId": SESSION,
                "status": status,
                "commandTraceId": trace,
                "userData": ROOM,
            }
            if status in (37, 39):
                body["commandFinishTime"] = f"2026-12-07 10:{i // 60:02d}:{i % 60:02d}"
            if status == 39:
                body["taskResult"] = "synthesis failed"
            async with http.post(f"{url}/callbacks/softsugar/{TOKEN}", json=body) as resp:
                answer = await resp.json()
                assert resp.status == 200, answer  # never an error: durable in Redis or in the journal
                outcomes.append(answer["outcome"])

        for i in range(20):
            await send(i)
        controllable_redis.stop(save=True)  # Redis goes away (its data survives, as in production)
        await asyncio.gather(*(send(i) for i in range(20, 40)))  # concurrent, while Redis is down
        assert outcomes.count("journaled") >= 15
        assert journal.exists() and journal.stat().st_size > 0
        controllable_redis.start()
        for i in range(40, 60):
            await send(i)
        async with asyncio.timeout(15):  # the replay loop notices within a second or two
            while journal.exists() and journal.read_bytes().strip():
                await asyncio.sleep(0.1)
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with http.get(f"{url}/api/rooms/{ROOM}", headers=headers) as resp:
            state = await resp.json()
        assert state["counters"] == {"status_36": 30, "status_37": 24, "status_39": 6}
        assert state["replies_in_flight"] == []  # every reply ended, once
        async with http.get(f"{url}/api/rooms/{ROOM}/events?limit=1000", headers=headers) as resp:
            events = (await resp.json())["events"]
        seen = [(e["event_type"], e["message"]["commandTraceId"]) for e in events if e["kind"] == "callback"]
        assert len(seen) == len(set(seen)) == 60  # each callback exactly once
