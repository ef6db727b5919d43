"""Three replicas on one Redis, reconciling the same room over many windows: one vendor call per action."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from orchestrator.appkeys import SCHEDULER
from orchestrator.providers.metastudio.models import JobState
from tests.scheduling.conftest import daemon_for, managed_room

WINDOWS = 4
LENGTH_S, GAP_S = 1.5, 1.0


async def test_three_replicas_start_and_stop_each_window_exactly_once(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    box, url = sandbox
    first = datetime.now(UTC) + timedelta(seconds=1.5)
    windows = [
        (
            first + timedelta(seconds=i * (LENGTH_S + GAP_S)),
            first + timedelta(seconds=i * (LENGTH_S + GAP_S) + LENGTH_S),
        )
        for i in range(WINDOWS)
    ]
    room = managed_room([{"kind": "once", "start": s.isoformat(), "end": e.isoformat()} for s, e in windows])
    async with AsyncExitStack() as stack:
        replicas = [
            await stack.enter_async_context(daemon_for(make_settings, tmp_path, url)) for _ in range(3)
        ]
        await replicas[0].configs.put(room)  # every replica hears of it (rooms_changed) and schedules it
        for replica in replicas:  # each rebuilt its in-memory APScheduler job from the definition in Redis
            async with asyncio.timeout(2):
                while replica.app[SCHEDULER].next_boundary("demo-room") is None:
                    await asyncio.sleep(0.02)
            assert replica.app[SCHEDULER].next_boundary("demo-room") == windows[0][0]
        await asyncio.sleep((windows[-1][1] - datetime.now(UTC)).total_seconds() + 1.5)
        starts = [c for c in box.calls if c.method == "POST" and c.path.endswith("/smart-live-jobs")]
        stops = [c for c in box.calls if c.method == "POST" and c.path.endswith("/stop")]
        actions = [
            e for e in await replicas[1].store.events("demo-room", limit=1000) if e["kind"] == "action"
        ]
        assert len(starts) == WINDOWS, [(a["action"], a["reason"], a["message"]) for a in actions]
        assert len(stops) == WINDOWS
        for (s, e), start, stop in zip(windows, starts, stops, strict=True):
            assert s.timestamp() - 0.05 <= start.at < e.timestamp(), "each start inside its own window"
            assert e.timestamp() - 0.05 <= stop.at < e.timestamp() + 1.0, "each stop right after its window"
        assert not [j for j in box.world.jobs.values() if j.state.active]  # nothing left running
        assert len(box.world.jobs) == WINDOWS
        assert all(j.state is JobState.SUCCEED for j in box.world.jobs.values())
        actions = [
            e for e in await replicas[1].store.events("demo-room", limit=1000) if e["kind"] == "action"
        ]
        assert [a["action"] for a in actions if a["action"] != "adopt"] == ["start", "stop"] * WINDOWS, [
            (a["action"], a["reason"]) for a in actions
        ]
        assert time.time() >= windows[-1][1].timestamp()
