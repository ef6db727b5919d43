"""Redis: key names keep a room in one cluster slot; the client retries and recovers."""

from __future__ import annotations

import asyncio
import time
from typing import cast

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster
from redis.backoff import EqualJitterBackoff
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from orchestrator.settings import RedisSettings
from orchestrator.store import keys
from orchestrator.store.events import RoomEvents
from orchestrator.store.ingest import IngestStreams
from orchestrator.store.migrate import rename_legacy_keys
from orchestrator.store.redis import (
    create_redis,
    execute_packed,
    is_cluster,
    packed,
    pairs,
    redis_ready,
    run_script_many,
)
from orchestrator.store.rooms import RoomStore
from tests.support.redis_server import RedisServer

ROOM_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,40}", fullmatch=True)


@given(room_id=ROOM_IDS)
def test_all_room_keys_share_one_slot(room_id: str) -> None:
    names = [
        keys.room_state(room_id),
        keys.room_events(room_id),
        keys.room_lease(room_id),
        keys.room_fence(room_id, "start", "2026-11-21T10:00"),
        keys.room_ingest(room_id),
    ]
    assert all(name.startswith(f"orch:{{{room_id}}}:") for name in names)
    assert len({key_slot(name.encode()) for name in names}) == 1


@pytest.mark.parametrize("bad", ["", "has space", "brace{", "brace}", "a" * 129, "-leading", "new\nline"])
def test_unsafe_room_ids_are_rejected(bad: str) -> None:
    with pytest.raises(keys.InvalidKeyPart):
        keys.room_state(bad)


async def test_client_from_settings(redis_url: str) -> None:
    settings = RedisSettings(url=redis_url, retry_attempts=4, socket_timeout_s=2.5)
    client = create_redis(settings)
    try:
        assert await client.ping()
        if is_cluster(client):  # every node's connections are made with the same arguments
            assert cast(RedisCluster, client).get_connection_kwargs()["socket_timeout"] == 2.5
            assert await client.client_getname() == "orchestrator"
            return
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 2.5
        assert kwargs["health_check_interval"] == 15
        retry = kwargs["retry"]
        assert retry._retries == 4
        assert isinstance(retry._backoff, EqualJitterBackoff)
        assert await client.client_getname() == "orchestrator"
    finally:
        await client.aclose()


async def test_client_recovers_after_redis_restart(controllable_redis: RedisServer, redis_url: str) -> None:
    client: aioredis.Redis = create_redis(RedisSettings(url=redis_url, readiness_timeout_s=0.5))
    try:
        await client.set("k", "v")
        controllable_redis.stop()
        ok, detail = await redis_ready(client, 0.5)
        assert not ok and detail
        controllable_redis.start()
        assert await redis_ready(client, 2.0) == (True, None)
        assert await client.set("k", "again")  # same client object, no rebuild
    finally:
        await client.aclose()


async def test_a_blocked_read_of_ingest_streams_ends_when_woken(redis_url: str) -> None:
    """The replica's reader blocks on every owned room's stream; a room that becomes readable meanwhile
    wakes it (``CLIENT UNBLOCK``) instead of waiting out the block -- and the reader reads on after."""
    redis = create_redis(RedisSettings(url=redis_url))
    streams = IngestStreams(redis, RoomEvents(redis))
    await streams.ensure_group("room-a")
    reader = streams.blocking_reader()
    try:
        assert not await reader.wake()  # nothing blocked: nothing to do
        blocked = asyncio.create_task(reader.read(["room-a"], "c1", count=10, block_ms=10_000))
        await asyncio.sleep(0.3)  # the read is at Redis now
        started = time.monotonic()
        assert await reader.wake()
        assert await blocked == {}  # as if its time were up
        assert time.monotonic() - started < 1.0
        await redis.xadd(keys.room_ingest("room-a"), {"event": b"{}"})
        found = await reader.read(["room-a"], "c1", count=10, block_ms=1000)
        assert list(found) == ["room-a"] and len(found["room-a"]) == 1
    finally:
        await reader.aclose()
        await redis.aclose()


async def test_rooms_with_strays_are_found_in_one_look_at_every_room(redis_url: str) -> None:
    """The supervisor's sweep asks every owned room's stream at once (pipelined) which hold entries another
    consumer read and left unacknowledged; a stream that cannot be asked is named, so its claim reports
    why."""
    redis = create_redis(RedisSettings(url=redis_url))
    streams = IngestStreams(redis, RoomEvents(redis))
    try:
        rooms = [f"room-{i:03d}" for i in range(150)]  # more than one pipeline's worth
        for room_id in rooms:
            await streams.ensure_group(room_id)
        await redis.xadd(keys.room_ingest("room-007"), {"event": b"{}"})
        await redis.xadd(keys.room_ingest("room-120"), {"event": b"{}"})
        lost = streams.blocking_reader()
        await lost.read(["room-007", "room-120"], "lost-replica", count=10, block_ms=1)
        await lost.aclose()
        assert await streams.with_strays(rooms, "owner", 0) == ["room-007", "room-120"]
        assert await streams.with_strays(rooms, "lost-replica", 0) == []  # its own are not strays
        assert await streams.with_strays(rooms, "owner", 60_000) == []  # not idle long enough
        assert await streams.with_strays(["no-group-here"], "owner", 0) == ["no-group-here"]
    finally:
        await redis.aclose()


async def test_the_stall_watchers_pass_reads_each_rooms_links_alone(redis_url: str) -> None:
    """``RoomStore.links``: every room's RTMP links in a few round trips (HSCAN ... MATCH rtmp:*), the same
    values as the whole state gives; rooms without links are left out; a state too large for one scan
    step is read whole."""
    redis = create_redis(RedisSettings(url=redis_url))
    store = RoomStore(redis)
    try:
        rooms = [f"links-{i:03d}" for i in range(150)]  # more than one pipeline's worth
        for room_id in rooms:
            await redis.hset(keys.room_state(room_id), mapping={"managed": "1", "job_state": "PROCESSING"})
        await redis.hset(
            keys.room_state("links-007"),
            mapping={"rtmp:rtmp://a/1": "RECONNECTING|1000|1001", "rtmp:rtmp://b/2": "CONNECTED|5|6"},
        )
        await redis.hset(
            keys.room_state("links-140"),
            mapping={"rtmp:rtmp://c/3": "DISCONNECTED|7|8", **{f"count:{i}": i for i in range(30_000)}},
        )
        found = await store.links(rooms)
        assert sorted(found) == ["links-007", "links-140"]
        for room_id in found:
            assert found[room_id] == (await store.state(room_id) or {})["rtmp"]
        assert found["links-007"]["rtmp://a/1"] == {
            "state": "RECONNECTING",
            "since_ms": 1000,
            "event_ms": 1001,
        }
    finally:
        await redis.delete(*(keys.room_state(r) for r in ("links-007", "links-140")))
        await redis.aclose()


async def test_the_reconcilers_look_at_a_room_is_its_state_and_recent_restarts(redis_url: str) -> None:
    """``RoomStore.observe``: the state as ``states`` decodes it and the restarts since a time, together
    (one round trip); a room not managed has an empty state."""
    redis = create_redis(RedisSettings(url=redis_url))
    store = RoomStore(redis)
    try:
        await redis.hset(
            keys.room_state("obs-1"),
            mapping={"managed": "1", "job_id": "j-1", "rtmp:rtmp://a/1": "CONNECTED|5|6"},
        )
        await redis.zadd(keys.room_restarts("obs-1"), {"100.5": 100.5, "200.25": 200.25, "300": 300})
        state, restarts = await store.observe("obs-1", restarts_since_s=150.0)
        assert state == (await store.states(["obs-1"]))["obs-1"]
        assert state["job_id"] == "j-1" and state["rtmp"]["rtmp://a/1"]["state"] == "CONNECTED"
        assert restarts == [200.25, 300.0]
        assert await store.observe("obs-unmanaged", restarts_since_s=0) == ({}, [])
    finally:
        await redis.delete(keys.room_state("obs-1"), keys.room_restarts("obs-1"))
        await redis.aclose()


async def test_scripts_run_many_at_once_without_asking_redis_first(redis_url: str) -> None:
    """A pipeline of a registered script's calls costs one round trip (redis-py asks ``SCRIPT EXISTS``
    before each such pipeline), and survives a Redis that lost its scripts (``SCRIPT FLUSH``: the
    refused calls, which did nothing, run again once the script is loaded)."""
    redis = create_redis(RedisSettings(url=redis_url))
    script = redis.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    try:

        async def calls(name: str) -> int:
            stats = await redis.info("commandstats")
            return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))

        assert await run_script_many(redis, script, [(["{a}:n"], [1]), (["{b}:n"], [2])]) == [1, 2]
        exists = await calls("script|exists")
        assert await run_script_many(redis, script, [(["{a}:n"], [1]), (["{b}:n"], [2])]) == [2, 4]
        assert await calls("script|exists") == exists  # not asked
        await redis.script_flush()
        assert await run_script_many(redis, script, [(["{a}:n"], [1]), (["{b}:n"], [2])]) == [3, 6]
        assert await run_script_many(redis, script, []) == []
    finally:
        await redis.aclose()


@pytest.mark.parametrize("protocol", [2, 3])
async def test_commands_packed_once_run_in_one_round_trip_and_survive_a_restart(
    controllable_redis: RedisServer, redis_url: str, protocol: int
) -> None:
    """execute_packed: commands packed once (redis-py packed each anew, most of the SoftSugar benchmark's
    idle CPU) run in order in one round trip; an error reply is returned, not raised, and the others still
    run; a connection a Redis restart closed is replaced (one retry)."""
    redis = aioredis.Redis.from_url(redis_url, protocol=protocol)
    try:
        await redis.hset("{p}:h", mapping={"a": "1", "b": "2"})
        commands = [
            packed("HGETALL", "{p}:h"),
            packed("HMGET", "{p}:h", "a", "missing"),
            packed("EVALSHA", "0" * 40, 0),
            packed("INCRBY", "{p}:n", 5),
        ]
        await redis.config_resetstat()
        hash_, fields, error, number = await execute_packed(redis, commands)
        assert pairs(hash_) == {b"a": b"1", b"b": b"2"}
        assert fields == [b"1", None]
        assert isinstance(error, NoScriptError)
        assert number == 5
        assert "cmdstat_multi" not in await redis.info("commandstats")
        controllable_redis.stop()
        controllable_redis.start()
        assert await execute_packed(redis, [packed("INCRBY", "{p}:n", 1)]) == [1]  # a new Redis, a new key
        assert await execute_packed(redis, []) == []
    finally:
        await redis.aclose()


async def test_vendor_keys_stored_under_their_old_names_are_renamed_at_start(
    redis_client: aioredis.Redis,
) -> None:
    """Vendor keys gained a hash tag (one slot per account on a Redis Cluster): an upgrade renames what an
    older version stored, and a key already under its new name is kept."""
    if is_cluster(redis_client):
        pytest.skip("a Redis Cluster never held the old names")
    await redis_client.hset("orch:vendor:softsugar:app-1:sessions", mapping={"s1": "room-a"})
    await redis_client.hset("orch:vendor:softsugar:app-1:token", mapping={"access": "old"})
    await redis_client.hset(keys.vendor_token("softsugar", "app-1"), mapping={"access": "new"})
    await redis_client.set("orch:vendor:softsugar:app-1:token-lock", "r1")
    assert await rename_legacy_keys(redis_client) == 1
    assert await redis_client.hgetall(keys.vendor_sessions("softsugar", "app-1")) == {b"s1": b"room-a"}
    assert keys.vendor_sessions("softsugar", "app-1") == "orch:vendor:{softsugar:app-1}:sessions"
    assert await redis_client.hget(keys.vendor_token("softsugar", "app-1"), "access") == b"new"
    assert await rename_legacy_keys(redis_client) == 0  # once
