"""The reporter against the sandbox and a real Redis: batches, windows, retries, backlog, leases."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import orjson

from orchestrator.appkeys import AUDIENCE as AUDIENCE_KEY
from orchestrator.sandbox.metastudio.app import Fault, SandboxConfig, demo_room, running_sandbox
from orchestrator.store import keys
from orchestrator.store.ingest import GROUP, Marker
from orchestrator.store.redis import create_redis
from tests.interaction.conftest import ROOM, audience, comment, ingest, live_room, redis_of, until
from tests.scheduling.conftest import AK, PROJECT, SK


def _texts(reported: list[dict[str, Any]]) -> list[str]:
    return [json.loads(e["content"]).get("content", "") for e in reported if e["type"] == 1]


def _all_texts(job: Any) -> list[str]:
    """Each reported event's comment text ("" for other types), in step with ``job.reported_batch``."""
    return [json.loads(e["content"]).get("content", "") if e["type"] == 1 else "" for e in job.reported]


def _report_calls(box: Any) -> list[Any]:
    return [c for c in box.calls if c.path.endswith("/live-event-report")]


async def test_batches_by_size_and_window(make_settings: Any, tmp_path: Path) -> None:
    async with live_room(make_settings, tmp_path, report_window_ms=300) as (daemon, box, job_id):
        job = box.world.jobs[job_id]
        # One comment alone goes out after the window, not before.
        started = time.monotonic()
        await ingest(daemon, [comment("first")])
        await until(lambda: _async(len(job.reported) == 1), 5)
        waited = time.monotonic() - started
        assert 0.25 <= waited < 2.0, waited
        # 2,500 comments sent at once: size-bound batches of at most 1,000, every event exactly once.
        texts = [f"c{i}" for i in range(2500)]
        for start in range(0, 2500, 500):
            await ingest(daemon, [comment(t, user=f"u{i}") for i, t in enumerate(texts[start : start + 500])])
        await until(lambda: _async(len(job.reported) == 2501), 15)
        assert sorted(_texts(job.reported)) == sorted(["first", *texts])
        assert all(isinstance(e["content"], str) for e in job.reported)  # content as a JSON string
        sizes = [n for n in job.report_batches.values()]
        assert set(sizes) == {1}  # no batch twice
        assert len(job.report_batches) <= 6  # batched: not one call per event
        # The vendor took the last batch a moment before the daemon acknowledges it in Redis.
        redis = redis_of(daemon)
        await until(lambda: _pending_zero(redis), 5)
        state = await daemon.store.state(ROOM)
        assert state is not None and state["reported"] == "2501"
        reported = [e for e in await daemon.store.events(ROOM, limit=1000) if e["kind"] == "reported"]
        assert sum(int(e["events"]) for e in reported) == 2501


async def test_retries_resend_the_same_batch_and_duplicate_nothing(
    make_settings: Any, tmp_path: Path
) -> None:
    async with live_room(make_settings, tmp_path, report_window_ms=50) as (daemon, box, job_id):
        job = box.world.jobs[job_id]
        # 5xx after the vendor took the batch (the ambiguous case), then 5xx before, then a timeout-free reset.
        box.faults.append(Fault("error", count=2, status=500, after=True, path_contains="live-event-report"))
        box.faults.append(Fault("error", count=3, status=503, path_contains="live-event-report"))
        await ingest(daemon, [comment(f"r{i}") for i in range(50)])
        await until(lambda: _async(len(_report_calls(box)) >= 6 and not box.faults[1].count), 30)
        await until(lambda: _async(len(job.reported) >= 150), 30)
        await asyncio.sleep(0.3)
        # MetaStudio takes no idempotency key: each send the vendor took counts (two taken before their
        # 500s, one at last). Every copy is the whole batch, under its one id -- never part of it elsewhere.
        assert sorted(_texts(job.reported)) == sorted(f"r{i}" for i in range(50) for _ in range(3))
        assert set(job.reported_batch) == set(job.report_batches) and len(job.report_batches) == 1
        assert next(iter(job.report_batches.values())) == 3  # the 503s before taking it never got this far


async def test_vendor_down_backlog_stays_in_redis_then_drains(make_settings: Any, tmp_path: Path) -> None:
    async with live_room(make_settings, tmp_path, report_window_ms=50, report_max_events=200) as (
        daemon,
        box,
        job_id,
    ):
        job = box.world.jobs[job_id]
        box.faults.append(Fault("error", count=10**6, status=503, path_contains="live-event-report"))
        worker = audience(daemon).workers[ROOM]
        for start in range(0, 3000, 500):
            events: list[dict[str, Any]] = [comment(f"b{i}") for i in range(start, start + 500)]
            events += [{"type": "viewers", "viewers": 1000 + start + i} for i in range(50)]
            await ingest(daemon, events)
        await asyncio.sleep(1.0)
        # Memory: the room holds at most one read beyond a batch; the rest waits in Redis.
        assert len(worker.buffer) <= 2 * 200
        assert await redis_of(daemon).xlen(keys.room_ingest(ROOM)) == 3300
        assert job.reported == []
        box.faults.clear()
        await until(lambda: _async(len(_texts(job.reported)) == 3000), 60)
        assert sorted(_texts(job.reported)) == sorted(f"b{i}" for i in range(3000))
        viewers = [e for e in job.reported if e["type"] == 6]
        assert 1 <= len(viewers) < 300  # coalesced: at most one per batch
        assert json.loads(viewers[-1]["content"])["numberOfViewers"] == 1000 + 2500 + 49
        assert all(n == 1 for n in job.report_batches.values())
        assert await redis_of(daemon).xlen(keys.room_ingest(ROOM)) < 3300  # acknowledged entries trimmed


async def test_redis_stream_path_for_bridges(make_settings: Any, tmp_path: Path) -> None:
    """A bridge writes its own event format to the stream; bad entries are counted and acknowledged."""
    async with live_room(make_settings, tmp_path, report_window_ms=50) as (daemon, box, job_id):
        job = box.world.jobs[job_id]
        redis = redis_of(daemon)
        stream = keys.room_ingest(ROOM)
        await redis.xadd(stream, {"raw": orjson.dumps(comment("from a bridge"))})
        await redis.xadd(stream, {"raw": orjson.dumps({"type": "gift", "user": {"userId": "g1"}})})  # no gift
        await redis.xadd(stream, {"raw": b"{not json"})
        await redis.xadd(stream, {"other": b"x"})
        await redis.xadd(stream, {"raw": orjson.dumps({"type": 3, "user": {"userId": "l1"}})})
        await until(lambda: _async(len(job.reported) == 2), 10)
        assert [e["type"] for e in job.reported] == [1, 3]
        assert _texts(job.reported) == ["from a bridge"]
        await until(lambda: _pending_zero(redis), 5)
        metrics = (await daemon.http.get(f"{daemon.url}/metrics")).content
        text = (await metrics.read()).decode()
        assert 'orch_audience_events_total{outcome="rejected"} 3.0' in text


async def test_entries_of_a_dead_consumer_are_claimed_and_reported(
    make_settings: Any, tmp_path: Path
) -> None:
    """XAUTOCLAIM: entries a crashed replica read but never acknowledged are reported by the next owner; a
    batch it had marked as being sent is resent as that batch (same id), so a deduplicating vendor sees it
    once."""
    async with running_sandbox(SandboxConfig(AK, SK, PROJECT, speed=20)) as (box, url):
        box.world.add_room(demo_room())
        async with live_room(make_settings, tmp_path, sandbox=(box, url), report_window_ms=50) as (
            daemon,
            _,
            job_id,
        ):
            job = box.world.jobs[job_id]
            await ingest(daemon, [comment("warm-up")])
            await until(lambda: _async(len(job.reported) == 1), 10)
        # The daemon is gone; a "ghost" replica reads entries and dies with a batch marked in flight.
        redis = redis_of(daemon)  # closed with the app: use a fresh client below
        del redis
        client = create_redis(make_settings().redis)
        stream = keys.room_ingest(ROOM)
        now_ms = int(time.time() * 1000)
        for i in range(30):
            wire = {"timestamp": now_ms, "type": 1, "content": json.dumps({"content": f"ghost{i}"})}
            await client.xadd(stream, {"event": orjson.dumps(wire)})
        read = await client.xreadgroup(GROUP, "ghost", {stream: ">"}, count=100)
        ids = [entry_id.decode() for entry_id, _ in read[0][1]]
        await client.hset(
            keys.room_report(ROOM), mapping={"batch_id": "ghost-batch", "first": ids[0], "last": ids[9]}
        )
        # What the ghost sent before dying: the marked batch reached the vendor already.
        job.report_batches["ghost-batch"] = 1
        await box.world.receive_events(
            job,
            [
                {"timestamp": now_ms, "type": 1, "content": json.dumps({"content": f"ghost{i}"})}
                for i in range(10)
            ],
            "ghost-batch",
        )
        await client.delete(keys.room_lease(ROOM))
        await client.aclose()
        async with live_room(make_settings, tmp_path, sandbox=(box, url), report_window_ms=50) as (
            daemon2,
            _,
            _j,
        ):
            await until(lambda: _async(len(_texts(job.reported)) == 41), 15)
            # The marked batch resent whole, under its own id (the vendor applies it again: it cannot know);
            # the rest in other batches, none of the marked ten among them.
            ghosts = [f"ghost{i}" for i in range(30)]
            assert sorted(_texts(job.reported)) == sorted(["warm-up", *ghosts, *ghosts[:10]])
            assert job.report_batches["ghost-batch"] == 2
            resent = [
                t for t, b in zip(_all_texts(job), job.reported_batch, strict=True) if b == "ghost-batch"
            ]
            assert sorted(resent) == sorted(ghosts[:10] * 2)
            assert (await redis_of(daemon2).xpending(stream, GROUP))["pending"] == 0


async def test_one_replica_reports_and_another_takes_over(make_settings: Any, tmp_path: Path) -> None:
    async with running_sandbox(SandboxConfig(AK, SK, PROJECT, speed=20)) as (box, url):
        box.world.add_room(demo_room())
        async with live_room(make_settings, tmp_path, sandbox=(box, url), report_window_ms=50) as (
            first,
            _,
            job_id,
        ):
            job = box.world.jobs[job_id]
            async with live_room(
                make_settings, tmp_path, sandbox=(box, url), owner=False, report_window_ms=50
            ) as (
                second,
                _,
                _job,
            ):
                owners = [ROOM in audience(d).workers for d in (first, second)]
                assert owners.count(True) == 1
                sent = [f"t{i}" for i in range(400)]
                for i in range(0, 200, 20):
                    await ingest(second, [comment(t) for t in sent[i : i + 20]])
                owner = first if owners[0] else second
                other = second if owner is first else first
                await until(lambda: _async(len(job.reported) >= 1), 10)
                await owner.app[AUDIENCE_KEY].aclose()  # the owner stops (its lease is released)
                for i in range(200, 400, 20):
                    await ingest(other, [comment(t) for t in sent[i : i + 20]])
                await until(lambda: _async(ROOM in audience(other).workers), 10)
                await until(lambda: _async(len(_texts(job.reported)) == 400), 20)
                assert sorted(_texts(job.reported)) == sorted(sent)


async def test_lease_moves_when_the_owner_stops_renewing(make_settings: Any, tmp_path: Path) -> None:
    """A replica that dies holding the lease (no release) loses the room after the TTL."""
    async with running_sandbox(SandboxConfig(AK, SK, PROJECT, speed=20)) as (box, url):
        box.world.add_room(demo_room())
        async with live_room(make_settings, tmp_path, sandbox=(box, url)) as (first, _, _job):
            redis = redis_of(first)
            owner_before = await redis.get(keys.room_lease(ROOM))
            await redis.set(keys.room_lease(ROOM), b"dead-replica", px=1500)  # a dead owner's last renewal
            started = time.monotonic()
            await until(lambda: _async(ROOM not in audience(first).workers), 5)
            await until(lambda: _async(ROOM in audience(first).workers), 10)
            assert 1.0 <= time.monotonic() - started < 6
            assert owner_before is not None


async def _async(value: bool) -> bool:
    return value


async def _pending_zero(redis: Any) -> bool:
    return bool((await redis.xpending(keys.room_ingest(ROOM), GROUP))["pending"] == 0)


async def test_redis_outage_under_the_reporter_loses_nothing(
    make_settings: Any, tmp_path: Path, controllable_redis: Any
) -> None:
    """Redis stops (its data survives) while events wait to be reported; when it returns, the room's
    worker carries on and every accepted event is reported once."""
    # The window is long so that the batch is due while Redis is away.
    async with live_room(make_settings, tmp_path, report_window_ms=2000) as (daemon, box, job_id):
        job = box.world.jobs[job_id]
        await ingest(daemon, [comment(f"before{i}") for i in range(100)])
        worker = audience(daemon).workers[ROOM]
        await until(lambda: _async(len(worker.buffer) == 100), 5)  # read, and waiting for the window
        controllable_redis.stop(save=True)
        await asyncio.sleep(6.0)  # longer than the Redis client's own retries
        controllable_redis.start()
        await ingest_when_ready(daemon, [comment(f"after{i}") for i in range(100)])
        expected = sorted([*(f"before{i}" for i in range(100)), *(f"after{i}" for i in range(100))])
        await until(lambda: _async(sorted(_texts(job.reported)) == expected), 30)
        await asyncio.sleep(0.5)
        assert sorted(_texts(job.reported)) == expected
        assert ROOM in audience(daemon).workers


async def ingest_when_ready(daemon: Any, events: list[dict[str, Any]]) -> None:
    async with asyncio.timeout(20):
        while True:
            status, _ = await daemon.api("POST", f"/api/rooms/{ROOM}/events", {"events": events})
            if status == 200:
                return
            await asyncio.sleep(0.2)


async def test_refreshed_report_url_is_adopted(make_settings: Any, tmp_path: Path) -> None:
    """The vendor's answer may carry a new live_event_report_url: it is stored and used from then on."""
    async with live_room(make_settings, tmp_path, report_window_ms=50) as (daemon, box, job_id):
        job = box.world.jobs[job_id]
        redis = redis_of(daemon)
        old = (await redis.hget(keys.room_state(ROOM), "report_url")).decode()
        # Ask the sandbox to hand out a fresh URL with its next answer (as it does before one expires).
        await redis.hset(keys.room_state(ROOM), "report_url", old + "&refresh_url=true")
        await ingest(daemon, [comment("one")])
        await until(lambda: _async(len(job.reported) == 1), 10)

        async def adopted() -> bool:
            url = (await redis.hget(keys.room_state(ROOM), "report_url")).decode()
            return "refresh_url" not in url and url != old

        await until(adopted, 5)
        new = (await redis.hget(keys.room_state(ROOM), "report_url")).decode()
        calls_before = len(_report_calls(box))
        await ingest(daemon, [comment("two")])
        await until(lambda: _async(len(job.reported) == 2), 10)
        assert new == job.report_url
        last = _report_calls(box)[calls_before:]
        assert last and all(c.status == 200 for c in last)
        assert _texts(job.reported) == ["one", "two"]


async def test_a_batch_the_vendor_refuses_is_dropped_not_retried_forever(
    make_settings: Any, tmp_path: Path
) -> None:
    async with live_room(make_settings, tmp_path, report_window_ms=50) as (daemon, box, job_id):
        job = box.world.jobs[job_id]
        box.faults.append(Fault("error", count=1, status=400, path_contains="live-event-report"))
        await ingest(daemon, [comment("refused")])
        await until(lambda: _async(not box.faults[0].count), 10)
        await ingest(daemon, [comment("next")])
        await until(lambda: _async(len(job.reported) == 1), 10)
        assert _texts(job.reported) == ["next"]
        text = await (await daemon.http.get(f"{daemon.url}/metrics")).text()
        assert 'orch_audience_events_total{outcome="dropped"} 1.0' in text
        assert 'orch_report_batches_total{outcome="dropped"} 1.0' in text
        await until(lambda: _pending_zero(redis_of(daemon)), 5)


async def test_state_api_hides_the_report_urls_credential(make_settings: Any, tmp_path: Path) -> None:
    async with live_room(make_settings, tmp_path) as (daemon, _box, _job):
        raw = (await redis_of(daemon).hget(keys.room_state(ROOM), "report_url")).decode()
        assert "auth_key=" in raw  # the vendor's URL carries its key
        status, state = await daemon.api("GET", f"/api/rooms/{ROOM}")
        assert status == 200
        shown = json.dumps(state)
        assert "auth_key" not in shown and raw.split("auth_key=")[1].split("&")[0] not in shown
        assert state["report_url"].endswith("/live-event-report?***")


async def test_a_batch_refused_because_its_job_failed_goes_to_the_rooms_next_job(
    make_settings: Any, tmp_path: Path
) -> None:
    """Soak finding: a batch refused because its job had failed (MetaStudio's 500 MSS.20010099 "not in the
    running status") was dropped, and the comments viewers made around the failure were lost -- the room's
    next job would have taken them. The batch goes again, under its id, to the room's report URL as it is
    then: the new job's."""
    async with live_room(make_settings, tmp_path, report_window_ms=50) as (daemon, box, job_id):
        old = box.world.jobs[job_id]
        box.world.fail(old, "MSS.00000000", "the render node died")
        await ingest(daemon, [comment("during the failure")])

        async def restarted() -> bool:
            state = await daemon.store.state(ROOM) or {}
            return state.get("job_id") not in (None, job_id) and state.get("job_state") == "PROCESSING"

        await until(restarted, 20)
        new = box.world.jobs[(await daemon.store.state(ROOM) or {})["job_id"]]
        await until(lambda: _async(_texts(new.reported) == ["during the failure"]), 20)
        assert _texts(old.reported) == []
        assert _report_calls(box)[0].status == 500  # refused by the failed job first
        await until(lambda: _pending_zero(redis_of(daemon)), 5)


async def test_a_refused_batch_is_dropped_once_too_old_for_a_next_job(
    make_settings: Any, tmp_path: Path
) -> None:
    """Not for ever, though: once its events are older than report_max_age_s, the batch is dropped and its
    events counted expired (before: retried for ever)."""
    async with live_room(make_settings, tmp_path, report_window_ms=50, report_max_age_s=1.0) as (
        daemon,
        box,
        job_id,
    ):
        box.faults.append(
            Fault("error", count=100, status=500, code="MSS.20010099", path_contains="live-event-report")
        )
        await ingest(daemon, [comment("for an ended job")])

        async def dropped() -> bool:
            text = await (await daemon.http.get(f"{daemon.url}/metrics")).text()
            return 'orch_audience_events_total{outcome="expired"} 1.0' in text

        await until(dropped, 15)
        box.faults.clear()
        await ingest(daemon, [comment("next")])
        job = box.world.jobs[job_id]
        await until(lambda: _async(_texts(job.reported) == ["next"]), 10)
        await until(lambda: _pending_zero(redis_of(daemon)), 5)


async def test_an_expired_report_url_is_replaced_by_the_jobs_current_one(
    make_settings: Any, tmp_path: Path
) -> None:
    """401 MSS.20010054 (the report URL's key expired): the job's current URL (show job) is used."""
    async with live_room(make_settings, tmp_path, report_window_ms=50) as (daemon, box, job_id):
        job = box.world.jobs[job_id]
        redis = redis_of(daemon)
        expires = box.clock.epoch_ms() - 1
        stale = (
            job.report_url.split("?")[0]
            + f"?auth_key={box.world.report_auth_key(job, expires)}&expires_time={expires}"
        )
        await redis.hset(keys.room_state(ROOM), "report_url", stale)
        await ingest(daemon, [comment("after expiry")])
        await until(lambda: _async(len(job.reported) == 1), 10)
        assert _texts(job.reported) == ["after expiry"]
        await until(lambda: _async(all(c.status for c in _report_calls(box))), 5)  # answers recorded
        assert [c.status for c in _report_calls(box)] == [401, 200]
        assert (await redis.hget(keys.room_state(ROOM), "report_url")).decode() == job.report_url


async def test_events_another_replica_read_and_dropped_are_claimed_by_the_owner(
    make_settings: Any, tmp_path: Path
) -> None:
    """Soak finding: a replica that lost a room's lease (stalled past it) had read entries it then dropped
    with its worker; they stayed in the group's pending list, delivered to it, and were never reported --
    the new owner only claims pending entries when its worker starts. Now the owner claims, once a lease,
    what another consumer has left idle that long."""
    async with running_sandbox(SandboxConfig(AK, SK, PROJECT, speed=20)) as (box, url):
        box.world.add_room(demo_room())
        async with live_room(make_settings, tmp_path, sandbox=(box, url), report_window_ms=50) as (
            daemon,
            _,
            job_id,
        ):
            job = box.world.jobs[job_id]
            redis = redis_of(daemon)
            await ingest(daemon, [comment("before")])
            await until(lambda: _async(len(job.reported) == 1), 10)
            stream = keys.room_ingest(ROOM)
            now_ms = int(time.time() * 1000)
            # Written and, at once (one transaction: the owner's reader cannot come between), read by the
            # replica that was losing the room, which drops them unreported.
            async with redis.pipeline(transaction=True) as pipe:
                for i in range(20):
                    wire = {"timestamp": now_ms, "type": 1, "content": json.dumps({"content": f"stray{i}"})}
                    pipe.xadd(stream, {"event": orjson.dumps(wire)})
                pipe.xreadgroup(GROUP, "the-previous-owner", {stream: ">"}, count=100)
                *_, read = await pipe.execute()
            assert len(read[0][1]) == 20
            await until(lambda: _async(len(_texts(job.reported)) == 21), 10)
            assert sorted(_texts(job.reported)) == sorted(["before", *(f"stray{i}" for i in range(20))])
            await until(lambda: _pending_zero(redis), 5)


async def test_trimming_keeps_what_another_consumer_still_holds(make_settings: Any, tmp_path: Path) -> None:
    """Soak finding: the owner trimmed its stream up to the entry after its last reported batch, and so
    deleted entries older than that which another replica had read and not yet acknowledged -- the strays
    it would claim a lease later came back empty, never reported. A trim now stops at the group's oldest
    pending entry."""
    async with running_sandbox(SandboxConfig(AK, SK, PROJECT, speed=20)) as (box, url):
        box.world.add_room(demo_room())
        async with live_room(make_settings, tmp_path, sandbox=(box, url), report_window_ms=50) as (
            daemon,
            _,
            job_id,
        ):
            job = box.world.jobs[job_id]
            redis = redis_of(daemon)
            stream = keys.room_ingest(ROOM)
            now_ms = int(time.time() * 1000)
            async with redis.pipeline(transaction=True) as pipe:  # read by the replica losing the room
                for i in range(20):
                    wire = {"timestamp": now_ms, "type": 1, "content": json.dumps({"content": f"stray{i}"})}
                    pipe.xadd(stream, {"event": orjson.dumps(wire)})
                pipe.xreadgroup(GROUP, "the-previous-owner", {stream: ">"}, count=100)
                await pipe.execute()
            for i in range(5):  # the owner reports newer events, batch by batch, and trims after each
                await ingest(daemon, [comment(f"after{i}")])
                await until(lambda i=i: _async(f"after{i}" in _texts(job.reported)), 10)
            await until(lambda: _async(len(_texts(job.reported)) == 25), 10)  # the strays, claimed later
            assert sorted(_texts(job.reported)) == sorted(
                [*(f"after{i}" for i in range(5)), *(f"stray{i}" for i in range(20))]
            )
            await until(lambda: _pending_zero(redis), 5)


async def test_a_worker_slow_to_stop_does_not_hold_up_the_supervisor(
    make_settings: Any, tmp_path: Path
) -> None:
    """Soak finding: stopping room workers one after another, inside the pass that renews the leases, let
    one worker slow to stop (a task not yet out of a call) hold every other room's renewal until their
    leases ran out -- the replica lost all its rooms, with the events it had read. Workers now stop in the
    background; the supervisor's pass returns at once."""
    async with running_sandbox(SandboxConfig(AK, SK, PROJECT, speed=20)) as (box, url):
        box.world.add_room(demo_room())
        async with live_room(make_settings, tmp_path, sandbox=(box, url)) as (daemon, _, _job):
            service = audience(daemon)
            worker = service.workers[ROOM]

            async def stuck() -> None:  # a task that needs two seconds to notice its cancellation
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    await asyncio.shield(asyncio.sleep(2.0))
                    raise

            worker._tasks.append(asyncio.create_task(stuck()))
            await asyncio.sleep(0)
            await redis_of(daemon).set(keys.room_lease(ROOM), b"another-replica", px=60_000)  # lease lost
            started = time.monotonic()
            await service.supervise()
            assert time.monotonic() - started < 0.5
            assert ROOM not in service.workers and not worker.started
            await until(lambda: _async(all(t.done() for t in worker._tasks)), 5)


async def test_claimed_older_entries_keep_the_buffer_in_stream_order(
    make_settings: Any, tmp_path: Path
) -> None:
    """Entries claimed from another consumer are older than what the owner has buffered: appended, they made
    a batch whose marker ran backwards (first > last), which a successor's resend could not find -- and the
    batch went again under another id. The buffer stays in stream order."""
    async with running_sandbox(SandboxConfig(AK, SK, PROJECT, speed=20)) as (box, url):
        box.world.add_room(demo_room())
        async with live_room(make_settings, tmp_path, sandbox=(box, url), report_window_ms=10_000) as (
            daemon,
            _,
            _job,
        ):
            worker = audience(daemon).workers[ROOM]
            now_ms = int(time.time() * 1000)

            def entry(ms: int, text: str) -> tuple[bytes, dict[bytes, bytes]]:
                wire = {"timestamp": ms, "type": 1, "content": json.dumps({"content": text})}
                return f"{ms}-0".encode(), {b"event": orjson.dumps(wire), b"d": b"1"}

            await worker.take([entry(now_ms, "new")], fresh=True)
            await worker.take([entry(now_ms - 500, "older"), entry(now_ms - 900, "oldest")], fresh=False)
            ids = [b.entry_id for b in worker.buffer]
            assert ids == sorted(ids, key=lambda i: tuple(int(x) for x in i.split("-")))


async def test_a_replica_that_lost_the_room_leaves_its_successors_marker_alone(
    make_settings: Any, tmp_path: Path
) -> None:
    """Soak finding: a worker that had lost the room (its successor already resending) marked its next batch
    over the successor's marker, and its late acknowledgement deleted the successor's: a crash then left
    the successor's batch unmarked, and its events went out again in another batch. A batch is marked only
    while Redis says the lease is this replica's, and an acknowledgement removes only its own marker."""
    async with live_room(make_settings, tmp_path) as (daemon, _box, _job_id):
        service, redis = audience(daemon), redis_of(daemon)
        marker = keys.room_report(ROOM)
        stream = keys.room_ingest(ROOM)
        await until(lambda: _async(service.leases.valid(ROOM)), 5)
        me = service.leases.replica_id
        marked, url = await service.streams.mark(ROOM, me, Marker("mine", "1-0", "1-0"))
        assert marked and url is not None
        assert (await redis.hgetall(marker))[b"batch_id"] == b"mine"
        await redis.set(keys.room_lease(ROOM), "the-successor", px=60_000)  # the room moved on
        await redis.hset(marker, mapping={"batch_id": "successors", "first": "2-0", "last": "2-0"})
        marked, _ = await service.streams.mark(ROOM, me, Marker("late", "3-0", "3-0"))
        assert not marked
        # The loser's acknowledgement of its own batch leaves the successor's marker in place ...
        entry = await redis.xadd(stream, {"event": b"{}"})
        await _acknowledge(service, "mine", entry)
        assert (await redis.hgetall(marker))[b"batch_id"] == b"successors"
        # ... and the successor's own acknowledgement removes it.
        await _acknowledge(service, "successors", entry)
        assert await redis.exists(marker) == 0


async def test_a_batch_interrupted_after_the_vendor_took_it_goes_again_as_it_was(
    make_settings: Any, tmp_path: Path, controllable_redis: Any
) -> None:
    """Soak finding: the vendor took a batch; Redis went away before its acknowledgement and the lease
    lapsed, so the reporter gave up on it -- and its next attempt formed a new batch from the grown buffer:
    the events the vendor already had went out again in a second batch. The batch is fixed from its
    marking until acknowledged: the next attempt resends it whole, under its id."""
    async with live_room(make_settings, tmp_path, report_window_ms=50, lease_ttl_s=1.0) as (
        daemon,
        box,
        job_id,
    ):
        job = box.world.jobs[job_id]
        box.faults.append(Fault("slow", hang_s=1.5, after=True, path_contains="live-event-report"))
        await ingest(daemon, [comment("taken")])
        await until(lambda: _async("taken" in _texts(job.reported)), 5)  # its answer is 1.5 s late
        await ingest(daemon, [comment("next")])
        worker = audience(daemon).workers[ROOM]
        await until(lambda: _async(len(worker.buffer) == 2), 2)
        controllable_redis.stop(save=True)  # before the answer: the acknowledgement cannot be written
        await asyncio.sleep(3.0)  # the lease lapses; the reporter gives the batch up and tries again
        controllable_redis.start()
        await until(lambda: _async(set(_texts(job.reported)) == {"taken", "next"}), 20)
        await until(lambda: _pending_zero(redis_of(daemon)), 10)
        batches: dict[str, set[str | None]] = {}
        for text, batch_id in zip(_all_texts(job), job.reported_batch, strict=True):
            batches.setdefault(text, set()).add(batch_id)
        assert all(len(ids) == 1 for ids in batches.values()), batches


async def _acknowledge(service: Any, batch_id: str, entry: Any) -> None:
    await service.streams.acknowledge(
        ROOM,
        job_id="job",
        batch_id=batch_id,
        entry_ids=[entry.decode() if isinstance(entry, bytes) else entry],
        keep_from="0-0",
        reported=0,
        types="",
        sent_to=None,
        refreshed_url=None,
    )


async def test_a_finished_jobs_refreshed_url_never_replaces_the_new_jobs(redis_client: Any) -> None:
    """Soak finding: the last answer to a finished job's reporter carried a refreshed report URL, stored over
    the URL of the job the room had started since -- and the room's reports went to the job that had ended
    (refused, retried, dropped as too old). A refreshed URL replaces only the URL the batch went to."""
    from orchestrator.store.events import RoomEvents
    from orchestrator.store.ingest import IngestStreams
    from orchestrator.store.rooms import RoomStore

    store = RoomStore(redis_client)
    streams = IngestStreams(redis_client, RoomEvents(redis_client))
    await store.register_room(ROOM)
    await streams.ensure_group(ROOM)
    await store.set_current_job(ROOM, "old-job", "PROCESSING", report_url="https://v/old?key=1")
    entry = (await redis_client.xadd(keys.room_ingest(ROOM), {"event": b"{}"})).decode()
    await store.set_current_job(ROOM, "new-job", report_url="https://v/new?key=1")  # the room moved on

    async def ack(sent_to: str, refreshed: str) -> None:
        await streams.acknowledge(
            ROOM,
            job_id="old-job",
            batch_id="b",
            entry_ids=[entry],
            keep_from="0-0",
            reported=1,
            types="comment:1",
            sent_to=sent_to,
            refreshed_url=refreshed,
        )

    await ack("https://v/old?key=1", "https://v/old?key=2")
    assert (await redis_client.hget(keys.room_state(ROOM), "report_url")) == b"https://v/new?key=1"
    await ack("https://v/new?key=1", "https://v/new?key=2")  # the room's own URL, refreshed: taken
    assert (await redis_client.hget(keys.room_state(ROOM), "report_url")) == b"https://v/new?key=2"
    assert not await streams.swap_report_url(ROOM, "https://v/old?key=2", "https://v/old?key=3")
    assert await streams.swap_report_url(ROOM, "https://v/new?key=2", "https://v/new?key=3")
    assert (await redis_client.hget(keys.room_state(ROOM), "reported")) == b"2"


async def test_a_worker_stopped_mid_report_lets_the_vendors_answer_arrive(
    make_settings: Any, tmp_path: Path
) -> None:
    """Soak finding: a worker stopped (its lease moving, the replica shutting down) while the vendor was
    taking a batch cancelled the call; the batch stayed marked, and the room's next owner sent it again --
    the vendor, which takes no idempotency key, counted those events twice. The reporter now finishes the
    batch in flight (at most ``STOP_GRACE_S``) before the worker's tasks are cancelled."""
    async with live_room(make_settings, tmp_path, report_window_ms=50) as (daemon, box, job_id):
        job = box.world.jobs[job_id]
        box.faults.append(Fault("slow", hang_s=0.5, after=True, path_contains="live-event-report"))
        await ingest(daemon, [comment("in flight")])
        await until(lambda: _async(_texts(job.reported) == ["in flight"]), 5)  # taken; answered 0.5 s late
        worker = audience(daemon).workers[ROOM]
        await worker.aclose()
        assert await _pending_zero(redis_of(daemon))  # acknowledged: no successor has it to send again
        state = await daemon.store.state(ROOM)
        assert state is not None and state["reported"] == "1"
