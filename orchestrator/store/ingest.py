"""Rooms' ingest streams, as the audience pipeline reads and reports them.

Each room's audience events wait in ``orch:{room}:ingest`` (written by the ingest script: ``RoomStore.ingest``
for HTTP, or a bridge's own ``XADD``). The room's owner reads them through one consumer group
(``reporter``; consumer = replica id), reports them in batches, and acknowledges each batch once the vendor
took it. A batch about to be sent is *marked* in ``orch:{room}:report`` (id, first and last entry), so a
successor can resend exactly that batch.

Fields of an entry: ``event`` (the event in wire form -- ``{"timestamp", "type", "content": JSON
string}``, as the daemon writes it), or ``raw`` (a bridge's event, in the form ``POST
/api/rooms/{room}/events`` takes); ``d`` = ``1`` when the owner already decided replies for it at ingest.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

from orchestrator.store import keys, scripts
from orchestrator.store.events import RoomEvents
from orchestrator.store.redis import (
    Packed,
    PackedCommands,
    chunks,
    execute_on_nodes,
    execute_packed,
    is_cluster,
    packed,
    stream_pairs,
    text,
)

GROUP = "reporter"

Entry = tuple[Any, Mapping[Any, Any]]


class Marker(NamedTuple):
    batch_id: str
    first: str
    last: str


class IngestStreams:
    """Reads, claims, marks and acknowledges rooms' ingest streams (consumer group :data:`GROUP`)."""

    def __init__(self, redis: aioredis.Redis, events: RoomEvents) -> None:
        self._redis = redis
        self._events = events
        self._mark = redis.register_script(scripts.source("report_mark_batch"))
        self._ack_and_trim_source = scripts.source("report_ack_and_trim")
        self._ack_and_trim = redis.register_script(self._ack_and_trim_source)
        self._swap_url = redis.register_script(scripts.source("report_url_swap"))
        self._strays_idle_ms = 0
        self._strays_question = PackedCommands(
            lambda room_id: packed(
                "XPENDING", keys.room_ingest(room_id), GROUP, "IDLE", self._strays_idle_ms, "-", "+", 1000
            )
        )

    async def ensure_group(self, room_id: str) -> None:
        """The room's stream and its consumer group, created if missing (reading from the start)."""
        try:
            await self._redis.xgroup_create(keys.room_ingest(room_id), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def blocking_reader(self) -> BlockingReader | PollingReader:
        """A reader with a connection of its own, whose blocked read another task can end (:meth:`wake`);
        on a Redis Cluster, where one read cannot span slots, a reader that polls each room's stream."""
        if is_cluster(self._redis):
            return PollingReader(self._redis)
        return BlockingReader(self._redis)

    async def claim_all(self, room_id: str, consumer: str) -> list[Entry]:
        """Every entry the group delivered and nobody acknowledged (a predecessor's), oldest first."""
        stream, start, claimed = keys.room_ingest(room_id), "0-0", []
        while True:
            answer = await self._redis.xautoclaim(
                stream, GROUP, consumer, min_idle_time=0, start_id=start, count=1000
            )
            start, entries = text(answer[0]), answer[1]
            claimed += entries
            if start == "0-0" or not entries:
                return claimed

    async def claim_strays(self, room_id: str, consumer: str, min_idle_ms: int) -> list[Entry]:
        """Entries another consumer was delivered and has left unacknowledged for ``min_idle_ms``."""
        stream = keys.room_ingest(room_id)
        pending = await self._redis.xpending_range(
            stream, GROUP, min="-", max="+", count=1000, idle=min_idle_ms
        )
        ids: list[bytes | str | int | memoryview[int]] = [
            p["message_id"] for p in pending if text(p["consumer"]) != consumer
        ]
        if not ids:
            return []
        return cast(
            list[Entry],
            await self._redis.xclaim(stream, GROUP, consumer, min_idle_time=min_idle_ms, message_ids=ids),
        )

    async def own_idle(self, room_ids: list[str], consumer: str, min_idle_ms: int) -> dict[str, list[str]]:
        """Per room, the entries delivered to ``consumer`` and unacknowledged for ``min_idle_ms`` (at most
        1,000 a room), asked in pipelines of :data:`PIPELINE_CHUNK` rooms. The rooms with none are left
        out."""
        found: dict[str, list[str]] = {}
        for chunk in chunks(room_ids):
            pipe = self._redis.pipeline(transaction=False)
            for room_id in chunk:
                pipe.xpending_range(
                    keys.room_ingest(room_id), GROUP, min="-", max="+", count=1000,
                    consumername=consumer, idle=min_idle_ms,
                )  # fmt: skip
            for room_id, pending in zip(chunk, await pipe.execute(raise_on_error=False), strict=True):
                if isinstance(pending, Exception) or not pending:
                    continue
                found[room_id] = [text(p["message_id"]) for p in pending]
        return found

    async def claim_own(self, room_id: str, consumer: str, entry_ids: list[str]) -> list[Entry]:
        """The entries (by id) delivered to ``consumer`` again, with their fields (None once trimmed)."""
        if not entry_ids:
            return []
        return cast(
            list[Entry],
            await self._redis.xclaim(
                keys.room_ingest(room_id), GROUP, consumer, min_idle_time=0,
                message_ids=list(entry_ids),
            ),
        )  # fmt: skip

    async def with_strays(self, room_ids: list[str], consumer: str, min_idle_ms: int) -> list[str]:
        """The rooms whose streams hold entries another consumer was delivered and has left unacknowledged
        for ``min_idle_ms`` (:meth:`claim_strays` claims them), asked in pipelines of
        :data:`PIPELINE_CHUNK` rooms. A room whose stream cannot be asked (no group) is named too: its
        claim raises what the question did."""
        found = []
        if self._strays_idle_ms != min_idle_ms:
            self._strays_question.clear()
            self._strays_idle_ms = min_idle_ms
        for chunk in chunks(room_ids):
            answers = await execute_packed(self._redis, [self._strays_question(r) for r in chunk])
            for room_id, pending in zip(chunk, answers, strict=True):
                # Each pending entry: [id, consumer, idle ms, deliveries].
                if isinstance(pending, Exception) or any(text(p[1]) != consumer for p in pending or []):
                    found.append(room_id)
        return found

    async def drop(self, room_id: str, entry_ids: list[str]) -> None:
        """Acknowledge entries that will never be reported (invalid, expired, trimmed)."""
        if entry_ids:
            await self._redis.xack(keys.room_ingest(room_id), GROUP, *entry_ids)

    async def marker(self, room_id: str) -> Marker | None:
        """The batch a predecessor was sending, if any."""
        found = await self._redis.hgetall(keys.room_report(room_id))
        if not found:
            return None
        return Marker(text(found[b"batch_id"]), text(found[b"first"]), text(found[b"last"]))

    async def mark(self, room_id: str, consumer: str, batch: Marker) -> tuple[bool, str | None]:
        """Mark the batch about to be sent -- only while Redis says the room's lease is ``consumer``'s -- and
        read the report URL, in one script: (marked, report URL). Not marked: another replica owns the room
        now, and the marker is its own (soak finding: a worker that had lost the room overwrote its
        successor's marker)."""
        marked, url = await self._mark(
            keys=[keys.room_lease(room_id), keys.room_report(room_id), keys.room_state(room_id)],
            args=[consumer, *batch],
        )
        return bool(marked), (text(url) if url else None)

    async def report_url(self, room_id: str) -> str | None:
        url = await self._redis.hget(keys.room_state(room_id), "report_url")
        return text(url) if url else None

    async def swap_report_url(self, room_id: str, used: str | None, fresh: str) -> bool:
        """Replace the report URL ``used`` by ``fresh`` -- only if ``used`` is still the room's (a job the
        room started since has its own). True when replaced."""
        return bool(await self._swap_url(keys=[keys.room_state(room_id)], args=[used or "", fresh]))

    async def acknowledge(
        self,
        room_id: str,
        *,
        job_id: str,
        batch_id: str,
        entry_ids: Iterable[str],
        keep_from: str,
        reported: int,
        types: str,
        sent_to: str | None,
        refreshed_url: str | None,
    ) -> None:
        """The vendor took the batch: in one transaction, acknowledge its entries and trim the stream before
        ``keep_from`` (never past another consumer's pending entry), remove the batch's own marker, count
        ``reported`` events, replace the URL it went to by a refreshed one (if that is still the room's),
        and record a ``reported`` entry."""
        async with self._redis.pipeline(transaction=True) as pipe:
            script_keys = [keys.room_ingest(room_id), keys.room_report(room_id), keys.room_state(room_id)]
            args: list[str | int] = [
                GROUP, keep_from, batch_id, sent_to or "", refreshed_url or "", reported, *entry_ids
            ]  # fmt: skip
            if is_cluster(self._redis):
                # A cluster's transaction does not load a script its master lacks (a promoted replica's
                # cache is empty), and the transaction's other commands would run without it: the source.
                pipe.eval(self._ack_and_trim_source, len(script_keys), *script_keys, *args)
            else:
                await self._ack_and_trim(keys=script_keys, args=args, client=pipe)
            self._events.add_to(
                pipe, room_id, "reported", job_id=job_id, batch_id=batch_id, events=reported, types=types
            )
            await pipe.execute()


class BlockingReader:
    """Blocking reads of ingest streams on a connection of their own, which :meth:`wake` ends early.

    A replica's reader blocks on every owned room's stream at once: a new entry in any of them ends the
    block at once, but a room that becomes readable meanwhile (its worker just started) is not in the
    command and would wait for the block to end. Waking is Redis's ``CLIENT UNBLOCK <id> TIMEOUT``: the
    blocked read returns as if its time were up, and the reader reads again with the new set of rooms. So
    the block can be long (a thousand idle rooms' streams are not read ten times a second for nothing)
    without delaying anyone. A wake that misses (the read not yet at Redis) costs one block.

    The command is packed once per set of rooms and sent on the reader's own connection: packing an
    ``XREADGROUP`` of a thousand streams took about a millisecond of the event loop after every arrival
    (the SoftSugar benchmark's comment-to-reply latency). After any error the connection is closed (a
    reply half read must not answer the next command) and returned; the next read takes one from the pool.
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        self._waker = redis
        self._pool = redis.connection_pool
        self._conn: AbstractConnection | None = None
        self._client_id: int | None = None
        self._packed: tuple[tuple[str, ...], str, int, int, list[bytes]] | None = None
        self.blocked = False

    async def read(
        self, room_ids: Iterable[str], consumer: str, *, count: int, block_ms: int
    ) -> dict[str, list[Entry]]:
        """New entries of these rooms' streams, by room, in one ``XREADGROUP``. Raises RedisError."""
        rooms = tuple(room_ids)
        if not rooms:
            return {}
        if self._conn is None:
            self._conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        conn = self._conn
        try:
            if self._client_id is None:
                await conn.send_command("CLIENT", "ID")
                self._client_id = int(await conn.read_response())
            packed = self._command(conn, rooms, consumer, count, block_ms)
            self.blocked = True
            try:
                await conn.send_packed_command(packed, check_health=False)
                answer = await conn.read_response()
            finally:
                self.blocked = False
        except BaseException:
            # The connection goes back to the pool, closed, and the next read takes one from the pool: a
            # connection that reconnects by itself (on its next send) goes to the address it had, and under
            # Sentinel that is the old master after a failover -- only the pool asks the sentinels again.
            self._client_id = None
            self._conn = None
            await conn.disconnect()
            await self._pool.release(conn)
            raise
        found: dict[str, list[Entry]] = {}
        # RESP3 (redis-py's default protocol now) answers a map of streams, RESP2 a list of pairs.
        for stream, entries in stream_pairs(answer):
            found[keys.room_of_ingest(text(stream))] = [
                (entry_id, _fields(fields)) for entry_id, fields in entries
            ]
        return found

    def _command(
        self, conn: AbstractConnection, rooms: tuple[str, ...], consumer: str, count: int, block_ms: int
    ) -> list[bytes]:
        cached = self._packed
        if cached is not None and cached[:4] == (rooms, consumer, count, block_ms):
            return cached[4]
        streams = [keys.room_ingest(room_id) for room_id in rooms]
        packed = conn.pack_command(
            "XREADGROUP", "GROUP", GROUP, consumer, "COUNT", count, "BLOCK", block_ms, "STREAMS",
            *streams, *[">"] * len(streams),
        )  # fmt: skip
        self._packed = (rooms, consumer, count, block_ms, packed)
        return packed

    async def wake(self) -> bool:
        """End the read blocked now, if one is; True if one was. Raises RedisError."""
        if not self.blocked or self._client_id is None:
            return False
        return bool(await self._waker.client_unblock(self._client_id, error=False))

    async def aclose(self) -> None:
        if self._conn is not None:
            await self._pool.release(self._conn)
            self._conn = None


#: How often a :class:`PollingReader` asks every room's stream while nothing arrives.
POLL_INTERVAL_S = 0.05


class PollingReader:
    """:class:`BlockingReader`'s contract on a Redis Cluster. One ``XREADGROUP`` cannot name streams of
    several slots, and one blocked read a room would hold a connection a room; so each read asks every
    room's stream without blocking -- one pipelined round trip per master, the masters at once
    (:func:`execute_on_nodes`) -- and, while none has anything, again every :data:`POLL_INTERVAL_S` until
    ``block_ms`` has passed or :meth:`wake` is called. The price of a cluster: a thousand idle rooms are
    twenty thousand cheap reads a second, and an event waits up to the interval (the report window is
    longer; a replica that took the event over HTTP decides its replies at once anyway)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._woken = asyncio.Event()
        self._packed: dict[str, Packed] = {}
        self._packed_for: tuple[str, int] = ("", 0)
        self.blocked = False

    async def read(
        self, room_ids: Iterable[str], consumer: str, *, count: int, block_ms: int
    ) -> dict[str, list[Entry]]:
        """New entries of these rooms' streams, by room. Raises RedisError (the first room's error) only
        when no room's stream gave anything."""
        rooms = tuple(room_ids)
        if not rooms:
            return {}
        if self._packed_for != (consumer, count) or len(self._packed) > 100_000:
            self._packed, self._packed_for = {}, (consumer, count)
        commands = [(keys.room_ingest(r), self._command(r, consumer, count)) for r in rooms]
        deadline = asyncio.get_running_loop().time() + block_ms / 1000
        self._woken.clear()
        self.blocked = True
        try:
            while True:
                answers = await execute_on_nodes(self._redis, commands)
                found: dict[str, list[Entry]] = {}
                for room_id, answer in zip(rooms, answers, strict=True):
                    if answer is None or isinstance(answer, Exception):
                        continue
                    for _, entries in stream_pairs(answer):
                        found[room_id] = [(entry_id, _fields(fields)) for entry_id, fields in entries]
                if found:
                    return found
                error = next((a for a in answers if isinstance(a, Exception)), None)
                if error is not None:
                    raise error
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0 or self._woken.is_set():
                    return {}
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(POLL_INTERVAL_S, remaining)):
                        await self._woken.wait()
        finally:
            self.blocked = False

    def _command(self, room_id: str, consumer: str, count: int) -> Packed:
        command = self._packed.get(room_id)
        if command is None:
            command = self._packed[room_id] = packed(
                "XREADGROUP",
                "GROUP",
                GROUP,
                consumer,
                "COUNT",
                count,
                "STREAMS",
                keys.room_ingest(room_id),
                ">",
            )
            command.key = keys.room_ingest(room_id).encode()
        return command

    async def wake(self) -> bool:
        """End the read waiting now, if one is; True if one was."""
        self._woken.set()
        return self.blocked

    async def aclose(self) -> None:
        self._woken.set()


def _fields(fields: list[Any] | None) -> dict[Any, Any]:
    """An entry's fields as XREADGROUP gives them (a flat list; None once deleted) as a mapping."""
    if not fields:
        return {}
    it = iter(fields)
    return dict(zip(it, it, strict=False))
