"""The replica's one reader of ingest streams: every owned room's stream in one ``XREADGROUP``.

It reads only rooms whose worker wants more (a room holding a full batch reads no more: while the vendor
is down the backlog stays in Redis, not in memory) and whose lease this replica may still act on (what it
reads it must report), and hands each room's entries to its worker, one room at a time.

The read blocks until an entry arrives in any of its rooms' streams, or :data:`IDLE_BLOCK_MS`: a new entry
ends it at once, and a room that becomes readable meanwhile -- a worker started -- wakes it
(:meth:`IngestReader.wake`), so a long block delays nobody and a thousand idle rooms cost one read a
second. While a room waits with a full batch, the block is :data:`READ_BLOCK_MS`: the room is read again
soon after its batch is sent. (The first SoftSugar benchmark, 1,000 idle live rooms: the reader's
ten reads a second of every stream were a fifth of the daemon's CPU.)

Which rooms to read is worked out again only when it can have changed: a lease gained or lost
(:attr:`RoomLeases.generation`), the earliest lease of those read running out, a worker started or stopped
(:meth:`IngestReader.refresh`), a room's batch filling or a held-back one's being sent. Asking every one of
a thousand workers after every read took ~1.7 ms of the loop per arrival, in the way of its reply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import structlog
from redis.exceptions import RedisError

from orchestrator import clock
from orchestrator.interaction.worker import RoomWorker
from orchestrator.store.ingest import IngestStreams
from orchestrator.store.leases import RoomLeases
from orchestrator.tasks import being_cancelled, checkpoint, pause

log = structlog.get_logger(__name__)

#: The block while a room waits with a full batch (it is not in the read until its batch is sent).
READ_BLOCK_MS = 100
#: The block while every room the replica owns is in the read.
IDLE_BLOCK_MS = 1000
#: A wake that Redis does not answer within this is given up (the read ends by itself).
WAKE_TIMEOUT_S = 0.5


class IngestReader:
    def __init__(
        self,
        streams: IngestStreams,
        leases: RoomLeases,
        workers: Mapping[str, RoomWorker],
        *,
        batch: int,
        on_missing_group: Callable[[], None],
    ) -> None:
        self._streams = streams
        self._leases = leases
        self._workers = workers
        self._batch = batch
        self._on_missing_group = on_missing_group
        self._blocking = streams.blocking_reader()
        self._reading: frozenset[str] = frozenset()  # the rooms of the read in progress
        self.stopping = False
        # What _readable last found, and what it depended on: the leases' generation, the number of
        # workers, the earliest lease among the rooms found (it runs out), and whether it is stale.
        self._found: tuple[list[str], bool] = ([], False)
        self._found_key: tuple[int, int] = (-1, -1)
        self._found_until = 0.0
        self._stale = True

    def _readable(self) -> tuple[list[str], bool]:
        """The rooms to read now, and whether a room waits with a full batch."""
        now = clock.monotonic()
        key = (self._leases.generation, len(self._workers))
        if not self._stale and key == self._found_key and now < self._found_until:
            return self._found
        rooms, held_back = [], False
        until = float("inf")
        valid_until = self._leases.valid_until
        for room_id, worker in self._workers.items():
            deadline = valid_until(room_id)
            if deadline <= now:
                continue
            if worker.wants_more():
                rooms.append(room_id)
                until = min(until, deadline)
            else:
                held_back = True
        self._found, self._found_key, self._found_until = (rooms, held_back), key, until
        self._stale = held_back  # a held-back room is readable again once its batch is sent: look again
        return self._found

    async def refresh(self) -> None:
        """Wake the blocked read if a room it does not read is readable now (a worker started, a lease
        valid again)."""
        self._stale = True
        if self._blocking.blocked and not set(self._readable()[0]) <= self._reading:
            await self.wake()

    async def wake(self) -> None:
        """End the blocked read, if one is."""
        try:
            async with asyncio.timeout(WAKE_TIMEOUT_S):  # Redis away: not its retries' worth of waiting
                await self._blocking.wake()
        except (RedisError, OSError, TimeoutError) as exc:  # the read ends by itself within its block
            log.info("cannot wake the ingest reader", error=str(exc) or type(exc).__name__)

    async def stop(self) -> None:
        """Stop after the current read, ended now."""
        self.stopping = True
        await self.wake()

    async def run(self) -> None:
        """Read until :attr:`stopping` (it stops by itself after its current blocking read -- cancelling a
        blocked XREADGROUP is where redis-py can swallow the cancellation -- which :meth:`stop` ends)."""
        try:
            await self._read_forever()
        finally:
            await self._blocking.aclose()

    async def _read_forever(self) -> None:
        while not self.stopping:
            checkpoint()
            rooms, held_back = self._readable()
            self._reading = frozenset(rooms)
            if not rooms:
                await pause(0.05)
                continue
            try:
                found = await self._blocking.read(
                    rooms,
                    self._leases.replica_id,
                    count=self._batch,
                    block_ms=READ_BLOCK_MS if held_back else IDLE_BLOCK_MS,
                )
            except (RedisError, OSError) as exc:
                if being_cancelled():
                    raise
                if "NOGROUP" in str(exc):  # a stream was deleted: its worker recreates the group
                    self._on_missing_group()
                log.warning("audience reader cannot read ingest streams", error=str(exc))
                await pause(0.5)
                continue
            for room_id, entries in found.items():
                worker = self._workers.get(room_id)
                if worker is None:
                    continue
                try:
                    await worker.take(entries, fresh=True)
                    if not worker.wants_more():  # its batch is full: read it no more until sent
                        self._stale = True
                    await asyncio.sleep(0)  # one room at a time: let the others' work in between
                except RedisError as exc:
                    log.warning("cannot acknowledge dropped entries", room_id=room_id, error=str(exc))
