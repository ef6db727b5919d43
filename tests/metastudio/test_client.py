"""Our MetaStudio client against the sandbox: every endpoint, every error path, every fault control."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from orchestrator.providers.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConfigError,
    ProviderConnectError,
    ProviderError,
    ProviderNotFound,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
    ProviderTransportError,
)
from orchestrator.providers.metastudio.client import (
    AkSkCredentials,
    Retry,
    RetryPolicy,
    TokenCredentials,
    credentials_from_settings,
    is_retryable,
)
from orchestrator.providers.metastudio.models import (
    CleanUpInsertCommand,
    Command,
    CommandName,
    JobState,
    LiveEvent,
    LiveEventReport,
    LiveGuideRuleInfo,
    PlayAudioInfo,
    PlayPolicy,
    PlayTextInfo,
    RefreshOutputUrlConfig,
    RewriteInteractionRules,
    RewritePlayScript,
    StartJobRequest,
    TextConfig,
    VideoConfig,
)
from orchestrator.sandbox.metastudio.app import SandboxConfig, running_sandbox
from orchestrator.settings import MetaStudioSettings
from tests.metastudio.conftest import AK, PROJECT, SK, Env, make_client
from tests.support.redis_server import free_port
from tests.support.server import serving_plain

ROOM = "demo-room"
START = StartJobRequest(
    output_urls=["rtmp://push.example/live"],
    stream_keys=["sk-stream-1"],
    video_config=VideoConfig(codec="H264", bitrate=4000, width=1080, height=1920),
    play_policy=PlayPolicy(repeat_count=-1),  # 24/7: plays until stopped
)


async def _processing(env: Env) -> str:
    job = await env.client.start_job(ROOM, START)
    for _ in range(100):
        if (await env.client.show_job(ROOM, job.job_id)).state is JobState.PROCESSING:
            return job.job_id
        await asyncio.sleep(0.02)
    raise AssertionError("job never reached PROCESSING")


def _calls(env: Env, method: str, suffix: str) -> int:
    return sum(1 for c in env.sandbox.calls if c.method == method and c.path.endswith(suffix))


# --- every endpoint ------------------------------------------------------------------------------------------


async def test_job_endpoints(env: Env) -> None:
    started = await env.client.start_job(ROOM, START)
    assert started.job_id and started.live_event_report_url
    shown = await env.client.show_job(ROOM, started.job_id)
    assert shown.state in (JobState.WAITING, JobState.PROCESSING) and shown.room_id == ROOM
    room_jobs = await env.client.list_room_jobs(ROOM, states=[JobState.WAITING, JobState.PROCESSING], limit=5)
    assert [j.job_id for j in room_jobs.smart_live_jobs] == [started.job_id]
    tenant = await env.client.list_jobs(room_name="Demo")
    assert tenant.count == 1
    await env.client.stop_job(ROOM, started.job_id)
    assert (await env.client.show_job(ROOM, started.job_id)).state is JobState.SUCCEED
    await env.client.stop_job(ROOM, started.job_id)  # stopping twice is harmless
    assert (await env.client.list_room_jobs(ROOM, states=[JobState.PROCESSING])).count == 0


async def test_show_room_reads_scripts_and_rules(env: Env) -> None:
    room = await env.client.show_room(ROOM)
    assert [s.script_name for s in room.scene_scripts] == ["Opening", "Products"]
    assert room.scene_scripts[1].shoot_scripts[0].relation_product.product_id == "p-1001"  # type: ignore[union-attr]
    assert {r.rule_index for r in room.interaction_rules} == {"price", "gift", "ask"}


async def test_all_nine_commands(env: Env) -> None:
    job_id = await _processing(env)
    text = Command.insert_play_script(PlayTextInfo(text_config=TextConfig(text="你好"), play_type="APPEND"))
    commands = [
        text,
        Command.insert_play_audio(PlayAudioInfo(audio_url="https://cdn.example/a.mp3", play_type="APPEND")),
        Command.rewrite_play_script(
            RewritePlayScript(
                scene_scripts=[
                    {
                        "script_name": "New",
                        "shoot_scripts": [
                            {"sequence_no": 1, "title": "Only", "text_config": {"text": "新的段落"}}
                        ],
                    }
                ]
            )
        ),
        Command.rewrite_interaction_rules(RewriteInteractionRules(interaction_rules=[])),
        Command.get_current_playing_scripts(),
        Command.show_layer(LiveGuideRuleInfo(layer_config={"layer_type": "TEXT"})),
        Command.refresh_output_url(
            RefreshOutputUrlConfig(output_urls=["rtmp://push.example/new"], stream_keys=["k2"])
        ),
        Command.get_live_job_config_info(),
        Command.clean_up_insert_command(CleanUpInsertCommand(command_ids=[])),
    ]
    assert {c.command for c in commands} == set(CommandName)
    results = {c.command: await env.client.command(ROOM, job_id, c) for c in commands}
    assert all(r.command_id for r in results.values())
    playing = results[CommandName.GET_CURRENT_PLAYING_SCRIPTS].result_json()
    assert playing["scene_scripts"][0]["script_name"] == "New"
    assert results[CommandName.GET_LIVE_JOB_CONFIG_INFO].result_json()["room_id"] == ROOM
    detail: Any = await env.control("GET", f"/jobs/{job_id}")
    assert detail["output_urls"] == ["rtmp://push.example/new"]
    assert detail["layers"] == [{"layer_config": {"layer_type": "TEXT"}}]


async def test_report_events_content_is_a_json_string_and_url_refreshes(env: Env) -> None:
    job = await env.client.start_job(ROOM, START)
    await _processing_job(env, job.job_id)
    events = [
        LiveEvent(
            timestamp=1_700_000_000_000 + i, type=1, content={"user": {"userId": f"u{i}"}, "content": "hi"}
        )
        for i in range(1000)
    ]
    url = await env.client.report_events(job.live_event_report_url or "", events)
    assert url == job.live_event_report_url  # not near expiry: same URL
    refreshed = await env.client.report_events(f"{job.live_event_report_url}&refresh_url=true", events[:1])
    assert refreshed and refreshed != job.live_event_report_url
    detail: Any = await env.control("GET", f"/jobs/{job.job_id}")
    assert len(detail["reported"]) == 1001
    assert isinstance(detail["reported"][0]["content"], str)
    assert '"userId":"u0"' in detail["reported"][0]["content"]


async def _processing_job(env: Env, job_id: str) -> None:
    for _ in range(100):
        if (await env.client.show_job(ROOM, job_id)).state is JobState.PROCESSING:
            return
        await asyncio.sleep(0.02)


def test_request_models_validate_documented_ranges() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="bitrate"):
        VideoConfig(codec="H264", bitrate=30001, width=1080, height=1920)
    with pytest.raises(ValidationError, match="text"):
        PlayTextInfo(text_config=TextConfig(text=""))
    with pytest.raises(ValidationError, match="text"):
        PlayTextInfo(text_config=TextConfig(text="x" * 131_073))
    with pytest.raises(ValidationError, match="rule_index"):
        PlayTextInfo(text_config=TextConfig(text="x"), rule_index="r" * 65)
    with pytest.raises(ValidationError, match="command_ids"):
        CleanUpInsertCommand(command_ids=["c"] * 101)
    too_many = [LiveEvent(timestamp=1, type=1)] * 1001
    with pytest.raises(ValidationError, match=r"total|events"):
        LiveEventReport.of(too_many)
    assert "sk-stream-1" not in repr(START)


# --- error paths ---------------------------------------------------------------------------------------------


async def test_not_found_is_typed_with_code_and_request_id(env: Env) -> None:
    with pytest.raises(ProviderNotFound) as info:
        await env.client.show_job(ROOM, "no-such-job")
    # 004 §11.2: "Livestreaming task not found" is an HTTP 500 -- read as gone, not as a vendor failure
    assert info.value.status == 500 and info.value.error_code == "MSS.20010046"
    assert info.value.request_id
    assert _calls(env, "GET", "/no-such-job") == 1  # not retried
    with pytest.raises(ProviderNotFound) as room_info:
        await env.client.start_job("no-such-room", START)
    assert room_info.value.status == 400 and room_info.value.error_code == "MSS.20010045"


async def test_bad_request_is_not_retried(env: Env) -> None:
    job_id = await _processing(env)
    url = env.client._url("smart-live-rooms", ROOM, "smart-live-jobs", job_id, "command")
    with pytest.raises(ProviderBadRequest) as info:
        await env.client._call(
            "POST", url, {"command": "GET_CURRENT_PLAYING_SCRIPTS", "params": []}, Retry.SAFE
        )
    assert info.value.error_code == "MSS.00000003"
    assert _calls(env, "POST", "/command") == 1


async def test_wrong_sk_unknown_ak_and_stale_date_are_401(env: Env) -> None:
    for credentials, now in (
        (AkSkCredentials(AK, "wrong-sk", PROJECT), None),
        (AkSkCredentials("UNKNOWNAK", SK, PROJECT), None),
        (AkSkCredentials(AK, SK, PROJECT), lambda: datetime.now(UTC) - timedelta(minutes=16)),
    ):
        client = make_client(env.session, env.url, credentials=credentials, **({"now": now} if now else {}))
        with pytest.raises(ProviderAuthError) as info:
            await client.show_room(ROOM)
        assert info.value.status == 401 and info.value.error_code == "MSS.00000001"
    assert env.sandbox.world.jobs == {}


async def test_temporary_credentials_send_a_signed_security_token(env: Env) -> None:
    seen: list[dict[str, str]] = []

    async def trace(session: object, ctx: object, params: aiohttp.TraceRequestStartParams) -> None:
        seen.append(dict(params.headers))

    tracing = aiohttp.TraceConfig()
    tracing.on_request_start.append(trace)
    async with aiohttp.ClientSession(trace_configs=[tracing]) as session:
        client = make_client(session, env.url, credentials=AkSkCredentials(AK, SK, PROJECT, "sts-token-1"))
        assert (await client.show_room(ROOM)).room_id == ROOM  # the sandbox verified the signature
    assert seen[0]["X-Security-Token"] == "sts-token-1"
    assert "x-security-token" in seen[0]["Authorization"].split("SignedHeaders=")[1]


async def test_token_auth() -> None:
    config = SandboxConfig(AK, SK, PROJECT, speed=50, auth_token="iam-token-123")
    async with running_sandbox(config) as (sandbox, url), aiohttp.ClientSession() as session:
        from orchestrator.sandbox.metastudio.app import demo_room

        sandbox.world.add_room(demo_room())
        good = make_client(session, url, credentials=TokenCredentials("iam-token-123", PROJECT))
        assert (await good.show_room(ROOM)).room_id == ROOM
        bad = make_client(session, url, credentials=TokenCredentials("stale", PROJECT))
        with pytest.raises(ProviderAuthError):
            await bad.show_room(ROOM)


def test_credentials_from_settings() -> None:
    assert isinstance(
        credentials_from_settings(MetaStudioSettings(project_id="p", ak="a", sk="s")), AkSkCredentials
    )
    token = credentials_from_settings(MetaStudioSettings(project_id="p", auth_mode="token", auth_token="t"))
    assert isinstance(token, TokenCredentials)
    for broken in (
        MetaStudioSettings(ak="a", sk="s"),
        MetaStudioSettings(project_id="p", ak="a"),
        MetaStudioSettings(project_id="p", auth_mode="token"),
    ):
        with pytest.raises(ProviderConfigError):
            credentials_from_settings(broken)


async def test_connection_refused_is_a_connect_error() -> None:
    async with aiohttp.ClientSession() as session:
        client = make_client(session, f"http://127.0.0.1:{free_port()}")
        with pytest.raises(ProviderConnectError):
            await client.show_room(ROOM)


@pytest.mark.parametrize(
    ("error", "mode", "expected"),
    [
        (ProviderConnectError("x"), Retry.UNSENT, True),
        (ProviderRateLimited(429, None, None), Retry.UNSENT, True),
        (ProviderTimeout("x"), Retry.UNSENT, False),
        (ProviderServerError(503, None, None), Retry.UNSENT, False),
        (ProviderTimeout("x"), Retry.SAFE, True),
        (ProviderTransportError("x"), Retry.SAFE, True),
        (ProviderServerError(500, None, None), Retry.SAFE, True),
        (ProviderBadRequest(400, None, None), Retry.SAFE, False),
        (ProviderAuthError(401, None, None), Retry.SAFE, False),
        (ProviderConnectError("x"), Retry.NEVER, False),
    ],
)
def test_retry_table(error: ProviderError, mode: Retry, expected: bool) -> None:
    assert is_retryable(error, mode) is expected


# --- resilience, one fault control at a time -----------------------------------------------------------------


async def test_5xx_on_a_read_is_retried(env: Env) -> None:
    await env.control(
        "POST",
        "/faults",
        {"kind": "error", "count": 2, "status": 503, "path_contains": "/smart-live-rooms/demo-room"},
    )
    room = await env.client.show_room(ROOM)
    assert room.room_id == ROOM
    assert _calls(env, "GET", "/smart-live-rooms/demo-room") == 3


async def test_5xx_on_insert_is_not_retried(env: Env) -> None:
    job_id = await _processing(env)
    await env.control(
        "POST", "/faults", {"kind": "error", "count": 1, "status": 500, "path_contains": "/command"}
    )
    with pytest.raises(ProviderServerError) as info:
        await env.client.command(
            ROOM, job_id, Command.insert_play_script(PlayTextInfo(text_config=TextConfig(text="x")))
        )
    assert info.value.error_code == "MSS.00000004"
    assert _calls(env, "POST", "/command") == 1


async def test_429_retry_after_is_honoured(env: Env) -> None:
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    client = make_client(env.session, env.url, sleep=record)
    job_id = await _processing(env)
    await env.control(
        "POST",
        "/faults",
        {"kind": "throttle", "count": 2, "retry_after_s": 0.75, "path_contains": "/command"},
    )
    response = await client.command(
        ROOM, job_id, Command.insert_play_script(PlayTextInfo(text_config=TextConfig(text="x")))
    )
    assert response.command_id
    assert slept == [0.75, 0.75]
    assert _calls(env, "POST", "/command") == 3


async def test_429_exhausted_raises_rate_limited(env: Env) -> None:
    client = make_client(env.session, env.url, retry=RetryPolicy(max_retries=1, max_retry_after_s=0.01))
    await env.control("POST", "/faults", {"kind": "throttle", "count": 5, "retry_after_s": 9})
    with pytest.raises(ProviderRateLimited) as info:
        await client.show_room(ROOM)
    assert info.value.retry_after_s == 9


async def test_hang_past_timeout_then_retry(env: Env) -> None:
    client = make_client(env.session, env.url, timeout_s=0.3)
    await env.control(
        "POST",
        "/faults",
        {"kind": "hang", "count": 1, "hang_s": 2, "path_contains": "/smart-live-rooms/demo-room"},
    )
    assert (await client.show_room(ROOM)).room_id == ROOM
    no_retry = make_client(env.session, env.url, timeout_s=0.3, retry=RetryPolicy(max_retries=0))
    await env.control("POST", "/faults", {"kind": "hang", "count": 1, "hang_s": 2})
    with pytest.raises(ProviderTimeout):
        await no_retry.show_room(ROOM)


@pytest.mark.parametrize("kind", ["hang", "reset"])
async def test_ambiguous_start_adopts_the_created_job(env: Env, kind: str) -> None:
    client = make_client(env.session, env.url, timeout_s=0.5)
    await env.control(
        "POST",
        "/faults",
        {"kind": kind, "after": True, "hang_s": 2, "method": "POST", "path_contains": "/smart-live-jobs"},
    )
    started = await client.start_job(ROOM, START)
    assert list(env.sandbox.world.jobs) == [started.job_id]  # exactly one job: no double start
    assert _calls(env, "POST", "/smart-live-jobs") == 1
    assert started.live_event_report_url


async def test_start_failing_before_taking_effect_is_retried_once_listing_shows_nothing(env: Env) -> None:
    await env.control(
        "POST",
        "/faults",
        {"kind": "error", "status": 503, "method": "POST", "path_contains": "/smart-live-jobs"},
    )
    started = await env.client.start_job(ROOM, START)
    assert list(env.sandbox.world.jobs) == [started.job_id]
    assert _calls(env, "POST", "/smart-live-jobs") == 2
    assert _calls(env, "GET", "/smart-live-jobs") == 1  # it looked before trying again


async def test_concurrency_limit() -> None:
    """At most ``max_concurrency`` calls are in flight at once, measured at a slow fake server."""
    inflight = peak = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        await asyncio.sleep(0.05)
        inflight -= 1
        return web.json_response({"room_id": "r"})

    app = web.Application()
    app.router.add_get("/v1/{project}/smart-live-rooms/{room}", slow)
    async with serving_plain(app) as url, aiohttp.ClientSession() as session:
        client = make_client(session, url, max_concurrency=2)
        await asyncio.gather(*(client.show_room("r") for _ in range(8)))
    assert peak == 2
