"""The replica's one reader of ingest streams: every owned room's stream in one ``XREADGROUP``.

It reads only rooms whose worker wants more (a room holding a full batch reads no more: while the vendor
is down the backlog stays in Redis, not in memory) and whose lease this replica may still act on (what it
reads it must report), and hands each room's entries to its worker, one room at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import structlog
from redis.exceptions import RedisError

from orchestrator.interaction.worker import RoomWorker
from orchestrator.store.ingest import IngestStreams
from orchestrator.store.leases import RoomLeases
from orchestrator.tasks import being_cancelled, checkpoint, pause

log = structlog.get_logger(__name__)

READ_BLOCK_MS = 100


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
        self.stopping = False

    async def run(self) -> None:
        """Read until :attr:`stopping` (it stops by itself after its current blocking read: cancelling a
        blocked XREADGROUP is where redis-py can swallow the cancellation)."""
        while not self.stopping:
            checkpoint()
            rooms = [
                room_id
                for room_id, worker in self._workers.items()
                if worker.wants_more() and self._leases.valid(room_id)
            ]
            if not rooms:
                await pause(0.05)
                continue
            try:
                found = await self._streams.read(
                    rooms, self._leases.replica_id, count=self._batch, block_ms=READ_BLOCK_MS
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
                    await asyncio.sleep(0)  # one room at a time: let the others' work in between
                except RedisError as exc:
                    log.warning("cannot acknowledge dropped entries", room_id=room_id, error=str(exc))
