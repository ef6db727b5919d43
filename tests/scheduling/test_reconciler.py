"""The reconciler against the MetaStudio sandbox and a real Redis: windows, repairs, alerts, catch-up."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.providers.metastudio.client import AkSkCredentials, MetaStudioClient
from orchestrator.providers.metastudio.models import JobState, PlayPolicy, StartJobRequest
from orchestrator.sandbox.metastudio.app import Fault, MetaStudioSandbox, demo_room
from tests.scheduling.conftest import AK, PROJECT, ROOM, SK, Webhooks, daemon_for, in_, managed_room, until


def _jobs(box: MetaStudioSandbox) -> list[Any]:
    return sorted(box.world.jobs.values(), key=lambda j: j.create_time)


def _active(box: MetaStudioSandbox) -> list[Any]:
    return [j for j in box.world.jobs.values() if j.state.active]


async def test_window_starts_and_stops_the_room(make_settings: Any, tmp_path: Path, sandbox: Any) -> None:
    box, url = sandbox
    async with daemon_for(make_settings, tmp_path, url) as daemon:
        await daemon.configs.put(managed_room([{"kind": "once", "start": in_(1.0), "end": in_(3.0)}]))
        await until(lambda: _async(len(_active(box)) == 1), 5)
        job = _active(box)[0]
        assert job.request.output_urls == ["rtmp://push.example/live"]
        assert job.request.stream_keys == ["sched-stream-key"]
        assert job.request.live_event_callback_config.live_event_type_callback_url.startswith(daemon.url)
        await until(lambda: _async(job.state is JobState.SUCCEED), 6)  # stopped at the window's end

        async def stop_recorded() -> bool:  # the vendor stops the job before the daemon records the stop
            return len(await daemon.events()) == 2

        await until(stop_recorded, 5)
        assert len(box.world.jobs) == 1
        actions = [(e["action"], e["outcome"]) for e in await daemon.events()]
        assert actions == [("start", "done"), ("stop", "done")]
        state = await daemon.store.state(ROOM)
        assert state is not None and state["job_id"] == job.job_id and state["job_state"] == "SUCCEED"


async def _async(value: bool) -> bool:
    return value


async def test_failed_job_restarts_with_backoff_then_circuit_opens_and_alerts(
    make_settings: Any, tmp_path: Path, sandbox: Any, webhooks: Webhooks
) -> None:
    box, url = sandbox
    room = managed_room(
        [{"kind": "always"}],
        restart={
            "backoff_initial_s": 0.3,
            "backoff_max_s": 1,
            "max_restarts_per_hour": 2,
            "rtmp_grace_s": 5,
            "refresh_wait_s": 5,
        },
        alerts=[{"url": f"{webhooks.url}/generic"}, {"url": f"{webhooks.url}/feishu", "format": "feishu"}],
    )
    async with daemon_for(make_settings, tmp_path, url) as daemon:
        await daemon.configs.put(room)
        for expected_jobs in (1, 2, 3):
            await until(lambda n=expected_jobs: _async(len(box.world.jobs) == n and len(_active(box)) == 1))
            box.world.fail(_active(box)[0], "MSS.45000010", "RTMP stream push failed.")
        await until(
            lambda: _async(any(h["path"] == "/generic" and h["kind"] == "circuit_open" for h in webhooks.got))
        )
        # the first restart is alerted (the second within alert_min_interval_s is not), then the circuit
        await until(lambda: _async(len(webhooks.got) == 4))
        assert len(box.world.jobs) == 3  # the first start and two restarts; then the circuit is open
        assert [h["kind"] for h in webhooks.got if h["path"] == "/generic"] == ["restarted", "circuit_open"]
        feishu = [h for h in webhooks.got if h["path"] == "/feishu"]
        assert feishu and feishu[-1]["msg_type"] == "text" and "circuit_open" in feishu[-1]["content"]["text"]
        actions = [e["action"] for e in await daemon.events()]
        assert actions.count("restart") == 2 and "circuit_open" in actions
        alerts = await daemon.events("alert")
        assert [a["alert"] for a in alerts] == ["restarted", "restarted", "circuit_open"]
        assert "suppressed" in alerts[1]["outcome"] and "sent" in alerts[2]["outcome"]
        assert alerts[2]["severity"] == "critical"


async def test_rtmp_end_is_refreshed_then_restarts(make_settings: Any, tmp_path: Path, sandbox: Any) -> None:
    box, url = sandbox
    async with daemon_for(make_settings, tmp_path, url) as daemon:
        await daemon.configs.put(managed_room([{"kind": "always"}]))
        await until(lambda: _async(len(_active(box)) == 1))
        first = _active(box)[0]
        await until(lambda: _async(first.rtmp.get("rtmp://push.example/live") == "CONNECTED"))
        # An END the refresh repairs (or a forged one: the callback body is not signed): no restart.
        box.world.set_rtmp(first, "rtmp://push.example/live", "END")
        await until(lambda: _has_action(daemon, "refresh"))
        await until(lambda: _async(first.rtmp.get("rtmp://push.example/live") == "CONNECTED"))
        assert len(box.world.jobs) == 1 and first.state is JobState.PROCESSING
        # An END that stays: restart.
        first.rtmp_sticky = True
        box.world.set_rtmp(first, "rtmp://push.example/live", "END")
        await until(lambda: _async(len(box.world.jobs) == 2 and len(_active(box)) == 1))
        assert first.state is JobState.SUCCEED  # the old job was stopped before the new one started
        await until(lambda: _has_action(daemon, "restart"))
        assert any("ended" in e["reason"] for e in await daemon.events())


async def test_rtmp_stall_refreshes_the_output_then_restarts(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    box, url = sandbox
    async with daemon_for(make_settings, tmp_path, url) as daemon:
        await daemon.configs.put(managed_room([{"kind": "always"}]))
        await until(lambda: _async(len(_active(box)) == 1))
        job = _active(box)[0]
        await until(lambda: _async(job.rtmp.get("rtmp://push.example/live") == "CONNECTED"))
        # A drop the refresh repairs: no restart.
        box.world.set_rtmp(job, "rtmp://push.example/live", "DISCONNECTED")
        await until(lambda: _has_action(daemon, "refresh"))
        await until(lambda: _async(job.rtmp.get("rtmp://push.example/live") == "CONNECTED"))
        # A drop the refresh does not repair: restart.
        job.rtmp_sticky = True
        box.world.set_rtmp(job, "rtmp://push.example/live", "RECONNECTING")
        await until(lambda: _async(len(box.world.jobs) == 2))
        await until(lambda: _has_action(daemon, "restart"))
        actions = [e["action"] for e in await daemon.events()]
        assert actions == ["start", "refresh", "refresh", "restart"]


async def _has_action(daemon: Any, kind: str) -> bool:
    return any(e["action"] == kind for e in await daemon.events())


async def test_job_left_running_past_its_window_is_stopped_at_start(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    box, url = sandbox
    async with aiohttp.ClientSession() as http:  # the daemon is down: someone started the room meanwhile
        client = MetaStudioClient(http, base_url=url, credentials=AkSkCredentials(AK, SK, PROJECT))
        orphan = await client.start_job(
            ROOM, StartJobRequest(output_urls=["rtmp://x/live"], play_policy=PlayPolicy(repeat_count=-1))
        )
    async with daemon_for(make_settings, tmp_path, url) as daemon:
        await daemon.store.register_room(ROOM)
        await daemon.store.set_current_job(ROOM, orphan.job_id, "PROCESSING")
        await daemon.configs.put(managed_room([{"kind": "once", "start": in_(-60), "end": in_(-30)}]))
        await until(lambda: _async(box.world.jobs[orphan.job_id].state is JobState.SUCCEED))
        await until(lambda: _has_action(daemon, "stop"))
        stop = [e for e in await daemon.events() if e["action"] == "stop"]
        assert stop and "outside its schedule" in stop[0]["reason"]


async def test_paused_room_is_left_alone(make_settings: Any, tmp_path: Path, sandbox: Any) -> None:
    box, url = sandbox
    async with daemon_for(make_settings, tmp_path, url) as daemon:
        await daemon.configs.put(managed_room([{"kind": "always"}], paused=True))
        await daemon.reconciler.reconcile_all()
        await daemon.reconciler.reconcile_all()
        assert box.world.jobs == {}


async def test_boundary_pass_and_periodic_pass_do_not_both_record_a_start(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    """A start whose answer is slow: a periodic pass meanwhile sees the new job in the vendor's listing but
    not yet in Redis. Passes over one room take turns, so it is recorded once, and never 'adopted'."""
    box, url = sandbox
    async with daemon_for(make_settings, tmp_path, url, enabled=False) as daemon:
        await daemon.configs.put(managed_room([{"kind": "always"}]))
        box.faults.append(
            Fault("slow", hang_s=0.6, after=True, method="POST", path_contains="smart-live-jobs")
        )

        async def periodic_later() -> None:
            await asyncio.sleep(0.2)  # the job exists at the vendor by now; its start has not answered
            await daemon.reconciler.reconcile_all()

        await asyncio.gather(daemon.reconciler.reconcile_room(ROOM), periodic_later())
        assert len(box.world.jobs) == 1
        actions = [e["action"] for e in await daemon.events()]
        assert actions == ["start"], actions
        assert len(await daemon.events("job_started")) == 1


async def test_a_pass_with_an_older_listing_does_not_adopt_the_job_another_pass_stopped(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    """The periodic pass lists the vendor's jobs, then waits its turn while a boundary pass stops the room's
    job: its listing still shows the job active, Redis says it ended -- it must not adopt it back."""
    box, url = sandbox
    async with daemon_for(make_settings, tmp_path, url, enabled=False) as daemon:
        await daemon.configs.put(managed_room([{"kind": "once", "start": in_(-5), "end": in_(1.0)}]))
        await daemon.reconciler.reconcile_room(ROOM)  # starts the job
        job_id = (await daemon.store.state(ROOM) or {})["job_id"]
        await until(lambda: _async(box.world.jobs[job_id].state is JobState.PROCESSING))
        await asyncio.sleep(1.2)  # the window is over
        box.faults.append(Fault("slow", hang_s=0.6, method="POST", path_contains="/stop"))

        async def periodic_later() -> None:
            await asyncio.sleep(0.2)  # lists the job as still running, then waits for the room's turn
            await daemon.reconciler.reconcile_all()

        await asyncio.gather(daemon.reconciler.reconcile_room(ROOM), periodic_later())
        actions = [e["action"] for e in await daemon.events()]
        assert actions == ["start", "stop"], actions
        assert box.world.jobs[job_id].state is JobState.SUCCEED


async def test_room_down_pages_only_an_outage_its_repairs_did_not_end(
    make_settings: Any, tmp_path: Path, sandbox: Any, webhooks: Webhooks
) -> None:
    """Soak finding: every self-healed fault paged. A restart is a notice; room_down (error) is for a room
    still not live after ``down_alert_after_s``, and "resolved" follows when it is live again."""
    box, url = sandbox
    room = managed_room([{"kind": "always"}], alerts=[{"url": f"{webhooks.url}/generic"}])
    async with daemon_for(make_settings, tmp_path, url, down_alert_after_s=1.5) as daemon:
        await daemon.configs.put(room)
        await until(lambda: _async(len(_active(box)) == 1))
        # A failure the restart heals at once: a notice, no page.
        box.world.fail(_active(box)[0], "MSS.45000010", "RTMP stream push failed.")
        await until(lambda: _async(len(_active(box)) == 1 and _active(box)[0].state is JobState.PROCESSING))
        await until(lambda: _async(any(h["kind"] == "restarted" for h in webhooks.got)))
        await asyncio.sleep(2.0)  # longer than down_alert_after_s: the room was back well before
        assert [(h["kind"], h["severity"]) for h in webhooks.got] == [("restarted", "info")]
        # A failure the vendor will not let it repair (every start refused): room_down, then resolved.
        box.faults.append(Fault(kind="error", count=1000, method="POST", path_contains="smart-live-jobs"))
        box.world.fail(_active(box)[0], "MSS.45000010", "RTMP stream push failed.")
        await until(lambda: _async(any(h["kind"] == "room_down" for h in webhooks.got)), 10)
        down = next(h for h in webhooks.got if h["kind"] == "room_down")
        assert down["severity"] == "error" and "has not been for" in down["message"]
        box.faults.clear()
        await until(lambda: _async(any(h["kind"] == "resolved" for h in webhooks.got)), 10)
        assert "room_down" in next(h for h in webhooks.got if h["kind"] == "resolved")["message"]
        assert sum(h["kind"] == "room_down" for h in webhooks.got) == 1  # once per outage


async def test_an_ended_link_of_a_job_that_failed_restarts_it_in_the_same_pass(
    make_settings: Any, tmp_path: Path, sandbox: Any, webhooks: Webhooks
) -> None:
    """Soak finding: a job FAILS, its link ENDs; a pass working from a listing taken before the failure
    refreshed the dead job's output (refused: MSS.20010099), paged ``action_failed``, and restarted only a
    pass later. Now the refusal makes it ask the vendor, and the same pass restarts the job, silently."""
    box, url = sandbox
    room = managed_room([{"kind": "always"}], alerts=[{"url": f"{webhooks.url}/generic"}])
    async with daemon_for(make_settings, tmp_path, url, enabled=False) as daemon:  # passes driven here
        await daemon.configs.put(room)
        await daemon.reconciler.reconcile(room)
        await until(lambda: _async(len(_active(box)) == 1))
        job = _active(box)[0]
        await until(lambda: _async(job.rtmp.get("rtmp://push.example/live") == "CONNECTED"))
        await until(lambda: _link_state(daemon, "CONNECTED"))
        stale = await daemon.reconciler._vendor_active_jobs([room])  # the job listed as PROCESSING
        box.world.fail(job, "MSS.45000010", "RTMP stream push failed.")
        await until(lambda: _link_state(daemon, "END"))  # the callback is in; the job state is not
        await daemon.reconciler.reconcile(room, stale)
        assert len(box.world.jobs) == 2 and len(_active(box)) == 1  # restarted within this pass
        actions = [(e["action"], e["outcome"][:7]) for e in await daemon.events()]
        assert actions == [("start", "done"), ("refresh", "skipped"), ("restart", "done")]
        assert not [h for h in webhooks.got if h["severity"] != "info"]


async def _link_state(daemon: Any, state: str) -> bool:
    links = (await daemon.store.state(ROOM) or {}).get("rtmp", {})
    return any(link["state"] == state for link in links.values())


async def test_rooms_sharing_a_boundary_start_together_in_one_pass(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    """Soak finding: a pass worked on rooms one after another, so rooms whose windows opened together
    started a vendor round trip apart (26 rooms: the last over half a minute late), and one room's slow
    vendor call held up every other room. Ten rooms, each start answered 0.8 s late: one pass starts them
    all in about one start's time (one after another: eight seconds)."""
    box, url = sandbox
    room_ids = [f"room-{i}" for i in range(10)]
    for room_id in room_ids:
        box.world.add_room(demo_room().model_copy(update={"room_id": room_id}))
    async with daemon_for(make_settings, tmp_path, url, enabled=False, pass_concurrency=16) as daemon:
        for room_id in room_ids:
            await daemon.configs.put(managed_room([{"kind": "always"}], room_id=room_id))
        box.faults.append(
            Fault("slow", count=10, hang_s=0.8, method="POST", path_contains="/smart-live-jobs")
        )
        started = asyncio.get_running_loop().time()
        await daemon.reconciler.reconcile_all()
        elapsed = asyncio.get_running_loop().time() - started
        assert sorted(j.room_id for j in box.world.jobs.values()) == room_ids
        assert elapsed < 3.0, elapsed


async def test_a_slow_look_at_the_vendor_across_a_windows_end_starts_nothing_after_it(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    """Soak finding (one full CI run): a job started outside every window. A pass read the time, then spent
    seconds looking at the vendor (a slow poll or listing) while the window ended, and restarted the failed
    job by the time it had read before. The time is read after the look."""
    box, url = sandbox
    end = datetime.now(UTC) + timedelta(seconds=8)
    window = {"kind": "once", "start": (end - timedelta(hours=1)).isoformat(), "end": end.isoformat()}
    async with daemon_for(make_settings, tmp_path, url, enabled=False) as daemon:
        await daemon.configs.put(managed_room([window]))
        await daemon.reconciler.reconcile_room(ROOM)
        assert len(box.world.jobs) == 1
        await until(lambda: _async(bool(_active(box))))
        box.world.fail(_active(box)[0], "MSS.45000010", "RTMP stream push failed.")
        # Each look at the vendor answers 2.5 s late (under the client's 3 s timeout); the pass begins 2.3 s
        # before the end -- outside the boundary tolerance (2 s), where a start or restart is allowed.
        box.faults.append(Fault("slow", count=2, hang_s=2.5, method="GET", path_contains="smart-live-jobs"))
        await asyncio.sleep(max(0.0, (end - datetime.now(UTC)).total_seconds() - 2.3))
        await daemon.reconciler.reconcile_room(ROOM)  # its look at the vendor ends after the window's end
        assert datetime.now(UTC) > end
        assert len(box.world.jobs) == 1, "a job was started after its window"
        assert "restart" not in [e["action"] for e in await daemon.events()]
