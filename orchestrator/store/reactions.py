"""Room reactions, fanned out to every replica through Redis pub/sub.

Something worth reacting to (an RTMP link that ended or stalled, a reply that finished, a job-state change)
is published once on ``orch:reactions`` -- by the callback script, or by :meth:`Reactions.publish`. Each
replica runs one listener that hands every reaction to its in-process subscribers (one queue each), so
later features react without polling. The listener survives Redis outages: it reconnects with backoff.

Pub/sub is at-most-once: a replica that is disconnected misses reactions meanwhile. That is acceptable
because every reaction is also visible as state (the reconciler re-reads state on its own schedule).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from orchestrator.store import keys
from orchestrator.tasks import being_cancelled, cancel_and_wait, checkpoint, pause

log = structlog.get_logger(__name__)

Reaction = dict[str, Any]


class Reactions:
    def __init__(self, redis: aioredis.Redis, *, queue_size: int = 1000) -> None:
        self._redis = redis
        self._queue_size = queue_size
        self._subscribers: set[asyncio.Queue[Reaction]] = set()
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def publish(self, kind: str, **fields: Any) -> None:
        await self._redis.publish(keys.reactions_channel(), json.dumps({"kind": kind, **fields}))

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[Reaction]]:
        """A queue receiving every reaction from now on (the oldest are dropped if it is not read)."""
        queue: asyncio.Queue[Reaction] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="reactions-listener")

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _listen_forever(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._listen()
            except (RedisError, OSError) as exc:
                if being_cancelled():
                    raise
                delay = 0.1 if self.connected.is_set() else min(delay * 2, 5.0)
                self.connected.clear()
                log.warning("reactions listener lost Redis; reconnecting", error=str(exc), retry_in_s=delay)
                await pause(delay)

    async def _listen(self) -> None:
        async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(keys.reactions_channel())
            self.connected.set()
            while True:
                checkpoint()
                message = await pubsub.get_message(timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                try:
                    reaction = json.loads(message["data"])
                except ValueError:
                    continue
                self._dispatch(reaction)

    def _dispatch(self, reaction: Reaction) -> None:
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(reaction)
