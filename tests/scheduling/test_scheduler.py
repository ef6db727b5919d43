"""The periodic pass's pacing: a fixed delay after each pass, and ``pass_now`` never lost."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from orchestrator.scheduling.scheduler import BoundaryScheduler


class SlowPasses:
    """A reconciler whose every pass takes ``pass_s``; it records when each ran."""

    def __init__(self, pass_s: float) -> None:
        self.pass_s = pass_s
        self.passes: list[tuple[float, float]] = []

    async def reconcile_all(self) -> None:
        started = time.monotonic()
        await asyncio.sleep(self.pass_s)
        self.passes.append((started, time.monotonic()))


class NoRooms:
    async def all(self) -> list[Any]:
        return []


async def test_a_pass_longer_than_the_interval_is_followed_by_a_pause() -> None:
    """Soak finding: at a fixed rate, passes that outgrew their interval ran back to back and took the whole
    event loop from the room leases. The next pass starts one interval after the previous ended."""
    reconciler = SlowPasses(0.35)  # at a fixed rate of 0.1 s, the next tick would come 0.05 s after it
    scheduler = BoundaryScheduler(reconciler, NoRooms(), None, interval_s=0.1)  # type: ignore[arg-type]
    await scheduler.start()
    await asyncio.sleep(1.7)
    await scheduler.aclose()
    passes = reconciler.passes
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(passes)]
    assert 2 <= len(passes) <= 5, passes
    assert all(gap >= 0.09 for gap in gaps), gaps


async def test_pass_now_during_a_pass_runs_the_next_one_at_once() -> None:
    reconciler = SlowPasses(0.3)
    scheduler = BoundaryScheduler(reconciler, NoRooms(), None, interval_s=30)  # type: ignore[arg-type]
    await scheduler.start()
    await asyncio.sleep(0.1)  # the first pass is running
    scheduler.pass_now()
    await asyncio.sleep(0.8)
    await scheduler.aclose()
    assert len(reconciler.passes) == 2, reconciler.passes
    assert reconciler.passes[1][0] - reconciler.passes[0][1] < 0.1
