"""The one ``redis.asyncio.Redis`` client of a process, built from settings.

Commands that fail on a broken connection or a timeout are retried with exponential backoff and jitter
(``EqualJitterBackoff``: half the delay fixed, half random, doubling up to a cap); idle pooled connections
are health-checked before reuse. When Redis is down the client does not die: each command fails after its
retries and the next one reconnects, so the daemon recovers without a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import EqualJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator.settings import RedisSettings, RedisTarget

#: Commands per pipeline when one pass touches every room: packing and parsing a pipeline holds the event
#: loop, so a thousand rooms' commands go in round trips of this many, not in one.
PIPELINE_CHUNK = 100


class NotReplicated(RedisError):
    """A write the master took but fewer replicas than asked confirmed in time (``WAIT``): a failover now
    could lose it, so it is not acknowledged as durable (a callback goes to the journal, a bridge is asked
    to send again)."""


def wait_command(replicas: int, timeout_ms: int) -> bytes:
    """``WAIT replicas timeout_ms`` packed, or nothing when no replica is waited for."""
    return packed("WAIT", replicas, timeout_ms) if replicas > 0 else b""


def check_replicated(acked: Any, replicas: int) -> None:
    """Raise NotReplicated if ``acked`` (WAIT's answer) is fewer than ``replicas``."""
    if int(acked) < replicas:
        raise NotReplicated(f"{int(acked)} of {replicas} Redis replicas confirmed the write in time")


async def run_script_durably(
    redis: aioredis.Redis,
    script: AsyncScript,
    script_keys: Sequence[Any],
    args: Sequence[Any],
    *,
    replicas: int = 0,
    timeout_ms: int = 200,
) -> Any:
    """``script``'s answer; with ``replicas``, only once that many replicas have its writes (``WAIT`` on
    the same connection, one round trip). Raises RedisError, NotReplicated when too few confirmed."""
    if replicas <= 0:
        return await script(keys=script_keys, args=args)
    for attempt in (1, 2):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.evalsha(script.sha, len(script_keys), *script_keys, *args)
            pipe.execute_command("WAIT", replicas, timeout_ms)
            answer, acked = await pipe.execute(raise_on_error=False)
        if isinstance(answer, NoScriptError) and attempt == 1:
            script.sha = await redis.script_load(script.script)
            continue
        if isinstance(answer, Exception):
            raise answer
        if isinstance(acked, Exception):
            raise acked
        check_replicated(acked, replicas)
        return answer
    raise AssertionError("unreachable")


def packed(*args: bytes | str | int) -> bytes:
    """One command in Redis's wire form (RESP), packed once by the caller and sent many times
    (:func:`execute_packed`)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class PackedCommands:
    """Each room's command for a pass over every room, packed once (:func:`packed`) by ``build`` and kept
    (at most ``limit``; beyond, they are packed anew). :meth:`clear` when what they were packed with
    changes (a script's sha, a TTL)."""

    def __init__(self, build: Callable[[str], bytes], *, limit: int = 100_000) -> None:
        self._build = build
        self._limit = limit
        self._packed: dict[str, bytes] = {}

    def __call__(self, room_id: str) -> bytes:
        command = self._packed.get(room_id)
        if command is None:
            if len(self._packed) >= self._limit:
                self._packed.clear()
            command = self._packed[room_id] = self._build(room_id)
        return command

    def clear(self) -> None:
        self._packed.clear()


async def execute_packed(redis: aioredis.Redis, commands: Sequence[bytes]) -> list[Any]:
    """Send commands packed beforehand (:func:`packed`) in one round trip on a pooled connection; their
    replies in order, an error reply as its exception (not raised), replies as Redis gives them (no
    redis-py response callbacks: ``HGETALL`` is a list of pairs in RESP2, a map in RESP3).

    The passes that send the same command for each of a thousand rooms every few seconds (lease renewals,
    the look at every room's state) keep their commands packed: redis-py packed each anew, 20-30 µs of
    the loop per command -- most of the SoftSugar benchmark's idle CPU. A broken connection is retried
    once on a new one (the commands sent this way may run twice: they are renewals and reads). Raises
    RedisError."""
    if not commands:
        return []
    pool = redis.connection_pool
    for attempt in (1, 2):
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(b"".join(commands), check_health=True)
            results: list[Any] = []
            for _ in commands:
                try:
                    results.append(await conn.read_response())
                except ResponseError as exc:
                    results.append(exc)
            return results
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await conn.disconnect()
            if attempt == 2:
                raise
        except BaseException:
            await conn.disconnect()  # a reply half read must not answer the next command
            raise
        finally:
            await pool.release(conn)
    raise AssertionError("unreachable")


def pairs(reply: Any) -> dict[Any, Any]:
    """A hash as :func:`execute_packed` returns ``HGETALL``'s reply (a RESP3 map, or a RESP2 flat list)."""
    if isinstance(reply, dict):
        return reply
    it = iter(reply or [])
    return dict(zip(it, it, strict=False))


def chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    """``items`` in slices of :data:`PIPELINE_CHUNK` (pure)."""
    for start in range(0, len(items), PIPELINE_CHUNK):
        yield items[start : start + PIPELINE_CHUNK]


def create_redis(settings: RedisSettings, *, client_name: str = "orchestrator") -> aioredis.Redis:
    """A client (with its own connection pool) for ``settings.url``; connects lazily, on first command.

    For a Sentinel URL the client asks the sentinels where the master is whenever it opens a connection,
    so after a failover its next connections go to the promoted replica (a connection still open to a
    demoted master is closed on its first READONLY answer)."""
    retry = Retry(
        EqualJitterBackoff(cap=settings.retry_backoff_cap_s, base=settings.retry_backoff_base_s),
        retries=settings.retry_attempts,
        supported_errors=(RedisConnectionError, RedisTimeoutError),
    )
    options: dict[str, Any] = {
        "max_connections": settings.max_connections,
        "timeout": settings.socket_timeout_s,
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.connect_timeout_s,
        "retry": retry,
        # redis-py 5 ignores ``retry`` unless the errors to retry on are also named here.
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": int(settings.health_check_interval_s),
        "client_name": client_name,
        "decode_responses": False,
    }
    target = settings.target
    if target.mode == "sentinel":
        return _sentinel_master(target, options, settings)
    if target.mode == "cluster":
        raise ValueError("redis+cluster:// is served by create_cluster_redis")
    # A blocking pool: when every connection is busy (a burst: a thousand room workers waking at once), a
    # command waits for one -- up to the socket timeout -- instead of failing with "Too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(settings.url.get_secret_value(), **options)
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The master's connections as :class:`SentinelConnectionPool` finds them, handed out as
    :class:`BlockingConnectionPool` does (a caller waits for a free one); closing it closes the clients
    of the sentinels too (they belong to this pool alone)."""

    async def aclose(self) -> None:
        await super().aclose()
        for sentinel in self.sentinel_manager.sentinels:
            await sentinel.aclose()


def _sentinel_master(target: RedisTarget, options: dict[str, Any], settings: RedisSettings) -> aioredis.Redis:
    tls: dict[str, Any] = {}
    if target.ssl:
        tls = {"ssl": True, **({"ssl_ca_certs": target.ssl_ca_certs} if target.ssl_ca_certs else {})}
    sentinel_options: dict[str, Any] = {
        "socket_timeout": settings.connect_timeout_s,
        "socket_connect_timeout": settings.connect_timeout_s,
        "username": target.sentinel_username,
        "password": target.sentinel_password,
        **tls,
    }
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_options)
    master_options = {
        **options,
        "db": target.db,
        "username": target.username,
        "password": target.password,
        **tls,
    }
    return sentinel.master_for(  # type: ignore[no-any-return]
        target.service,
        redis_class=aioredis.Redis,
        connection_pool_class=_BlockingSentinelPool,
        **master_options,
    )


async def redis_ready(client: aioredis.Redis, timeout_s: float) -> tuple[bool, str | None]:
    """``(True, None)`` if Redis answers PING within ``timeout_s``, else ``(False, reason)``.

    Never raises for an unreachable Redis: readiness is a report, not a failure.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await client.ping()
    except TimeoutError:
        return False, f"no answer within {timeout_s:g}s"
    except (RedisError, OSError) as exc:
        return False, type(exc).__name__
    return True, None


def text(value: bytes | str | int | float) -> str:
    """A Redis reply value as text (the client returns bytes: ``decode_responses`` is off)."""
    return value.decode() if isinstance(value, bytes) else str(value)


async def run_script_many(
    redis: aioredis.Redis, script: AsyncScript, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]
) -> list[Any]:
    """Run ``script`` once per ``(keys, args)`` in one pipelined round trip; the results in order
    (:func:`run_scripts`)."""
    return await run_scripts(redis, [(script, script_keys, args) for script_keys, args in calls])


async def run_scripts(
    redis: aioredis.Redis, calls: Sequence[tuple[AsyncScript, Sequence[Any], Sequence[Any]]]
) -> list[Any]:
    """Run each ``(script, keys, args)`` in one pipelined round trip, in order; the results in order.

    redis-py's pipeline asks ``SCRIPT EXISTS`` before every pipeline that calls a registered script -- a
    second round trip each time (on the reply path, every reply queued). Here the calls are ``EVALSHA``
    directly, and only the calls Redis answered ``NOSCRIPT`` (it restarted, or flushed its scripts; such a
    call did nothing) are sent again, in order, once their scripts are loaded. Raises RedisError (a
    script's own error included)."""
    if not calls:
        return []
    results = await _evalsha_pipeline(redis, calls)
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
            script.sha = await redis.script_load(script.script)
        again = await _evalsha_pipeline(redis, [calls[i] for i in missing])
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


async def _evalsha_pipeline(
    redis: aioredis.Redis, calls: Sequence[tuple[AsyncScript, Sequence[Any], Sequence[Any]]]
) -> list[Any]:
    async with redis.pipeline(transaction=False) as pipe:
        for script, script_keys, args in calls:
            pipe.evalsha(script.sha, len(script_keys), *script_keys, *args)
        return list(await pipe.execute(raise_on_error=False))
