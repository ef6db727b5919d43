"""Group commit for one Lua script: concurrent calls share one pipeline round trip.

Each caller hands its keys and arguments to :meth:`ScriptBatcher.call` and resumes when *its* batch has
been executed by Redis -- so an acknowledgement still means "durable in Redis", but N concurrent requests
cost one round trip instead of N. Batches form naturally: while one pipeline is in flight, the next
requests queue up and leave together. A Redis that lost its script cache (a restart) is handled by
loading the script again and re-running the affected calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import NoScriptError, RedisError

from orchestrator.tasks import being_cancelled

log = structlog.get_logger(__name__)

Arg = str | int | float | bytes


@dataclass
class _Call:
    keys: Sequence[str]
    args: Sequence[Arg]
    future: asyncio.Future[Any]


class ScriptBatcher:
    """Runs one Lua script for many concurrent callers, batched into pipelines (at most ``max_batch``)."""

    def __init__(self, redis: aioredis.Redis, script: str, *, max_batch: int = 256) -> None:
        self._redis = redis
        self._script = redis.register_script(script)
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Call] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.calls = 0

    async def call(self, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """The script's result for these keys and args, once its batch has run.

        Raises RedisError (or a subclass) if Redis failed for this call.
        """
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="script-batcher")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Call(keys, args, future))
        return await future

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(RedisError("batcher closed"))

    async def _run(self) -> None:
        while True:
            if being_cancelled():
                raise asyncio.CancelledError
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [c for c in batch if not c.future.done()]  # callers that gave up (timeout)
            if batch:
                await self._execute(batch)

    async def _execute(self, batch: list[_Call]) -> None:
        self.batches += 1
        self.calls += len(batch)
        try:
            results = await self._pipeline(batch)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                await self._redis.script_load(self._script.script)
                for index, result in zip(
                    missing, await self._pipeline([batch[i] for i in missing]), strict=True
                ):
                    results[index] = result
        except (RedisError, OSError) as exc:
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(exc if isinstance(exc, RedisError) else RedisError(str(exc)))
            return
        for call, result in zip(batch, results, strict=True):
            if call.future.done():
                continue
            if isinstance(result, Exception):
                call.future.set_exception(result)
            else:
                call.future.set_result(result)

    async def _pipeline(self, batch: list[_Call]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for call in batch:
                pipe.evalsha(self._script.sha, len(call.keys), *call.keys, *call.args)
            return list(await pipe.execute(raise_on_error=False))
