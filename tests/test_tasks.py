"""Background loops stop when cancelled, even where Python 3.11 and redis-py lose the cancellation.

Soak finding: a room worker's tasks swallowed their cancellation inside redis-py (``asyncio.wait_for``
around every command it sends loses a cancellation on 3.11), kept reporting beside the room's next worker
(events in two batches), held that worker up for the 5 s ``cancel_and_wait`` allowed (the room's waiting
events aged past ``report_max_age_s`` at 150x and were dropped), and were then left running for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import pytest
from pydantic import SecretStr

from orchestrator.settings import RedisSettings
from orchestrator.store import keys
from orchestrator.store.redis import create_redis
from orchestrator.store.rooms import RoomStore
from orchestrator.tasks import cancel_and_wait, checkpoint, in_turns, wait_event


async def test_a_task_that_swallowed_its_cancellation_is_cancelled_again() -> None:
    parked = asyncio.Event()

    async def swallower() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # what a library on 3.11 can do
            await asyncio.sleep(10)
        parked.set()
        await asyncio.Event().wait()  # then waits for something that never comes

    task = asyncio.create_task(swallower())
    await asyncio.sleep(0)
    started = time.monotonic()
    await cancel_and_wait(task, timeout_s=3.0)
    assert parked.is_set()
    assert task.cancelled()
    assert time.monotonic() - started < 0.5


def test_checkpoint_raises_once_the_task_was_cancelled() -> None:
    async def main() -> list[str]:
        seen: list[str] = []

        async def loop() -> None:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                seen.append("swallowed")
            checkpoint()
            seen.append("carried on")

        task = asyncio.create_task(loop())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    assert asyncio.run(main()) == ["swallowed"]


async def test_wait_event_times_out_and_sees_a_set_event() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 5.0) is True
    assert await wait_event(event, None) is True


async def test_loops_of_redis_calls_stop_at_every_cancellation(redis_url: str) -> None:
    """The shape of every daemon loop -- Redis calls through the daemon's own client (socket timeouts set,
    so redis-py sends through ``wait_for``), then a wait for the next wake-up -- cancelled 200 times at
    random moments: each stops within half a second. Without the checkpoint and the redelivery, about one
    cancellation in seven was lost here and its loop ran on."""
    redis = create_redis(RedisSettings(url=SecretStr(redis_url)))
    store = RoomStore(redis)
    await store.register_room("r1")
    wake = asyncio.Event()
    wake.set()
    slow: list[float] = []
    try:
        for _ in range(200):

            async def loop() -> None:
                while True:
                    checkpoint()
                    await store.state("r1")
                    await redis.xadd(keys.room_events("r1"), {"k": "v"}, maxlen=10)
                    await wait_event(wake, None)

            task = asyncio.create_task(loop())
            await asyncio.sleep(random.random() * 0.005)
            started = time.monotonic()
            await cancel_and_wait(task, timeout_s=2.0)
            assert task.done()
            elapsed = time.monotonic() - started
            if elapsed > 0.5:
                slow.append(elapsed)
    finally:
        await redis.aclose()
    assert not slow, slow


async def test_a_pass_in_turns_lets_other_work_run_every_turn_of_items() -> None:
    """``in_turns``: every item, in order, with the event loop's other work run after each ``turn`` of
    them -- not after the whole pass."""
    seen: list[str] = []

    async def other() -> None:
        for _ in range(5):
            seen.append("other")
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)  # the other task has started
    got = []
    async for item in in_turns(range(250), turn=100):
        got.append(item)
        seen.append("item")
    await task
    assert got == list(range(250))
    # 1 "other" before the pass, then one after item 100 and one after item 200.
    first_after = seen.index("item")
    runs = [i for i, s in enumerate(seen) if s == "other" and i > first_after]
    assert seen[first_after:].count("item") == 250
    assert [seen[:i].count("item") for i in runs[:2]] == [100, 200]
