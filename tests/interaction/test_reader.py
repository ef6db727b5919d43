"""The replica's ingest reader against a real Redis: which rooms it reads, and how seldom it works that out."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import redis.asyncio as aioredis

from orchestrator.interaction.reader import IngestReader
from orchestrator.interaction.worker import RoomWorker
from orchestrator.store import keys
from orchestrator.store.events import RoomEvents
from orchestrator.store.ingest import Entry, IngestStreams
from orchestrator.store.leases import RoomLeases

ROOMS = [f"reader-room-{i:02d}" for i in range(50)]


class Worker:
    """A room worker as the reader sees it (whether it wants more, and what it is handed), counting how
    often it is asked."""

    def __init__(self) -> None:
        self.asked = 0
        self.full = False
        self.taken: list[Entry] = []

    def wants_more(self) -> bool:
        self.asked += 1
        return not self.full

    async def take(self, entries: list[Entry], *, fresh: bool) -> None:
        self.taken += entries


async def until(condition: Any, timeout_s: float = 3.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def test_the_reader_works_out_its_rooms_when_they_can_change_not_on_every_read(
    redis_client: aioredis.Redis,
) -> None:
    """Soak of the SoftSugar benchmark: asking each of 1,000 workers whether it wants more after every read
    held the loop ~1.7 ms per arrival. Now it is asked again only when the answer can have changed -- and a
    full room, a lost lease, a room readable again are still noticed."""
    streams = IngestStreams(redis_client, RoomEvents(redis_client))
    leases = RoomLeases(redis_client, ttl_s=30.0)
    workers = {room_id: Worker() for room_id in ROOMS}
    for room_id in ROOMS:
        await streams.ensure_group(room_id)
    await leases.acquire(ROOMS)
    reader = IngestReader(
        streams, leases, cast(dict[str, RoomWorker], workers), batch=10, on_missing_group=lambda: None
    )
    task = asyncio.create_task(reader.run())

    async def arrive(room_id: str) -> None:
        await redis_client.xadd(keys.room_ingest(room_id), {"event": b"{}"})

    try:
        for i in range(40):  # forty arrivals, each its own read
            room = workers[ROOMS[i % len(ROOMS)]]
            before = len(room.taken)
            await arrive(ROOMS[i % len(ROOMS)])
            await until(lambda room=room, before=before: len(room.taken) > before)  # type: ignore[misc]
        asked = sum(w.asked for w in workers.values())
        assert asked <= 2 * len(ROOMS) + 40, asked  # once, and each room handed entries; not 50 per read

        # A room whose batch is full is read no more until it wants more again.
        full = workers[ROOMS[5]]
        full.full = True
        await arrive(ROOMS[5])
        await until(lambda: len(full.taken) == 2)  # read once more (it was readable), then held back
        await arrive(ROOMS[5])
        await asyncio.sleep(0.3)
        assert len(full.taken) == 2
        full.full = False  # its batch was sent
        await until(lambda: len(full.taken) == 3)

        # A lost lease: the room is not read.
        await leases.release(ROOMS[7])
        await arrive(ROOMS[8])  # a read that starts after the release
        await until(lambda: len(workers[ROOMS[8]].taken) == 2)
        await arrive(ROOMS[7])
        await asyncio.sleep(0.3)
        assert len(workers[ROOMS[7]].taken) == 1
    finally:
        await reader.stop()
        await task
