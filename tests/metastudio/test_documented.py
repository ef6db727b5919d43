"""The sandbox answers as 004 documents (codes, statuses, defaults, ranges, filters), and the client reads
each answer as what it means: gone, not running, already running, unreadable -- never "retry for ever"."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from yarl import URL

from orchestrator.providers.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConflict,
    ProviderInvalidResponse,
    ProviderJobNotRunning,
    ProviderNotFound,
)
from orchestrator.providers.metastudio import auth
from orchestrator.providers.metastudio.client import Retry, TokenCredentials
from orchestrator.providers.metastudio.models import (
    Command,
    JobState,
    LiveEvent,
    PlayTextInfo,
    SmartLiveRoom,
    StartJobRequest,
    TextConfig,
)
from orchestrator.sandbox.metastudio.app import SandboxConfig, demo_room, raw_canonical_query, running_sandbox
from tests.metastudio.conftest import AK, PROJECT, SK, Env, make_client
from tests.metastudio.test_client import _processing
from tests.support.server import serving_plain

ROOM = "demo-room"
START = StartJobRequest(output_urls=["rtmp://push.example/live"])


def _calls(env: Env, method: str, suffix: str) -> int:
    return sum(1 for c in env.sandbox.calls if c.method == method and c.path.endswith(suffix))


# --- 1. a job that no longer exists ---------------------------------------------------------------------


async def test_a_vanished_job_reads_as_gone_on_every_call_and_nothing_is_retried(env: Env) -> None:
    job_id = await _processing(env)
    report_url = env.sandbox.world.jobs[job_id].report_url
    await env.control("POST", f"/jobs/{job_id}/vanish")
    env.sandbox.calls.clear()
    with pytest.raises(ProviderNotFound) as shown:
        await env.client.show_job(ROOM, job_id)
    with pytest.raises(ProviderNotFound) as commanded:
        await env.client.command(ROOM, job_id, Command.get_current_playing_scripts())  # idempotent: SAFE
    with pytest.raises(ProviderNotFound) as reported:
        await env.client.report_events(
            report_url, [LiveEvent(timestamp=1, type=1, content={"content": "hi"})]
        )
    # 004 §11.2: three documented codes for "does not exist or has expired", each an HTTP 500
    assert [(e.value.status, e.value.error_code) for e in (shown, commanded, reported)] == [
        (500, "MSS.20010046"),
        (500, "MSS.20010051"),
        (500, "MSS.20010059"),
    ]
    assert _calls(env, "GET", f"/{job_id}") == 1
    assert _calls(env, "POST", "/command") == 1
    assert _calls(env, "POST", "/live-event-report") == 1


# --- 2. documented codes and the client's reaction ------------------------------------------------------


async def test_a_second_start_is_refused_with_mss_20010036_and_the_client_adopts_the_running_job(
    env: Env,
) -> None:
    first = await env.client.start_job(ROOM, START)
    url = env.client._url("smart-live-rooms", ROOM, "smart-live-jobs")
    with pytest.raises(ProviderConflict) as raw:
        await env.client._call("POST", url, START.to_wire(), Retry.NEVER)
    assert (raw.value.status, raw.value.error_code) == (500, "MSS.20010036")
    again = await env.client.start_job(ROOM, START)  # what the daemon does: adopt, never a second job
    assert again.job_id == first.job_id
    assert len(env.sandbox.world.jobs) == 1


async def test_commands_and_reports_for_a_job_that_is_not_running(env: Env) -> None:
    job_id = await _processing(env)
    report_url = env.sandbox.world.jobs[job_id].report_url
    await env.client.stop_job(ROOM, job_id)
    with pytest.raises(ProviderJobNotRunning) as commanded:
        await env.client.command(ROOM, job_id, Command.get_current_playing_scripts())
    with pytest.raises(ProviderJobNotRunning) as reported:
        await env.client.report_events(
            report_url, [LiveEvent(timestamp=1, type=1, content={"content": "hi"})]
        )
    for info in (commanded, reported):
        assert info.value.status == 500 and info.value.error_code == "MSS.20010099"
        assert job_id in (info.value.error_msg or "") and "SUCCEED" in (info.value.error_msg or "")
    assert _calls(env, "POST", "/command") == 1  # an idempotent command, still not retried
    assert _calls(env, "POST", "/live-event-report") == 1


async def test_room_not_found_invalid_command_and_show_room(env: Env) -> None:
    with pytest.raises(ProviderNotFound) as started:
        await env.client.start_job("no-such-room", START)
    assert (started.value.status, started.value.error_code) == (400, "MSS.20010045")
    with pytest.raises(ProviderNotFound) as shown:
        await env.client.show_room("no-such-room")
    assert (shown.value.status, shown.value.error_code) == (404, "MSS.00000002")
    job_id = await _processing(env)
    url = env.client._url("smart-live-rooms", ROOM, "smart-live-jobs", job_id, "command")
    with pytest.raises(ProviderBadRequest) as bad:
        await env.client._call("POST", url, {"command": "DANCE"}, Retry.SAFE)
    assert (bad.value.status, bad.value.error_code) == (500, "MSS.20010053")
    assert _calls(env, "POST", "/command") == 1


async def test_report_url_authentication_codes(env: Env) -> None:
    job_id = await _processing(env)
    good = URL(env.sandbox.world.jobs[job_id].report_url)
    events = [LiveEvent(timestamp=1, type=1, content={"content": "hi"})]
    wrong = good.update_query(auth_key="0" * 64)
    with pytest.raises(ProviderAuthError) as failed:
        await env.client.report_events(str(wrong), events)
    expires = int(env.sandbox.clock.epoch_ms()) - 1
    expired = good.update_query(
        auth_key=env.sandbox.world.report_auth_key(env.sandbox.world.jobs[job_id], expires),
        expires_time=str(expires),
    )
    with pytest.raises(ProviderAuthError) as stale:
        await env.client.report_events(str(expired), events)
    assert (failed.value.status, failed.value.error_code) == (401, "MSS.20010039")
    assert (stale.value.status, stale.value.error_code) == (401, "MSS.20010054")
    await env.client.report_events(str(good), events)  # the right key still works


async def test_a_token_of_another_project_is_403_mss_00020006() -> None:
    config = SandboxConfig(AK, SK, PROJECT, speed=50, auth_token="iam-token-123")
    async with running_sandbox(config) as (sandbox, url), aiohttp.ClientSession() as session:
        sandbox.world.add_room(demo_room())
        other = make_client(session, url, credentials=TokenCredentials("iam-token-123", "another-project"))
        with pytest.raises(ProviderAuthError) as info:
            await other.show_room(ROOM)
        assert (info.value.status, info.value.error_code) == (403, "MSS.00020006")


# --- 3. defaults, ranges, filters, inheritance, tolerant responses ---------------------------------------


async def test_insert_play_script_without_play_type_plays_now(env: Env) -> None:
    job_id = await _processing(env)
    await env.client.command(
        ROOM, job_id, Command.insert_play_script(PlayTextInfo(text_config=TextConfig(text="你好")))
    )
    (insert,) = env.sandbox.world.jobs[job_id].inserts
    assert insert.play_type == "PLAY_NOW"  # 004 §11.5: "Default value: PLAY_NOW"


def test_client_models_enforce_the_documented_bounds() -> None:
    video = {"codec": "H264", "bitrate": 4000, "width": 1080, "height": 1920}
    bad: list[dict[str, Any]] = [
        {"video_config": {**video, "width": 3841}},
        {"video_config": {**video, "dx": -1921}},
        {"video_config": {**video, "subtitle_config": {"h": 1921}}},
        {"video_config": {**video, "subtitle_config": {"font_name": "x" * 65}}},
        {"video_config": {k: v for k, v in video.items() if k != "codec"}},
        {"play_policy": {"repeat_count": 101}},
        {"interaction_callback_url": "x" * 2049},
        {"output_urls": ["rtmp://a/1", "rtmp://b/2"]},
    ]
    for body in bad:
        with pytest.raises(ValueError, match="validation error"):
            StartJobRequest.model_validate(body)
    StartJobRequest.model_validate({"video_config": {**video, "width": 3840, "dx": -1920}})


async def test_list_filters_sort_and_pagination(env: Env) -> None:
    ids = []
    for _ in range(3):
        job = await env.client.start_job(ROOM, START)
        ids.append(job.job_id)
        await env.client.stop_job(ROOM, job.job_id)
        await asyncio.sleep(0.01)
    created = {j.job_id: j.created for j in env.sandbox.world.jobs.values()}
    since = created[ids[1]]
    listed = await env.client.list_room_jobs(ROOM, create_since=since, sort_dir="desc")
    assert [j.job_id for j in listed.smart_live_jobs] == [ids[2], ids[1]]
    until = await env.client.list_jobs(create_until=created[ids[0]], sort_key="update_time")
    assert [j.job_id for j in until.smart_live_jobs] == [ids[0]]
    page = await env.client.list_jobs(offset=1, limit=1, sort_key="create_time", sort_dir="asc")
    assert page.count == 3 and [j.job_id for j in page.smart_live_jobs] == [ids[1]]
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (await env.client.list_jobs(create_since=future)).count == 0


async def test_a_job_without_outputs_or_callback_config_takes_the_rooms(env: Env) -> None:
    callback = {"live_event_type_callback_url": "https://cb.example/x", "auth_type": "NONE"}
    room = demo_room().model_copy(
        update={
            "room_id": "room-defaults",
            "output_urls": ["rtmp://room-level/live"],
            "stream_keys": ["room-key"],
            "live_event_callback_config": callback,
        }
    )
    env.sandbox.world.add_room(room)
    started = await env.client.start_job("room-defaults", StartJobRequest())
    job = await env.client.show_job("room-defaults", started.job_id)
    assert env.sandbox.world.jobs[started.job_id].output_urls == ["rtmp://room-level/live"]
    # show job returns the job's live_event_callback_config (004 Table 6-284)
    assert job.live_event_callback_config is not None
    assert job.live_event_callback_config["live_event_type_callback_url"] == "https://cb.example/x"


def test_response_models_accept_what_the_documents_mark_optional() -> None:
    room = SmartLiveRoom.model_validate(
        {
            "room_id": "r",
            "last_job_status": "CANCELED",
            "interaction_rules": [{"rule_index": "a", "hit_condition": {"tags": [{"tag": "content"}]}}],
        }
    )
    assert room.last_job_status is JobState.CANCELED and not JobState.CANCELED.active
    assert room.interaction_rules[0].event_type is None


async def test_a_response_the_models_cannot_read_is_a_provider_error() -> None:
    from aiohttp import web

    async def odd(request: web.Request) -> web.Response:
        if request.path.endswith("/not-json"):
            return web.Response(text="<html>oops</html>", content_type="text/html")
        return web.json_response({"job_id": "j", "state": "DANCING"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", odd)
    async with serving_plain(app) as url, aiohttp.ClientSession() as session:
        client = make_client(session, url)
        with pytest.raises(ProviderInvalidResponse, match="state"):
            await client.show_job(ROOM, "j")
        with pytest.raises(ProviderInvalidResponse, match="not JSON"):
            await client.show_job(ROOM, "not-json")


# --- 5. what is signed is what is sent --------------------------------------------------------------------


async def test_the_sandbox_checks_the_query_as_received(env: Env) -> None:
    """A request signed over the canonical query but sent in yarl's encoding is refused: the check that a
    client sending another encoding than it signs would fail against a gateway that canonicalises bytes."""
    base = env.client._url("smart-live-jobs")
    pairs = [("state", "WAITING,PROCESSING"), ("room_name", "Demo room"), ("limit", "10")]
    signed_url = base.with_query(auth.canonical_query(pairs))
    headers = env.client._credentials.sign(
        "GET", signed_url, {"Content-Type": "application/json"}, b"", datetime.now(UTC)
    )
    yarl_encoded = base.with_query(pairs)  # "state=WAITING,PROCESSING&room_name=Demo+room"
    assert yarl_encoded.raw_query_string != auth.canonical_query(pairs)
    async with env.session.get(yarl_encoded, headers=headers) as resp:
        assert resp.status == 401 and (await resp.json())["error_code"] == "MSS.00000001"
    # Our client sends what it signs: the listing with a comma and a space in its query goes through.
    listed = await env.client.list_jobs(states=[JobState.WAITING, JobState.PROCESSING], room_name="Demo room")
    assert listed.count == 0
    assert raw_canonical_query("b=2&a=%2C&a=1") == "a=%2C&a=1&b=2"  # sorted by decoded value, bytes kept
