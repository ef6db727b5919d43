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
    ExecuteSmartLiveCommandRequest,
    ListSmartLiveJobsRequest,
    ListSmartLiveRequest,
    LiveEvent,
    LiveEventReportRequest,
    ReportLiveEventReq,
    ShowSmartLiveRequest,
    ShowSmartLiveRoomRequest,
    StartSmartLiveReq,
    StartSmartLiveRequest,
    StopSmartLiveRequest,
    VideoConfig,
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
