"""The holes a 24/7 room fell through: a job the vendor forgot, a room naming what does not exist, a forced
start that lost the report URL, a fence outliving a slow action. Sandbox + real Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis.exceptions import RedisError

from orchestrator.providers.metastudio.models import JobState
from orchestrator.sandbox.metastudio.app import Fault, MetaStudioSandbox
from orchestrator.scheduling.actions import Action, Current
from orchestrator.store import keys
from orchestrator.store.redis import is_cluster
from tests.scheduling.conftest import ROOM, Webhooks, daemon_for, managed_room, until
from tests.scheduling.test_admin import _cli

ROOT = Path(__file__).resolve().parents[2]


def _active(box: MetaStudioSandbox) -> list[Any]:
    return [j for j in box.world.jobs.values() if j.state.active]


async def _true(value: bool) -> bool:
    return value


async def test_a_job_that_vanished_at_the_vendor_is_restarted_within_one_pass(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    """004: HTTP 500 MSS.20010046 "Livestreaming task not found" -- before, only a 404 counted as gone, and
    the room stayed recorded PROCESSING for ever."""
    box, url = sandbox
    async with daemon_for(make_settings, tmp_path, url) as daemon:
        await daemon.configs.put(managed_room([{"kind": "always"}]))
        await until(lambda: _true(len(_active(box)) == 1))
        gone = _active(box)[0]
        await until(lambda: _true(gone.state.value == "PROCESSING"))
        vanished_at = time.monotonic()
        box.world.vanish(gone)
        # one pass (0.2 s) + the first restart's backoff (none: the room has not restarted this hour)
        await until(lambda: _true(len(_active(box)) == 1), 3)
        assert time.monotonic() - vanished_at < 2.0

        async def recorded() -> bool:  # the new job is recorded once its start call has returned
            state = await daemon.store.state(ROOM)
            return state is not None and state["job_id"] == _active(box)[0].job_id

        await until(recorded, 3)

        async def restarted() -> bool:  # recorded right after the new job (the pass may still be writing it)
            return any(e["action"] == "restart" for e in await daemon.events())

        await until(restarted, 3)
        restarts = [e for e in await daemon.events() if e["action"] == "restart"]
        assert gone.job_id in restarts[0]["reason"]


async def test_an_action_failing_for_any_reason_releases_its_fence_records_alerts_and_spares_other_rooms(
    make_settings: Any, tmp_path: Path, sandbox: Any, webhooks: Webhooks
) -> None:
    box, url = sandbox
    other = box.world.add_room(box.world.rooms[ROOM].model_copy(update={"room_id": "other-room"}))
    assert other.room_id == "other-room"
    broken = managed_room(
        [{"kind": "always"}], callback_profile="typo", alerts=[{"url": f"{webhooks.url}/generic"}]
    )
    async with daemon_for(make_settings, tmp_path, url, reconcile_interval_s=3600) as daemon:
        # Written past the API's check (an older daemon, a hand edit): the reconciler must survive it.
        redis = daemon.store._redis
        await redis.set(keys.room_config(ROOM), broken.stored())
        await daemon.store.register_room(ROOM)
        await daemon.configs.put(managed_room([{"kind": "always"}], room_id="other-room"))
        await daemon.reconciler.reconcile_all()  # no exception out of the pass
        assert [j.room_id for j in _active(box)] == ["other-room"]  # the other room went live
        (failed,) = [e for e in await daemon.events() if e["action"] == "start"]
        assert failed["outcome"].startswith("failed: callback_profile:") and "typo" in failed["outcome"]
        assert not await redis.keys(f"orch:{{{ROOM}}}:fence:*")  # released at once, not held for fence_ttl_s
        await until(lambda: _true(any(h["kind"] == "start_failed" for h in webhooks.got)))
        # The typo fixed: the next pass starts the room (after the failed attempt's backoff), no fence in the way.
        await daemon.configs.put(managed_room([{"kind": "always"}]))
        await asyncio.sleep(0.35)  # backoff_initial_s 0.3
        await daemon.reconciler.reconcile_all()
        assert sorted(j.room_id for j in _active(box)) == [ROOM, "other-room"]


async def test_the_api_refuses_a_room_naming_a_missing_callback_profile(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    _, url = sandbox
    async with daemon_for(make_settings, tmp_path, url) as daemon:
        body = json.loads(managed_room([{"kind": "always"}], callback_profile="typo").stored())
        for method, path in (("POST", "/api/rooms"), ("PUT", f"/api/rooms/{ROOM}")):
            status, error = await daemon.api(method, path, body)
            assert status == 422 and error["error_code"] == "ROOM_INVALID", error
            assert [e["field"] for e in error["errors"]] == ["callback_profile"]
            assert "typo" in error["error_msg"] and "default" in error["error_msg"]  # what exists
        assert await daemon.configs.get(ROOM) is None
        # the CLI's `rooms apply` goes through the same check, and says which field
        applied = await _cli(daemon.url, "rooms", "apply", str(_rooms_file(tmp_path, "typo")))
        assert applied.returncode != 0 and "callback_profile" in applied.stderr, applied.stderr
        assert "Traceback" not in applied.stderr
        assert await daemon.configs.get(ROOM) is None


def _rooms_file(tmp_path: Path, profile: str) -> Path:
    path = tmp_path / "rooms.yaml"
    room = {
        "room_id": ROOM,
        "callback_profile": profile,
        "template": {"output_urls": ["rtmp://push.example/live"]},
        "schedule": {"timezone": "UTC", "windows": [{"kind": "always"}]},
    }
    path.write_text(yaml.safe_dump({"rooms": [room]}))
    return path


def _orchestrator(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, timeout=60, env=env
    )


async def test_check_config_and_run_refuse_a_rooms_file_naming_a_missing_profile(tmp_path: Path) -> None:
    """The new user's day: the example rooms file names profile 'default', the config defines none."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env["ORCH_SCHEDULING__ROOMS_FILE"] = str(_rooms_file(tmp_path, "default"))
    for command in (["check-config"], ["run", "--port", "0"]):
        result = await asyncio.to_thread(
            _orchestrator, *command, "--config", str(ROOT / "config" / "orchestrator.example.toml"), env=env
        )
        assert result.returncode == 2, result.stderr
        assert "rooms[0].callback_profile: no callback profile named 'default'" in result.stderr
        assert "Traceback" not in result.stderr
    env["ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__PUBLIC_URL"] = (
        "https://live.example.com/callbacks/metastudio/live-events"
    )
    env["ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__KEYS"] = '["k1"]'
    ok = await asyncio.to_thread(_orchestrator, "check-config", env=env)
    assert ok.returncode == 0, ok.stderr
    env["ORCH_INTERACTION__POLICY_FILE"] = str(tmp_path / "missing-policy.yaml")
    missing = await asyncio.to_thread(_orchestrator, "check-config", env=env)
    assert missing.returncode == 2 and "interaction.policy_file: cannot read" in missing.stderr


async def test_a_forced_start_records_the_new_jobs_report_url_and_event(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    box, url = sandbox
    async with daemon_for(make_settings, tmp_path, url) as daemon:
        await daemon.configs.put(managed_room([{"kind": "always"}]))
        await until(lambda: _true(len(_active(box)) == 1))
        first = _active(box)[0]
        await until(lambda: daemon_state_has(daemon, "report_url"))
        assert (await daemon.api("POST", f"/api/rooms/{ROOM}/pause"))[0] == 200
        status, stopped = await daemon.api("POST", f"/api/rooms/{ROOM}/stop")
        assert status == 200 and stopped["job_id"] == first.job_id
        status, started = await daemon.api("POST", f"/api/rooms/{ROOM}/start")
        assert status == 200 and started["job_id"] != first.job_id
        new = box.world.jobs[started["job_id"]]
        raw = await daemon.store._redis.hget(keys.room_state(ROOM), "report_url")
        assert raw is not None and raw.decode() == new.report_url  # not the previous job's, not none
        forced = [e for e in await daemon.events() if e["reason"] == "forced through the admin API"]
        assert [(e["action"], e["outcome"]) for e in forced] == [("stop", "done"), ("start", "done")]
        assert (
            new.request.live_event_callback_config is not None
        )  # the same start request as the reconciler's
        assert new.request.live_event_callback_config.live_event_type_callback_url.endswith(
            f"?room_id={ROOM}"
        )


async def daemon_state_has(daemon: Any, field: str) -> bool:
    return bool(await daemon.store._redis.hget(keys.room_state(ROOM), field))


async def test_a_fence_is_renewed_while_a_slow_start_runs(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    """The vendor takes three fence lifetimes to answer: the holder keeps its fence, the other replica
    never starts a second time."""
    box, url = sandbox
    box.faults.append(Fault(kind="slow", hang_s=2.4, method="POST", path_contains="/smart-live-jobs"))
    async with (
        daemon_for(make_settings, tmp_path, url, fence_ttl_s=0.8) as one,
        daemon_for(make_settings, tmp_path, url, fence_ttl_s=0.8),
    ):
        await one.configs.put(managed_room([{"kind": "always"}]))
        await until(lambda: _true(len(_active(box)) == 1), 10)
        await asyncio.sleep(1.0)
        starts = [c for c in box.calls if c.method == "POST" and c.path.endswith("/smart-live-jobs")]
        assert len(starts) == 1 and len(box.world.jobs) == 1


async def test_a_room_live_again_sends_resolved_once(
    make_settings: Any, tmp_path: Path, sandbox: Any, webhooks: Webhooks
) -> None:
    box, url = sandbox
    box.faults.append(
        Fault(kind="error", status=500, count=4, method="POST", path_contains="/smart-live-jobs")
    )
    room = managed_room(
        [{"kind": "always"}], name="Evening shop", alerts=[{"url": f"{webhooks.url}/generic"}]
    )
    async with daemon_for(make_settings, tmp_path, url) as daemon:
        await daemon.configs.put(room)
        await until(lambda: _true(any(h["kind"] == "start_failed" for h in webhooks.got)), 10)
        await until(lambda: _true(any(h["kind"] == "resolved" for h in webhooks.got)), 15)
        await asyncio.sleep(1.0)  # more passes: resolved once
        kinds = [h["kind"] for h in webhooks.got]
        assert kinds.count("resolved") == 1 and kinds.index("start_failed") < kinds.index("resolved")
        resolved = next(h for h in webhooks.got if h["kind"] == "resolved")
        assert resolved["room_name"] == "Evening shop" and "start_failed" in resolved["message"]
        state = await daemon.store.state(ROOM)
        assert state is not None and "open_alerts" not in state


@pytest.mark.slow
async def test_daemon_level_alerts_reach_the_daemons_targets(
    make_settings: Any, tmp_path: Path, sandbox: Any, webhooks: Webhooks, controllable_redis: Any
) -> None:
    """Vendor credentials refused, and Redis lost then back, go to ``alerts.targets`` (not only rooms')."""
    _, url = sandbox
    targets = {"targets": [{"url": f"{webhooks.url}/ops"}]}
    async with daemon_for(
        make_settings, tmp_path, url, metastudio={"sk": "wrong-sk"}, alerts=targets
    ) as daemon:
        await daemon.configs.put(managed_room([{"kind": "always"}]))
        await until(lambda: _true(any(h["kind"] == "vendor_auth" for h in webhooks.got)), 10)
        ops = next(h for h in webhooks.got if h["kind"] == "vendor_auth")
        assert ops["path"] == "/ops" and ops["severity"] == "critical" and "401" in ops["message"]
        controllable_redis.stop()
        try:
            await until(lambda: _true(any(h["kind"] == "redis_lost" for h in webhooks.got)), 15)
        finally:
            controllable_redis.start()
        await until(
            lambda: _true(any(h["kind"] == "resolved" and "Redis" in h["message"] for h in webhooks.got)), 15
        )


async def test_every_redis_outage_is_paged_once_and_wakes_the_reconciler(
    make_settings: Any, webhooks: Webhooks, controllable_redis: Any
) -> None:
    """Soak findings: the watcher PINGed through the shared client, whose retries (real seconds, backoff)
    outlasted short outages, which then went unreported; and a second outage within
    ``alert_min_interval_s`` of the first -- resolved in between -- was swallowed by the first's rate limit.
    Now: its own client without retries, two failed checks in a row page once, "resolved" lifts the limit,
    and Redis back runs the reconcile pass at once (boundaries in the outage were skipped)."""
    import aiohttp
    from aiohttp import web

    from orchestrator.app import _watch_redis
    from orchestrator.appkeys import SETTINGS
    from orchestrator.scheduling.alerts import Alerter
    from orchestrator.settings import AlertTarget

    settings = make_settings(redis={"readiness_timeout_s": 0.3, "connect_timeout_s": 0.2})
    app = web.Application()
    app[SETTINGS] = settings

    class Passes:
        woken = 0

        def pass_now(self) -> None:
            self.woken += 1

    passes = Passes()
    async with aiohttp.ClientSession() as http:
        alerter = Alerter(
            http,
            None,  # type: ignore[arg-type]  -- daemon alerts never touch Redis
            min_interval_s=300,
            events_maxlen=100,
            attempts=1,
            timeout_s=1,
            daemon_targets=[AlertTarget(url=f"{webhooks.url}/ops")],
        )
        watcher = asyncio.create_task(_watch_redis(app, alerter, passes, interval_s=0.1))  # type: ignore[arg-type]
        try:
            for outage in (1, 2):
                controllable_redis.stop(save=True)
                await until(lambda n=outage: _true(_kinds(webhooks).count("redis_lost") == n), 5)
                controllable_redis.start()
                await until(lambda n=outage: _true(_kinds(webhooks).count("resolved") == n), 5)
                assert passes.woken == outage
        finally:
            watcher.cancel()
    assert _kinds(webhooks) == ["redis_lost", "resolved", "redis_lost", "resolved"]


def _kinds(webhooks: Webhooks) -> list[str]:
    return [h["kind"] for h in webhooks.got]


async def test_a_redis_error_inside_an_action_pages_nobody_about_the_room(
    make_settings: Any, tmp_path: Path, sandbox: Any, webhooks: Webhooks, redis_client: Any
) -> None:
    """Soak finding: a refresh that reached the vendor, then met a Redis error recording it, paged the
    room's owner (``action_failed``) -- for Redis, which the Redis watcher pages once for the daemon. The
    action is still recorded as failed in the room's events. (Redis refuses HSET by ACL here: a real
    error from a real Redis at exactly that step, while the XADD recording it still works.)"""
    if is_cluster(redis_client):
        pytest.skip("the ACL is one server's; a cluster has one per node")
    box, url = sandbox
    room = managed_room([{"kind": "always"}], alerts=[{"url": f"{webhooks.url}/generic"}])
    async with daemon_for(make_settings, tmp_path, url) as daemon:
        await daemon.configs.put(room)
        await until(lambda: _true(any(j.state is JobState.PROCESSING for j in _active(box))), 10)
        job_id = _active(box)[0].job_id
        refresh = Action("refresh", "test: the link broke", "redis-error", "rtmp://push.example/live")
        await redis_client.execute_command("ACL", "SETUSER", "default", "-hset")
        try:
            outcome = await daemon.reconciler.actions.take(room, refresh, Current(job_id, "RUNNING"))
        finally:
            await redis_client.execute_command("ACL", "SETUSER", "default", "+hset")
        assert outcome.status == "failed" and isinstance(outcome.error, RedisError)
        recorded = [e for e in await daemon.events() if e["reason"] == refresh.reason]
        assert len(recorded) == 1 and recorded[0]["outcome"].startswith("failed: ")
        assert "NOPERM" in recorded[0]["outcome"] or "permission" in recorded[0]["outcome"]
        await asyncio.sleep(0.5)  # an alert is sent in the background, if at all
        assert [h["kind"] for h in webhooks.got if h["kind"] == "action_failed"] == []
