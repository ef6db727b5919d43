"""Group commit for one Lua script: concurrent calls share one round trip and one script run.

Each caller hands its keys and arguments to :meth:`ScriptBatcher.call` and resumes when *its* batch has
been executed by Redis -- so an acknowledgement still means "durable in Redis", but N concurrent requests
cost one round trip and one ``EVALSHA`` instead of N. Batches form naturally: while one is in flight, the
next requests queue up and leave together.

The script must take its calls as fixed-size blocks -- ``KEYS`` = ``keys_per_call`` keys per call,
``ARGV`` = the number of calls followed by ``args_per_call`` arguments per call -- and return one result
per call. On a Redis Cluster, where one run must stay in one hash slot, a batch is one run per slot, each
sent to its slot's master (the runs of one master in one round trip).

With ``wait_replicas`` the batch's ``EVALSHA`` is followed by ``WAIT`` on the same connection: its callers
resume with NotReplicated unless that many replicas confirmed the batch within ``wait_timeout_ms``.

Each batch runs under one deadline (``timeout_s``); calls that waited longer than that in the queue fail
without running. A Redis that lost its script cache (a restart) is handled by loading the script again (a
pooled connection that a restart closed is replaced by the pool when it is checked out).

The batch's ``EVALSHA`` is encoded here and sent on a pooled connection (``send_packed_command`` /
``read_response``), not through ``Redis.evalsha``: a batch carries hundreds of arguments, and redis-py's
general-purpose encoder, which checks each one's type and chunks the output, cost a third of the callback
receiver's Redis-side time (``benchmarks/callbacks``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import redis.asyncio as aioredis
import structlog
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator.store.redis import check_replicated, execute_on_nodes, is_cluster, wait_command
from orchestrator.tasks import cancel_and_wait, checkpoint

log = structlog.get_logger(__name__)

Arg = str | int | float | bytes


class _Call(NamedTuple):
    keys: Sequence[str]
    args: Sequence[Arg]
    future: asyncio.Future[Any]
    queued_at: float


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
        repeated_keys: int = 0,
        on_batch: Callable[[int], None] | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 200,
    ) -> None:
        self._redis = redis
        self._wait = wait_command(wait_replicas, wait_timeout_ms)
        self._wait_replicas = wait_replicas
        self._script = redis.register_script(script)
        self._keys_per_call = keys_per_call
        self._args_per_call = args_per_call
        self._timeout_s = timeout_s
        self._max_batch = max_batch
        self._sha_bulk = _bulk(self._script.sha)
        self._repeated_keys = repeated_keys
        self._encoded_keys: dict[str, bytes] = {}
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
        self._pending.append(_Call(keys, args, future, time.monotonic()))
        self._wakeup.set()
        return await future

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self._fail(self._pending, RedisError("batcher closed"))
        self._pending = []

    async def _run(self) -> None:
        while True:
            checkpoint()
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
        if is_cluster(self._redis):
            await self._execute_by_slot(live)
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                results = await self._evalsha(self._pack(live))
            if not isinstance(results, list) or len(results) != len(live):
                raise RedisError(f"the script answered {results!r:.80} for {len(live)} calls")
        except TimeoutError:
            self._fail(live, RedisTimeoutError(f"no answer from Redis within {self._timeout_s:g}s"))
        except (RedisError, OSError) as exc:
            self._fail(live, exc if isinstance(exc, RedisError) else RedisError(str(exc)))
        else:
            for call, result in zip(live, results, strict=True):
                if not call.future.done():
                    call.future.set_result(result)

    async def _execute_by_slot(self, live: list[_Call]) -> None:
        """On a Redis Cluster: one script run per hash slot (a run must stay in one), the runs of each
        master sent together, the masters at once (:func:`execute_on_nodes`); each slot's callers get its
        outcome, so one slot failing over fails only its own calls."""
        by_slot: dict[int, list[_Call]] = {}
        for call in live:
            by_slot.setdefault(key_slot(call.keys[0].encode()), []).append(call)
        groups = list(by_slot.values())
        try:
            async with asyncio.timeout(self._timeout_s):
                commands = [(group[0].keys[0], self._pack(group)) for group in groups]
                answers = await execute_on_nodes(
                    self._redis, commands, wait=self._wait, replicas=self._wait_replicas
                )
                if any(isinstance(a, NoScriptError) for a in answers):
                    await self._redis.script_load(self._script.script)  # every master
                    answers = await execute_on_nodes(
                        self._redis, commands, wait=self._wait, replicas=self._wait_replicas
                    )
        except TimeoutError:
            self._fail(live, RedisTimeoutError(f"no answer from Redis within {self._timeout_s:g}s"))
            return
        except (RedisError, OSError) as exc:
            self._fail(live, exc if isinstance(exc, RedisError) else RedisError(str(exc)))
            return
        for group, answer in zip(groups, answers, strict=True):
            if isinstance(answer, Exception) or not isinstance(answer, list) or len(answer) != len(group):
                failure = (
                    answer
                    if isinstance(answer, RedisError)
                    else RedisError(f"the script answered {answer!r:.80}")
                )
                self._fail(group, failure)
                continue
            for call, result in zip(group, answer, strict=True):
                if not call.future.done():
                    call.future.set_result(result)

    def _pack(self, calls: list[_Call]) -> bytes:
        """The batch's ``EVALSHA sha numkeys KEYS... count ARGS...`` in RESP."""
        n_keys = len(calls) * self._keys_per_call
        n_args = 1 + len(calls) * self._args_per_call
        parts = [b"*%d\r\n$7\r\nEVALSHA\r\n" % (3 + n_keys + n_args), self._sha_bulk, _bulk(n_keys)]
        encoded, repeated = self._encoded_keys, self._repeated_keys
        if len(encoded) > _MAX_ENCODED_KEYS:
            encoded.clear()
        for call in calls:
            for key in call.keys[:repeated]:
                bulk = encoded.get(key)
                if bulk is None:
                    bulk = encoded[key] = _bulk(key)
                parts.append(bulk)
            parts.extend(map(_bulk, call.keys[repeated:]))
        parts.append(_bulk(len(calls)))
        for call in calls:
            parts.extend(map(_bulk, call.args))
        return b"".join(parts)

    async def _evalsha(self, command: bytes) -> Any:
        try:
            return await self._send(command)
        except NoScriptError:
            await self._redis.script_load(self._script.script)
            return await self._send(command)

    async def _send(self, command: bytes) -> Any:
        pool = self._redis.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(command + self._wait)
            if not self._wait:
                return await connection.read_response()
            try:
                result = await connection.read_response()
            except ResponseError as exc:  # the script's error (NOSCRIPT); WAIT's answer follows it
                await connection.read_response()
                raise exc from None
            check_replicated(await connection.read_response(), self._wait_replicas)
            return result
        finally:
            await pool.release(connection)  # redis-py disconnects a connection whose read was interrupted

    @staticmethod
    def _fail(calls: list[_Call], exc: Exception) -> None:
        for call in calls:
            if not call.future.done():
                call.future.set_exception(exc)


#: Encoded keys kept for reuse (``repeated_keys``): six per room, so tens of thousands of rooms' worth.
_MAX_ENCODED_KEYS = 100_000


def _bulk(value: Arg) -> bytes:
    """One RESP bulk string (numbers as their decimal text, as redis-py sends them)."""
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)
