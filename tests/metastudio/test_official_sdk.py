"""The official SDK client (huaweicloudsdkmetastudio) works against our sandbox, and a wrong SK does not.

This proves the sandbox verifies signatures as the real service does: the requests are signed by Huawei's
own code, not ours.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkmetastudio.v1 import (
    ControlSmartLiveReq,
    CoStreamerConfig,
    ExecuteSmartLiveCommandRequest,
    ListSmartLiveJobsRequest,
    ListSmartLiveRequest,
    LiveEvent,
    LiveEventCallBackConfig,
    LiveEventReportRequest,
    LiveExitConfig,
    LiveJobRunConfig,
    PlayPolicy,
    ReportLiveEventReq,
    RTCLiveEventCallBackConfig,
    ShowSmartLiveRequest,
    ShowSmartLiveRoomRequest,
    StartSmartLiveReq,
    StartSmartLiveRequest,
    StopSmartLiveRequest,
    SubtitleConfig,
    VideoConfig,
    VoiceConfig,
)
from huaweicloudsdkmetastudio.v1 import MetaStudioClient as SdkClient

from tests.metastudio.conftest import AK, PROJECT, SK, Env


def _sdk(url: str, sk: str = SK) -> Any:
    return (
        SdkClient.new_builder()
        .with_credentials(BasicCredentials(AK, sk, PROJECT))
        .with_endpoints([url])
        .build()
    )


async def test_official_sdk_drives_the_sandbox(env: Env) -> None:
    sdk = _sdk(env.url)

    def scenario() -> dict[str, Any]:
        started = sdk.start_smart_live(
            StartSmartLiveRequest(
                room_id="demo-room",
                body=StartSmartLiveReq(
                    output_urls=["rtmp://push.example/live"],
                    stream_keys=["stream-key-1"],
                    video_config=VideoConfig(codec="H264", bitrate=4000, width=1080, height=1920),
                ),
            )
        )
        job_id = started.job_id
        shown = sdk.show_smart_live(ShowSmartLiveRequest(room_id="demo-room", job_id=job_id))
        import time

        deadline = time.monotonic() + 5
        while shown.state != "PROCESSING" and time.monotonic() < deadline:
            time.sleep(0.05)
            shown = sdk.show_smart_live(ShowSmartLiveRequest(room_id="demo-room", job_id=job_id))
        command = sdk.execute_smart_live_command(
            ExecuteSmartLiveCommandRequest(
                room_id="demo-room",
                job_id=job_id,
                body=ControlSmartLiveReq(
                    command="INSERT_PLAY_SCRIPT",
                    params={
                        "text_config": {"text": "欢迎新朋友"},
                        "play_type": "APPEND",
                        "rule_index": "r-1",
                    },
                ),
            )
        )
        report = sdk.live_event_report(
            LiveEventReportRequest(
                room_id="demo-room",
                job_id=job_id,
                body=ReportLiveEventReq(
                    total=1,
                    events=[
                        LiveEvent(
                            timestamp=1700000000000,
                            type=1,
                            content=json.dumps({"user": {"userId": "u1"}, "content": "多少钱"}),
                        )
                    ],
                ),
            )
        )
        room_jobs = sdk.list_smart_live(ListSmartLiveRequest(room_id="demo-room", limit=10, offset=0))
        tenant_jobs = sdk.list_smart_live_jobs(
            ListSmartLiveJobsRequest(limit=10, offset=0, state="PROCESSING")
        )
        room = sdk.show_smart_live_room(ShowSmartLiveRoomRequest(room_id="demo-room"))
        sdk.stop_smart_live(StopSmartLiveRequest(room_id="demo-room", job_id=job_id))
        stopped = sdk.show_smart_live(ShowSmartLiveRequest(room_id="demo-room", job_id=job_id))
        return {
            "job_id": job_id,
            "report_url": started.live_event_report_url,
            "state": shown.state,
            "command": command,
            "report": report,
            "room_jobs": room_jobs,
            "tenant_jobs": tenant_jobs,
            "room": room,
            "stopped": stopped.state,
        }

    out = await asyncio.to_thread(scenario)
    assert out["report_url"] and out["state"] == "PROCESSING"
    assert out["command"].command == "INSERT_PLAY_SCRIPT" and out["command"].command_id
    assert out["report"].live_event_report_url
    assert out["room_jobs"].count == 1 and out["room_jobs"].smart_live_jobs[0].job_id == out["job_id"]
    assert [j.job_id for j in out["tenant_jobs"].smart_live_jobs] == [out["job_id"]]
    assert out["room"].room_id == "demo-room"
    assert out["stopped"] == "SUCCEED"
    detail: Any = await env.control("GET", f"/jobs/{out['job_id']}")
    assert detail["inserts"][0]["text"] == "欢迎新朋友"
    assert json.loads(detail["reported"][0]["content"])["content"] == "多少钱"
    assert all(call.status and call.status < 400 for call in env.sandbox.calls)


async def test_official_sdk_with_wrong_sk_is_rejected(env: Env) -> None:
    sdk = _sdk(env.url, sk="not-the-secret-key")

    def call() -> None:
        sdk.show_smart_live_room(ShowSmartLiveRoomRequest(room_id="demo-room"))

    with pytest.raises(ClientRequestException) as info:
        await asyncio.to_thread(call)
    assert info.value.status_code == 401
    assert info.value.error_code == "MSS.00000001"
    assert env.sandbox.world.jobs == {}


def _full_body() -> Any:
    """A start request with every field the SDK's models carry (StartSmartLiveReq and all it holds)."""
    return StartSmartLiveReq(
        video_config=VideoConfig(
            clip_mode="RESIZE",
            codec="H264",
            bitrate=4000,
            width=1080,
            height=1920,
            frame_rate="25",
            is_subtitle_enable=False,
            subtitle_config=SubtitleConfig(
                dx=10,
                dy=20,
                h=80,
                w=864,
                font_name="HarmonyOS_Sans_SC_Black",
                font_size=54,
                font_color="#FFFFFF",
                stroke_color="#000000",
                stroke_thickness=2.5,
                opacity=0.9,
            ),
            dx=0,
            dy=0,
            is_enable_super_resolution=False,
            is_end_at_first_frame=False,
            output_external_url="https://obs.example/out",
            is_vocabulary_config_enable=False,
        ),
        play_policy=PlayPolicy(
            repeat_count=-1,
            auto_play_script=True,
            play_mode="TEXT",
            random_play_mode="SCRIPT_ITEM",
            need_independent_capture_client=False,
            live_exit_config=LiveExitConfig(
                max_live_duration=24, auto_stop_mode="SEGMENT_END", max_exception_waiting_duration=3
            ),
            is_rewrite_delay=False,
        ),
        output_urls=["rtmp://push.example/live"],
        stream_keys=["stream-key-1"],
        interaction_callback_url="https://daemon.example/callbacks/metastudio/interaction/t0k3n",
        live_event_callback_config=LiveEventCallBackConfig(
            live_event_type_callback_url="https://daemon.example/callbacks/metastudio/live-events",
            auth_type="MSS_A",
            key="k" * 32,
            callback_event_type=["SHOOT_SCRIPT_SWITCH", "RTMP_STREAM_STATE_CHANGE", "REPLY_COMMAND_FINISH"],
        ),
        rtc_callback_config=RTCLiveEventCallBackConfig(rtc_callback_event_type=["LIVE_PROGRESS"]),
        view_mode="VERTICAL",
        co_streamer_config=CoStreamerConfig(
            voice_config=VoiceConfig(voice_asset_id="voice-1", speed=100, pitch=100, volume=140),
            streamer_action="VOLUME_DOWN",
        ),
        job_run_config=LiveJobRunConfig(allow_resource_type="UNLIMITED", single_job_in_room=True),
    )


#: Every command of 004 §6.2.5 with params the SDK sends as they are.
COMMANDS: list[tuple[str, dict[str, Any] | None]] = [
    ("INSERT_PLAY_SCRIPT", {"text_config": {"text": "欢迎新朋友"}, "play_role": "STREAMER"}),
    ("INSERT_PLAY_AUDIO", {"audio_url": "https://obs.example/a.wav", "play_type": "APPEND"}),
    ("GET_CURRENT_PLAYING_SCRIPTS", None),
    ("GET_LIVE_JOB_CONFIG_INFO", None),
    (
        "REWRITE_PLAY_SCRIPT",
        {
            "scene_scripts": [
                {"script_name": "New", "shoot_scripts": [{"sequence_no": 1, "text_config": {"text": "新"}}]}
            ]
        },
    ),
    ("REWRITE_INTERACTION_RULES", {"interaction_rules": []}),
    ("SHOW_LAYER", {"layer_config": {"layer_type": "IMAGE"}}),
    ("REFRESH_OUTPUT_URL", {"output_urls": ["rtmp://push.example/live2"], "stream_keys": ["stream-key-2"]}),
    ("CLEAN_UP_INSERT_COMMAND", {"command_ids": []}),
]


async def test_official_sdk_full_body_every_command_filters_and_pages(env: Env) -> None:
    sdk = _sdk(env.url)

    def scenario() -> dict[str, Any]:
        import time

        jobs = []
        for _ in range(3):  # three jobs one after another: one per room at a time
            started = sdk.start_smart_live(StartSmartLiveRequest(room_id="demo-room", body=_full_body()))
            jobs.append(started.job_id)
            if len(jobs) < 3:
                sdk.stop_smart_live(StopSmartLiveRequest(room_id="demo-room", job_id=started.job_id))
            time.sleep(0.01)
        live = jobs[-1]
        deadline = time.monotonic() + 5
        while (
            sdk.show_smart_live(ShowSmartLiveRequest(room_id="demo-room", job_id=live)).state != "PROCESSING"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        answers = {
            name: sdk.execute_smart_live_command(
                ExecuteSmartLiveCommandRequest(
                    room_id="demo-room", job_id=live, body=ControlSmartLiveReq(command=name, params=params)
                )
            )
            for name, params in COMMANDS
        }
        first = sdk.show_smart_live(ShowSmartLiveRequest(room_id="demo-room", job_id=jobs[0]))
        second = sdk.show_smart_live(ShowSmartLiveRequest(room_id="demo-room", job_id=jobs[1]))
        pages = [
            sdk.list_smart_live(
                ListSmartLiveRequest(
                    room_id="demo-room", offset=offset, limit=2, sort_key="create_time", sort_dir="asc"
                )
            )
            for offset in (0, 2)
        ]
        filtered = sdk.list_smart_live_jobs(
            ListSmartLiveJobsRequest(
                state="SUCCEED,PROCESSING",
                room_name="Demo room",
                create_since=second.create_time,
                sort_key="create_time",
                sort_dir="desc",
                limit=10,
                offset=0,
            )
        )
        until = sdk.list_smart_live(
            ListSmartLiveRequest(
                room_id="demo-room", create_until=first.create_time, state="SUCCEED", limit=10
            )
        )
        return {
            "jobs": jobs,
            "answers": answers,
            "pages": pages,
            "filtered": filtered,
            "until": until,
            "first": first,
        }

    out = await asyncio.to_thread(scenario)
    jobs = out["jobs"]
    assert all(a.command_id for a in out["answers"].values())
    assert out["answers"]["GET_CURRENT_PLAYING_SCRIPTS"].result
    # the SDK's full body was accepted as sent: the sandbox kept every field
    request = env.sandbox.world.jobs[jobs[-1]].request
    assert request.video_config is not None and request.video_config.subtitle_config is not None
    assert request.video_config.subtitle_config.opacity == 0.9
    assert request.play_policy is not None and request.play_policy.live_exit_config is not None
    assert request.job_run_config is not None and request.job_run_config.single_job_in_room is True
    assert out["first"].live_event_callback_config.auth_type == "MSS_A"
    assert [p.count for p in out["pages"]] == [3, 3]
    assert [j.job_id for p in out["pages"] for j in p.smart_live_jobs] == jobs
    # create_since uses the second job's create_time (seconds): jobs created in the same second count too
    assert {j.job_id for j in out["filtered"].smart_live_jobs} >= {jobs[1], jobs[2]}
    assert jobs[0] in {j.job_id for j in out["until"].smart_live_jobs}
    assert all(call.status and call.status < 400 for call in env.sandbox.calls)
