"""A replica SIGKILLed while it holds a start's fence -- before its vendor call, during a call that hangs,
after the vendor acted -- strands nothing: the next replica goes live one fence lifetime later, and the
window still has exactly one job. (Before: the fence stayed for ``fence_ttl_s``, an hour.)"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from orchestrator.sandbox.metastudio.app import Fault, MetaStudioSandbox
from orchestrator.scheduling.schedules import evaluate
from orchestrator.store import keys
from orchestrator.store.fences import intent_key
from tests.scheduling.conftest import ROOM, managed_room
from tests.scheduling.test_crash import _daemon, _rooms_file, _wait
from tests.support.daemon import Daemon

FENCE_TTL_S = 1.0


def _replica(redis_url: str, sandbox_url: str, rooms: Path, tmp_path: Path) -> Daemon:
    daemon = _daemon(redis_url, sandbox_url, rooms, tmp_path)
    daemon._env["ORCH_SCHEDULING__FENCE_TTL_S"] = str(FENCE_TTL_S)
    return daemon


def _starts(box: MetaStudioSandbox) -> list[Any]:
    return [c for c in box.calls if c.method == "POST" and c.path.endswith("/smart-live-jobs")]


def _active(box: MetaStudioSandbox) -> list[Any]:
    return [j for j in box.world.jobs.values() if j.state.active]


async def _goes_live_once(box: MetaStudioSandbox, replica: Daemon, since: float) -> float:
    """Seconds until the room is live after ``since``; then a few more passes, and still one job."""
    await _wait(lambda: len(_active(box)) == 1, timeout_s=15)
    took = time.monotonic() - since
    await asyncio.sleep(1.5)  # several reconcile passes: nothing more is started
    assert len(box.world.jobs) == 1 and len(_active(box)) == 1, replica.output()[-3000:]
    return took


async def test_killed_before_the_vendor_call(
    redis_url: str, redis_client: aioredis.Redis, sandbox: Any, tmp_path: Path
) -> None:
    """What a kill between taking the fence and sending the start leaves: the fence and its intent, held by
    a token nobody renews (written here as that replica would have written them)."""
    box, url = sandbox
    room = managed_room([{"kind": "always"}])
    window = evaluate(room.schedule, datetime.now(UTC)).window_id
    fence = keys.room_fence(ROOM, "start", window)
    await redis_client.set(fence, "dead-replica", px=int(FENCE_TTL_S * 1000))
    await redis_client.set(intent_key(fence), "dead-replica", px=3_600_000)
    since = time.monotonic()
    with _replica(redis_url, url, _rooms_file(tmp_path, [{"kind": "always"}]), tmp_path) as replica:
        took = await _goes_live_once(box, replica, since)
    assert len(_starts(box)) == 1
    # the orphaned intent made it look at the room's jobs before starting (whatever the dead one sent)
    first_start = box.calls.index(_starts(box)[0])
    assert any(
        c.method == "GET" and c.path.endswith(f"/smart-live-rooms/{ROOM}/smart-live-jobs")
        for c in box.calls[:first_start]
    )
    assert not await redis_client.exists(intent_key(fence))
    print(f"live {took:.2f}s after the orphaned fence was left (fence lifetime {FENCE_TTL_S}s)")


async def test_killed_during_a_hanging_vendor_call(redis_url: str, sandbox: Any, tmp_path: Path) -> None:
    """While the holder lives, its fence lives (renewed: the other replica waits through several fence
    lifetimes); once it is killed, the other replica goes live about one lifetime later."""
    box, url = sandbox
    box.faults.append(Fault(kind="hang", hang_s=6, method="POST", path_contains="/smart-live-jobs"))
    rooms = _rooms_file(tmp_path, [{"kind": "always"}])
    with _replica(redis_url, url, rooms, tmp_path) as first:
        await _wait(lambda: len(_starts(box)) == 1)  # inside the call the vendor does not answer
        with _replica(redis_url, url, rooms, tmp_path) as second:
            await asyncio.sleep(3 * FENCE_TTL_S)
            assert len(_starts(box)) == 1, "the holder is alive: its fence must hold"
            first.proc.kill()  # type: ignore[union-attr]
            first.wait()
            since = time.monotonic()
            assert not box.world.jobs  # the vendor never acted
            took = await _goes_live_once(box, second, since)
    assert took < FENCE_TTL_S + 3
    print(f"live {took:.2f}s after the holder died in a hanging call (fence lifetime {FENCE_TTL_S}s)")


async def test_killed_after_the_vendor_acted(redis_url: str, sandbox: Any, tmp_path: Path) -> None:
    """The vendor started the job, its answer never came back: the next replica adopts that job."""
    box, url = sandbox
    box.faults.append(
        Fault(kind="hang", hang_s=5, after=True, method="POST", path_contains="/smart-live-jobs")
    )
    rooms = _rooms_file(tmp_path, [{"kind": "always"}])
    with _replica(redis_url, url, rooms, tmp_path) as first:
        await _wait(lambda: len(box.world.jobs) == 1)
        first.proc.kill()  # type: ignore[union-attr]
        first.wait()
    since = time.monotonic()
    (started,) = box.world.jobs.values()
    with _replica(redis_url, url, rooms, tmp_path) as second:
        await _goes_live_once(box, second, since)
        assert _active(box)[0].job_id == started.job_id  # adopted, not started again
    assert len(_starts(box)) == 1
