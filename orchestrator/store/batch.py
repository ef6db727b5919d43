"""Group commit for one Lua script: concurrent calls share one round trip and one script run.

Each caller hands its keys and arguments to :meth:`ScriptBatcher.call` and resumes when *its* batch has
been executed by Redis -- so an acknowledgement still means "durable in Redis", but N concurrent requests
cost one round trip and one ``EVALSHA`` instead of N. Batches form naturally: while one is in flight, the
next requests queue up and leave together.

The script must take its calls as fixed-size blocks -- ``KEYS`` = ``keys_per_call`` keys per call,
``ARGV`` = the number of calls followed by ``args_per_call`` arguments per call -- and return one result
per call. On a Redis Cluster (``cluster=True``) calls are grouped by slot, since one script run must stay
in one slot, and the groups run concurrently; a standalone Redis takes the whole batch in one run.

Each batch runs under one deadline (``timeout_s``); calls that waited longer than that in the queue fail
without running. A Redis that lost its script cache (a restart) is handled by loading the script again.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator.tasks import being_cancelled, cancel_and_wait

log = structlog.get_logger(__name__)

Arg = str | int | float | bytes


@dataclass
class _Call:
    keys: Sequence[str]
    args: Sequence[Arg]
    future: asyncio.Future[Any]
    queued_at: float = field(default_factory=time.monotonic)


class ScriptBatcher:
    """Runs one batch-shaped Lua script for many concurrent callers."""

    def __init__(
        self,
        redis: aioredis.Redis,
        script: str,
        *,
        keys_per_call: int,
        args_per_call: int,
        timeout_s: float = 1.0,
        max_batch: int = 256,
        cluster: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._redis = redis
        self._script = redis.register_script(script)
        self._keys_per_call = keys_per_call
        self._args_per_call = args_per_call
        self._timeout_s = timeout_s
        self._max_batch = max_batch
        self._cluster = cluster
        self._on_batch = on_batch
        self._pending: list[_Call] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def call(self, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """The script's result for this call, once its batch has run.

        Raises RedisError (RedisTimeoutError past the deadline) if Redis did not take it.
        """
        if len(keys) != self._keys_per_call or len(args) != self._args_per_call:
            raise ValueError(f"a call takes {self._keys_per_call} keys and {self._args_per_call} args")
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="script-batcher")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Call(keys, args, future))
        self._wakeup.set()
        return await future

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self._fail(self._pending, RedisError("batcher closed"))
        self._pending = []

    async def _run(self) -> None:
        while True:
            if being_cancelled():
                raise asyncio.CancelledError
            await self._wakeup.wait()
            # One loop iteration's grace: requests whose bytes have already arrived get parsed and join
            # this batch, instead of each leaving alone the moment it is ready.
            await asyncio.sleep(0)
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                await self._execute(batch)

    async def _execute(self, batch: list[_Call]) -> None:
        deadline = time.monotonic() - self._timeout_s
        expired = [c for c in batch if c.queued_at < deadline]
        self._fail(expired, RedisTimeoutError("waited too long for Redis"))
        live = [c for c in batch if c.queued_at >= deadline and not c.future.done()]
        if not live:
            return
        if self._on_batch is not None:
            self._on_batch(len(live))
        groups: dict[int, list[_Call]] = defaultdict(list)
        for call in live:
            groups[key_slot(call.keys[0].encode()) if self._cluster else 0].append(call)
        try:
            async with asyncio.timeout(self._timeout_s):
                await asyncio.gather(*(self._run_group(group) for group in groups.values()))
        except TimeoutError:
            self._fail(live, RedisTimeoutError(f"no answer from Redis within {self._timeout_s:g}s"))
        except (RedisError, OSError) as exc:
            self._fail(live, exc if isinstance(exc, RedisError) else RedisError(str(exc)))

    async def _run_group(self, group: list[_Call]) -> None:
        keys = [key for call in group for key in call.keys]
        args = [len(group), *(arg for call in group for arg in call.args)]
        try:
            results = await self._redis.evalsha(self._script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._redis.script_load(self._script.script)
            results = await self._redis.evalsha(self._script.sha, len(keys), *keys, *args)
        for call, result in zip(group, results, strict=True):
            if not call.future.done():
                call.future.set_result(result)

    @staticmethod
    def _fail(calls: list[_Call], exc: Exception) -> None:
        for call in calls:
            if not call.future.done():
                call.future.set_exception(exc)
