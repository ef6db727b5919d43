"""Overload without collapse, in small numbers (issue 18, point 4; the full measurement is the pipeline
benchmark's): a room whose vendor cannot take reports fills its backlog; past half of its bound it stops
storing likes and viewer counts (counted as shed) while comments keep going in; at the bound it answers
429 with Retry-After and takes nothing; a replica already busy with its ingest limit answers 429 BUSY; and
once the vendor is back every comment answered 2xx is reported and the room takes everything again."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import orjson

from orchestrator.appkeys import METRICS
from orchestrator.interaction.ingest import normalise_batch
from orchestrator.sandbox.metastudio.app import Fault
from orchestrator.store import keys
from orchestrator.store.ingest import GROUP
from orchestrator.web.ingest import INGEST_GATE
from tests.interaction.conftest import ROOM, audience, comment, live_room, redis_of, until
from tests.scheduling.conftest import ADMIN


def _batch(n: int, tag: str) -> list[dict[str, Any]]:
    """n comments, n likes and n viewer counts."""
    events: list[dict[str, Any]] = [comment(f"{tag}-{i}", user=f"{tag}-u{i}") for i in range(n)]
    events += [{"type": "like", "user": {"userId": f"{tag}-l{i}"}} for i in range(n)]
    events += [{"type": "viewers", "viewers": 1000 + i} for i in range(n)]
    return events


async def _post(daemon: Any, events: list[dict[str, Any]]) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with daemon.http.post(
        f"{daemon.url}/api/rooms/{ROOM}/events",
        json={"events": events},
        headers={"Authorization": f"Bearer {ADMIN}"},
    ) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def test_an_overloaded_room_sheds_likes_then_refuses_and_recovers(
    make_settings: Any, tmp_path: Path
) -> None:
    async with live_room(
        make_settings,
        tmp_path,
        report_window_ms=50,
        ingest_backlog_max=200,
        ingest_shed_at=0.5,
    ) as (daemon, box, job_id):
        job = box.world.jobs[job_id]
        box.faults.append(Fault("error", count=10**6, status=503, path_contains="live-event-report"))
        redis = redis_of(daemon)
        taken: list[str] = []  # comment texts answered 2xx

        # Under half the bound: everything is stored.
        status, body, _ = await _post(daemon, _batch(30, "a"))
        assert (status, body["accepted"], body.get("shed")) == (200, 90, None)
        taken += [f"a-{i}" for i in range(30)]
        status, body, _ = await _post(daemon, _batch(10, "b"))  # 90 stored: still under half
        assert (status, body["accepted"], body.get("shed")) == (200, 30, None)
        taken += [f"b-{i}" for i in range(10)]
        # Past half (120 stored >= 100): comments in, likes and viewer counts shed and counted -- until the
        # bound (200), where the batch is refused whole.
        refused_at = None
        for n in range(10):
            status, body, headers = await _post(daemon, _batch(20, f"c{n}"))
            if status == 429:
                refused_at = n
                break
            assert status == 200 and body["shed"] == 40 and body["accepted"] == 20, body
            taken += [f"c{n}-{i}" for i in range(20)]
        assert refused_at == 4  # 120 + 4 x 20 = 200
        # At the bound: refused whole, with Retry-After; nothing taken.
        backlog = await redis.xlen(keys.room_ingest(ROOM))
        status, body, headers = await _post(daemon, [comment("refused", user="late")] * 5)
        assert (status, body["error_code"], headers["Retry-After"]) == (429, "BACKLOG_FULL", "1")
        assert await redis.xlen(keys.room_ingest(ROOM)) == backlog == 200
        shed = daemon.app[METRICS].audience_events.labels("shed")._value.get()
        assert shed == 4 * 40

        # The replica's own bound: at its limit of requests in flight, one more is refused.
        gate = daemon.app[INGEST_GATE]
        gate.busy_count += gate.limit
        try:
            status, body, headers = await _post(daemon, [comment("busy", user="busy")])
            assert (status, body["error_code"], headers["Retry-After"]) == (429, "BUSY", "1")
        finally:
            gate.busy_count -= gate.limit

        # The vendor back: every comment answered 2xx is reported; the room takes everything again.
        box.faults.clear()

        def texts() -> list[str]:
            return [json.loads(e["content"]).get("content", "") for e in job.reported if e["type"] == 1]

        await until(lambda: _now(set(taken) <= set(texts())), 30)
        assert "refused" not in texts() and "busy" not in texts()
        await until(lambda: _backlog_below(redis, 100), 30)
        status, body, _ = await _post(daemon, _batch(5, "f"))
        assert (status, body["accepted"], body.get("shed")) == (200, 15, None)


async def _now(value: bool) -> bool:
    return value


async def _backlog_below(redis: Any, limit: int) -> bool:
    return int(await redis.xlen(keys.room_ingest(ROOM))) < limit


async def test_a_bridge_told_to_wait_loses_nothing_by_waiting(make_settings: Any, tmp_path: Path) -> None:
    """A bridge that honours Retry-After: every comment it was refused is taken later, once."""
    async with live_room(make_settings, tmp_path, report_window_ms=50, ingest_backlog_max=100) as (
        daemon,
        box,
        job_id,
    ):
        job = box.world.jobs[job_id]
        box.faults.append(Fault("error", count=4, status=503, path_contains="live-event-report"))
        sent = refusals = 0
        for n in range(8):
            batch = [comment(f"w{n}-{i}", user=f"w{n}-{i}") for i in range(20)]
            while True:
                status, _body, headers = await _post(daemon, batch)
                if status == 200:
                    sent += 20
                    break
                assert status == 429
                refusals += 1
                await asyncio.sleep(float(headers["Retry-After"]) / 4)  # a quicker bridge than asked
        assert refusals >= 1  # 160 comments against a bound of 100, the vendor refusing the first reports
        await until(lambda: _now(len([e for e in job.reported if e["type"] == 1]) >= sent), 30)
        texts = [json.loads(e["content"])["content"] for e in job.reported if e["type"] == 1]
        assert sorted(texts) == sorted(f"w{n}-{i}" for n in range(8) for i in range(20))


async def test_entries_a_lost_read_delivered_are_taken_again_and_reported(
    make_settings: Any, tmp_path: Path
) -> None:
    """Benchmark finding (2x capacity for 30 s): a blocking read that timed out had been served -- its
    entries delivered to this replica's consumer, in the group's pending list -- but its answer never
    arrived; nothing took them again, and they waited unreported until the worker restarted. Here the lost
    read is made exactly: an entry written and read as the replica's consumer in one transaction, so the
    daemon's own reader never sees it."""
    async with live_room(make_settings, tmp_path, report_window_ms=50) as (daemon, box, job_id):
        job = box.world.jobs[job_id]
        replica = audience(daemon).leases.replica_id
        (event,), _ = normalise_batch([comment("lost in a read", user="ghost")])
        wire = orjson.dumps({**event, "content": orjson.dumps(event["content"]).decode()})
        stream = keys.room_ingest(ROOM)
        redis = redis_of(daemon)
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xadd(stream, {"event": wire})
            pipe.xreadgroup(GROUP, replica, {stream: ">"}, count=10)
            _, delivered = await pipe.execute()
        assert delivered  # in the replica's pending list, never in its worker's hands

        def texts() -> list[str]:
            return [json.loads(e["content"]).get("content", "") for e in job.reported if e["type"] == 1]

        await until(lambda: _now("lost in a read" in texts()), 20)
        assert texts().count("lost in a read") == 1

        async def acknowledged() -> bool:
            return int((await redis.xpending(stream, GROUP))["pending"]) == 0

        await until(acknowledged, 10)
