"""The one ``redis.asyncio.Redis`` client of a process, built from settings.

Commands that fail on a broken connection or a timeout are retried with exponential backoff and jitter
(``EqualJitterBackoff``: half the delay fixed, half random, doubling up to a cap); idle pooled connections
are health-checked before reuse. When Redis is down the client does not die: each command fails after its
retries and the next one reconnects, so the daemon recovers without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import EqualJitterBackoff
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MaxConnectionsError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
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
    if is_cluster(redis):
        # WAIT counts the writes of its own connection: on a cluster it must follow the script on the
        # connection to the key's master (a cluster pipeline would send it to another node).
        command = [(script_keys[0], packed("EVALSHA", script.sha, len(script_keys), *script_keys, *args))]
        wait = wait_command(replicas, timeout_ms)
        [answer] = await execute_on_nodes(redis, command, wait=wait, replicas=replicas)
        if isinstance(answer, NoScriptError):
            await redis.script_load(script.script)  # every master
            [answer] = await execute_on_nodes(redis, command, wait=wait, replicas=replicas)
        if isinstance(answer, Exception):
            raise answer
        return answer
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


class Packed(bytes):
    """One command in Redis's wire form, with the key that routes it on a Redis Cluster (``key``)."""

    key: bytes


def packed(*args: bytes | str | int) -> Packed:
    """One command in Redis's wire form (RESP), packed once by the caller and sent many times
    (:func:`execute_packed`). Its key (for a cluster's routing) is the first key of an ``EVALSHA``, else
    the command's first argument."""
    parts = [b"*%d\r\n" % len(args)]
    encoded = []
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        encoded.append(data)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    command = Packed(b"".join(parts))
    script = encoded[0].upper() in (b"EVALSHA", b"EVAL")
    command.key = (
        encoded[3]
        if script and len(encoded) > 3 and encoded[2] != b"0"
        else encoded[min(1, len(encoded) - 1)]
    )
    return command


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


async def execute_packed(redis: aioredis.Redis, commands: Sequence[Packed] | Sequence[bytes]) -> list[Any]:
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
    if is_cluster(redis):
        if not all(isinstance(c, Packed) for c in commands):
            raise TypeError("on a Redis Cluster a command is routed by its key: pack it with packed()")
        return await execute_on_nodes(redis, [(cast(Packed, c).key, c) for c in commands])
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


#: Redirections a cluster node answers when a slot is not (or no longer, or not yet) its own.
_REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError)


async def execute_on_nodes(
    redis: aioredis.Redis,
    commands: Sequence[tuple[bytes | str, bytes]],
    *,
    wait: bytes = b"",
    replicas: int = 0,
) -> list[Any]:
    """On a Redis Cluster: send ``(key, packed command)`` pairs, each to the master of its key's slot --
    one round trip per master, the masters at once -- and their replies in order, an error reply as its
    exception (not raised), raw as :func:`execute_packed` gives them. ``wait`` (:func:`wait_command`) is
    sent after each master's commands, and a master whose replicas confirm fewer than ``replicas`` answers
    NotReplicated for each of its commands.

    A command that meets a failover or a slot migration (a broken connection, MOVED, ASK, TRYAGAIN,
    CLUSTERDOWN) is sent again after the slot map is read again, up to three times, a quarter of a second
    apart: a failover takes the cluster's node timeout and an election (seconds), after which the answer
    is the redirection's error. The commands sent this way may run twice: they are writes whose second run
    is recognised (group commits of callbacks carry their ids) or reads and renewals."""
    cluster = cast(RedisCluster, redis)
    results: list[Any] = [None] * len(commands)
    todo = list(range(len(commands)))
    for attempt in range(4):
        if attempt:
            await asyncio.sleep(0.25)
            with contextlib.suppress(RedisError, OSError):
                await cluster.nodes_manager.initialize()
        by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i in todo:
            key = commands[i][0]
            node = cluster.get_node_from_key(key.decode() if isinstance(key, bytes) else key)
            if node is None:
                results[i] = ClusterDownError("no node serves the key's slot")
                continue
            by_node.setdefault(node.name, (node, []))[1].append(i)
        await asyncio.gather(
            *(_send_to_node(node, idx, commands, results, wait, replicas) for node, idx in by_node.values())
        )
        todo = [
            i for i in todo if isinstance(results[i], (*_REDIRECTS, RedisConnectionError, RedisTimeoutError))
        ]
        if not todo:
            break
    return results


async def _send_to_node(
    node: ClusterNode,
    indices: list[int],
    commands: Sequence[tuple[bytes | str, bytes]],
    results: list[Any],
    wait: bytes,
    replicas: int,
) -> None:
    try:
        conn = node.acquire_connection()
    except MaxConnectionsError as exc:
        for i in indices:
            results[i] = RedisConnectionError(str(exc) or "no free connection to the node")
        return
    try:
        await conn.send_packed_command(b"".join(commands[i][1] for i in indices) + wait, check_health=True)
        for i in indices:
            try:
                results[i] = await conn.read_response()
            except ResponseError as exc:
                results[i] = exc
        if wait:
            acked = await conn.read_response()
            with contextlib.suppress(NotReplicated):
                check_replicated(acked, replicas)
                return
            for i in indices:
                if not isinstance(results[i], Exception):
                    results[i] = NotReplicated(
                        f"{int(acked)} of {replicas} Redis replicas confirmed the write in time"
                    )
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        await conn.disconnect()
        for i in indices:
            if results[i] is None or not isinstance(results[i], Exception):
                results[i] = exc if isinstance(exc, RedisError) else RedisConnectionError(str(exc))
    except BaseException:
        await conn.disconnect()  # a reply half read must not answer the next command
        raise
    finally:
        node.release(conn)


async def mget(redis: aioredis.Redis, names: Sequence[str]) -> list[Any]:
    """The values of ``names`` (None where missing), in order; on a Redis Cluster, where one ``MGET``
    cannot span slots, one per slot (not atomic across them)."""
    if not names:
        return []
    if is_cluster(redis):
        return list(await cast(RedisCluster, redis).mget_nonatomic(list(names)))
    return list(await redis.mget(list(names)))


async def xread_many(
    redis: aioredis.Redis, streams: dict[str, str], *, count: int, block_ms: int
) -> list[tuple[bytes, list[Any]]]:
    """``XREAD`` of several streams: ``[(stream, entries), ...]`` for those with entries after the given
    ids, waiting up to ``block_ms`` for any. On a Redis Cluster, whose reads cannot span slots, the streams
    of several slots are read without blocking, one read per slot in one pipeline, every
    :data:`XREAD_POLL_S` until one has entries or the time is up."""
    if not streams:
        return []
    by_slot: dict[int, dict[str, str]] = {}
    if is_cluster(redis):
        for stream, last in streams.items():
            by_slot.setdefault(key_slot(stream.encode()), {})[stream] = last
    if len(by_slot) <= 1:
        return stream_pairs(await redis.xread(streams, count=count, block=block_ms))  # type: ignore[arg-type]
    deadline = asyncio.get_running_loop().time() + block_ms / 1000
    while True:
        async with redis.pipeline(transaction=False) as pipe:
            for group in by_slot.values():
                pipe.xread(group, count=count)  # type: ignore[arg-type]
            answers = await pipe.execute()
        found = [pair for answer in answers for pair in stream_pairs(answer)]
        remaining = deadline - asyncio.get_running_loop().time()
        if found or remaining <= 0:
            return found
        await asyncio.sleep(min(XREAD_POLL_S, remaining))


#: How often :func:`xread_many` asks the streams of several cluster slots while none has anything.
XREAD_POLL_S = 0.1


def stream_pairs(answer: Any) -> list[tuple[bytes, list[Any]]]:
    """An ``XREAD`` answer (a RESP3 map, a RESP2 list of pairs, or None) as a list of pairs."""
    if isinstance(answer, dict):
        return list(answer.items())
    return [(stream, entries) for stream, entries in answer or []]


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
        return _cluster(target, options)
    # A blocking pool: when every connection is busy (a burst: a thousand room workers waking at once), a
    # command waits for one -- up to the socket timeout -- instead of failing with "Too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(settings.url.get_secret_value(), **options)
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def _tls(target: RedisTarget) -> dict[str, Any]:
    """The connection options of a ``rediss+`` URL (none for a plain one)."""
    if not target.ssl:
        return {}
    return {"ssl": True, **({"ssl_ca_certs": target.ssl_ca_certs} if target.ssl_ca_certs else {})}


def is_cluster(redis: aioredis.Redis) -> bool:
    """Whether ``redis`` is a Redis Cluster client (:func:`create_redis` of a ``redis+cluster://`` URL)."""
    return isinstance(redis, RedisCluster)


def _cluster(target: RedisTarget, options: dict[str, Any]) -> aioredis.Redis:
    """A Redis Cluster client: the slot map from the seed nodes, each command sent to its slot's master,
    MOVED and ASK followed, the map read again after a failover. Its type is given as ``aioredis.Redis``:
    it has the same command methods, and the few places that reach under them (a pool, a connection)
    ask :func:`is_cluster` first."""
    tls = _tls(target)
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
        username=target.username,
        password=target.password,
        max_connections=options["max_connections"],
        socket_timeout=options["socket_timeout"],
        socket_connect_timeout=options["socket_connect_timeout"],
        retry=options["retry"],
        health_check_interval=options["health_check_interval"],
        client_name=options["client_name"],
        decode_responses=False,
        **tls,
    )
    return cast(aioredis.Redis, cluster)


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The master's connections as :class:`SentinelConnectionPool` finds them, handed out as
    :class:`BlockingConnectionPool` does (a caller waits for a free one); closing it closes the clients
    of the sentinels too (they belong to this pool alone)."""

    async def aclose(self) -> None:
        await super().aclose()
        for sentinel in self.sentinel_manager.sentinels:
            await sentinel.aclose()


def _sentinel_master(target: RedisTarget, options: dict[str, Any], settings: RedisSettings) -> aioredis.Redis:
    tls = _tls(target)
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
