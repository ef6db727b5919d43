"""The MetaStudio sandbox behaves as documented: lifecycle, callbacks (signed, subscribed, shaped by fault
controls), RTMP and job fault controls, inserted scripts, interaction rules, and validation."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from orchestrator.providers.metastudio.models import (
    CleanUpInsertCommand,
    Command,
    JobState,
    LiveEvent,
    LiveEventCallbackConfig,
    PlayPolicy,
    PlayTextInfo,
    RefreshOutputUrlConfig,
    StartJobRequest,
    TextConfig,
)
from tests.metastudio.conftest import Env
from tests.support.server import serving_plain

ROOM = "demo-room"
KEY = "callback-key-0123456789abcdef"


@dataclass
class Received:
    path_qs: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def event_type(self) -> str:
        return str(self.body["event_type"])

    @property
    def message(self) -> dict[str, Any]:
        return dict(json.loads(self.body["message"]))


@dataclass
class Receiver:
    url: str
    got: list[Received] = field(default_factory=list)
    interactions: list[dict[str, Any]] = field(default_factory=list)

    def of(self, event_type: str) -> list[Received]:
        return [r for r in self.got if r.event_type == event_type]

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await asyncio.sleep(0.01)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver("")

    async def callback(request: web.Request) -> web.Response:
        rec.got.append(Received(request.path_qs, dict(request.headers), await request.json()))
        return web.json_response({})

    async def interaction(request: web.Request) -> web.Response:
        rec.interactions.append(await request.json())
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/cb", callback)
    app.router.add_post("/interaction", interaction)
    async with serving_plain(app) as url:
        rec.url = url
        yield rec


def _start(
    receiver: Receiver,
    *,
    auth_type: str = "MSS_A",
    events: list[str] | None = None,
    repeat: int = -1,
    query: str = "",
) -> StartJobRequest:
    return StartJobRequest(
        output_urls=["rtmp://push.example/live"],
        stream_keys=["stream-key-1"],
        play_policy=PlayPolicy(repeat_count=repeat),
        interaction_callback_url=f"{receiver.url}/interaction?token=t1",
        live_event_callback_config=LiveEventCallbackConfig(
            live_event_type_callback_url=f"{receiver.url}/cb{query}",
            auth_type=auth_type,  # type: ignore[arg-type]
            key=KEY if auth_type != "NONE" else None,
            callback_event_type=events,  # type: ignore[arg-type]
        ),
    )


def _hmac(uri: str, time_hex: str) -> str:
    return hmac.new(KEY.encode(), (uri + time_hex).encode(), hashlib.sha256).hexdigest()


# --- lifecycle -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("repeat", "rounds"), [(0, 1), (1, 2)])
async def test_repeat_count_rounds_then_succeed(
    env: Env, receiver: Receiver, repeat: int, rounds: int
) -> None:
    job = await env.client.start_job(ROOM, _start(receiver, repeat=repeat))
    assert (await env.client.show_job(ROOM, job.job_id)).state is JobState.WAITING
    await receiver.wait_for(lambda: env.sandbox.world.jobs[job.job_id].state is JobState.SUCCEED)
    switches = [r.message for r in receiver.of("SHOOT_SCRIPT_SWITCH")]
    assert len(switches) == 4 * rounds  # the demo room has 4 paragraphs
    assert [s["shoot_script_sequence_no"] for s in switches[:4]] == ["1", "2", "1", "2"]  # numbers as strings
    assert switches[2]["scene_script_name"] == "Products" and switches[2]["product_id"] == "p-1001"
    shown = await env.client.show_job(ROOM, job.job_id)
    assert shown.end_time and shown.duration and shown.duration > 0
    await receiver.wait_for(
        lambda: any(r.message["state"] == "END" for r in receiver.of("RTMP_STREAM_STATE_CHANGE"))
    )


async def test_forever_until_stopped(env: Env, receiver: Receiver) -> None:
    job = await env.client.start_job(ROOM, _start(receiver, repeat=-1))
    await receiver.wait_for(lambda: len(receiver.of("SHOOT_SCRIPT_SWITCH")) >= 9)  # more than two rounds
    assert (await env.client.show_job(ROOM, job.job_id)).state is JobState.PROCESSING
    await env.client.stop_job(ROOM, job.job_id)
    assert (await env.client.show_job(ROOM, job.job_id)).state is JobState.SUCCEED


# --- callbacks: signing, subscription ---------------------------------------------------------------------------


async def test_mss_a_signs_the_configured_url_plus_hex_time(env: Env, receiver: Receiver) -> None:
    await env.client.start_job(ROOM, _start(receiver, auth_type="MSS_A", query="?tenant=a"))
    await receiver.wait_for(lambda: len(receiver.got) >= 3)
    for got in receiver.got:
        assert got.path_qs.startswith("/cb?tenant=a&hwSecret=")
        query = dict(part.split("=", 1) for part in got.path_qs.split("?", 1)[1].split("&"))
        assert query["hwSecret"] == _hmac(f"{receiver.url}/cb?tenant=a", query["hwTime"])
        assert abs(int(query["hwTime"], 16) - _now_ms()) < 60_000  # milliseconds, now
        assert isinstance(got.body["message"], str)  # message is a JSON string


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


async def test_mss_a_head_signs_in_headers(env: Env, receiver: Receiver) -> None:
    await env.client.start_job(ROOM, _start(receiver, auth_type="MSS_A_HEAD"))
    await receiver.wait_for(lambda: len(receiver.got) >= 2)
    for got in receiver.got:
        assert got.path_qs == "/cb"
        assert got.headers["x-hw-mss-secret"] == _hmac(f"{receiver.url}/cb", got.headers["x-hw-mss-time"])


async def test_none_auth_and_subscription_filter(env: Env, receiver: Receiver) -> None:
    await env.client.start_job(ROOM, _start(receiver, auth_type="NONE", events=["RTMP_STREAM_STATE_CHANGE"]))
    await receiver.wait_for(lambda: len(receiver.got) >= 2)
    await asyncio.sleep(0.3)  # paragraphs have switched meanwhile, but were not subscribed
    assert {r.event_type for r in receiver.got} == {"RTMP_STREAM_STATE_CHANGE"}
    assert [r.message["state"] for r in receiver.got[:2]] == ["CONNECTING", "CONNECTED"]
    assert receiver.got[0].message["stream_key"] == "stream-key-1"
    assert all("hwSecret" not in r.path_qs and "x-hw-mss-secret" not in r.headers for r in receiver.got)


# --- fault controls: RTMP, block, fail -------------------------------------------------------------------------


async def test_rtmp_drop_and_refresh(env: Env, receiver: Receiver) -> None:
    job = await env.client.start_job(ROOM, _start(receiver, events=["RTMP_STREAM_STATE_CHANGE"]))
    await receiver.wait_for(lambda: len(receiver.got) >= 2)
    for state in ("DISCONNECTED", "RECONNECTING", "END"):
        await env.control("POST", f"/jobs/{job.job_id}/rtmp", {"state": state})
    await receiver.wait_for(lambda: len(receiver.got) >= 5)
    assert [r.message["state"] for r in receiver.got] == [
        "CONNECTING",
        "CONNECTED",
        "DISCONNECTED",
        "RECONNECTING",
        "END",
    ]
    await env.client.command(
        ROOM,
        job.job_id,
        Command.refresh_output_url(
            RefreshOutputUrlConfig(output_urls=["rtmp://push.example/backup"], stream_keys=["stream-key-2"])
        ),
    )
    await receiver.wait_for(lambda: len(receiver.got) >= 7)
    assert [(r.message["output_url"], r.message["state"]) for r in receiver.got[5:7]] == [
        ("rtmp://push.example/backup", "CONNECTING"),
        ("rtmp://push.example/backup", "CONNECTED"),
    ]


async def test_block_and_fail(env: Env, receiver: Receiver) -> None:
    blocked = await env.client.start_job(ROOM, _start(receiver))
    await env.control("POST", f"/jobs/{blocked.job_id}/block", {"reason": "violates platform rules"})
    shown = await env.client.show_job(ROOM, blocked.job_id)
    assert shown.state is JobState.BLOCKED and shown.block_reason == "violates platform rules"
    from orchestrator.providers.errors import ProviderBadRequest

    with pytest.raises(ProviderBadRequest, match="blocked"):
        await env.client.start_job(ROOM, _start(receiver))  # a blocked room cannot start
    env.sandbox.world.add_room(
        env.sandbox.world.rooms[ROOM].model_copy(update={"room_id": "room-2", "room_state": None})
    )
    failed = await env.client.start_job("room-2", _start(receiver))
    await env.control(
        "POST",
        f"/jobs/{failed.job_id}/fail",
        {"error_code": "MSS.45000010", "error_msg": "RTMP stream push failed."},
    )
    shown = await env.client.show_job("room-2", failed.job_id)
    assert shown.state is JobState.FAILED
    assert shown.error_info is not None and shown.error_info.error_code == "MSS.45000010"


# --- fault controls: callbacks ---------------------------------------------------------------------------------


async def test_callbacks_duplicated(env: Env, receiver: Receiver) -> None:
    await env.control("POST", "/callbacks/faults", {"duplicate": True})
    await env.client.start_job(ROOM, _start(receiver, events=["RTMP_STREAM_STATE_CHANGE"]))
    await receiver.wait_for(lambda: len(receiver.got) >= 4)
    assert [r.message["state"] for r in receiver.got] == [
        "CONNECTING",
        "CONNECTING",
        "CONNECTED",
        "CONNECTED",
    ]


async def test_callbacks_reordered(env: Env, receiver: Receiver) -> None:
    await env.control("POST", "/callbacks/faults", {"reorder": True})
    await env.client.start_job(ROOM, _start(receiver, events=["RTMP_STREAM_STATE_CHANGE"]))
    await receiver.wait_for(lambda: len(receiver.got) >= 2)
    assert [r.message["state"] for r in receiver.got] == ["CONNECTED", "CONNECTING"]


async def test_callbacks_delayed_and_dropped(env: Env, receiver: Receiver) -> None:
    await env.control("POST", "/callbacks/faults", {"delay_s": 0.3, "drop": 1})
    loop = asyncio.get_running_loop()
    started = loop.time()
    await env.client.start_job(ROOM, _start(receiver, events=["RTMP_STREAM_STATE_CHANGE"]))
    await receiver.wait_for(lambda: len(receiver.got) >= 1)
    assert loop.time() - started >= 0.3
    assert [r.message["state"] for r in receiver.got] == ["CONNECTED"]  # CONNECTING was dropped
    log: Any = await env.control("GET", "/callbacks?drain=true")
    assert log[0]["error"] == "dropped by fault control" and log[1]["status"] == 200


# --- inserted scripts ------------------------------------------------------------------------------------------


async def _processing(env: Env, receiver: Receiver, **kwargs: Any) -> str:
    job = await env.client.start_job(ROOM, _start(receiver, **kwargs))
    await receiver.wait_for(lambda: env.sandbox.world.jobs[job.job_id].state is JobState.PROCESSING)
    return job.job_id


def _insert(text: str, play_type: str = "PLAY_NOW", rule_index: str | None = None) -> Command:
    return Command.insert_play_script(
        PlayTextInfo(text_config=TextConfig(text=text), play_type=play_type, rule_index=rule_index)  # type: ignore[arg-type]
    )


async def test_insert_plays_for_its_length_then_finishes(env: Env, receiver: Receiver) -> None:
    job_id = await _processing(env, receiver, events=["REPLY_COMMAND_FINISH"])
    loop = asyncio.get_running_loop()
    finished_at: dict[str, float] = {}

    async def timed(text: str) -> tuple[str, float]:
        sent = loop.time()
        reply = await env.client.command(ROOM, job_id, _insert(text))
        await receiver.wait_for(lambda: any(r.message["reply_id"] == reply.command_id for r in receiver.got))
        finished_at[reply.command_id] = loop.time()
        return reply.command_id, loop.time() - sent

    short_id, short_s = await timed("短")  # 1 s simulated (the minimum) = 0.02 s real at x50
    long_id, long_s = await timed("长" * 200)  # 50 s simulated = 1 s real
    assert long_s >= 0.9 and short_s < 0.5, (short_s, long_s)
    assert [r.message["reply_id"] for r in receiver.got] == [short_id, long_id]
    finished: Any = await env.control("GET", f"/jobs/{job_id}")
    assert [i["state"] for i in finished["inserts"]] == ["FINISHED", "FINISHED"]


async def test_clean_up_insert_command(env: Env, receiver: Receiver) -> None:
    job_id = await _processing(env, receiver, events=["REPLY_COMMAND_FINISH"])
    playing = await env.client.command(ROOM, job_id, _insert("长" * 100))
    queued = [await env.client.command(ROOM, job_id, _insert(f"排队 {i}", "APPEND")) for i in range(3)]
    cleaned = await env.client.command(
        ROOM,
        job_id,
        Command.clean_up_insert_command(CleanUpInsertCommand(command_ids=[queued[0].command_id])),
    )
    assert cleaned.result_json() == {"cleaned_command_ids": [queued[0].command_id]}
    everything = await env.client.command(
        ROOM, job_id, Command.clean_up_insert_command(CleanUpInsertCommand())
    )
    assert everything.result_json()["cleaned_command_ids"] == [q.command_id for q in queued[1:]]
    await receiver.wait_for(lambda: len(receiver.got) >= 1)
    await asyncio.sleep(0.3)
    assert [r.message["reply_id"] for r in receiver.got] == [
        playing.command_id
    ]  # only the one playing finished


# --- interaction rules -----------------------------------------------------------------------------------------


def _comment(text: str, user: str = "u1") -> LiveEvent:
    return LiveEvent(
        timestamp=_now_ms(), type=1, content={"user": {"userId": user, "name": user}, "content": text}
    )


async def test_system_reply_rule_fires_and_is_suppressed_in_its_window(env: Env, receiver: Receiver) -> None:
    job_id = await _processing(env, receiver, events=["REPLY_COMMAND_FINISH"])
    report_url = env.sandbox.world.jobs[job_id].report_url
    await env.client.report_events(report_url, [_comment("这个多少钱"), _comment("价格呢", "u2")])
    detail: Any = await env.control("GET", f"/jobs/{job_id}")
    replies = [i for i in detail["inserts"] if i["rule_index"] == "price"]
    assert len(replies) == 1  # the second within time_window 10 s is suppressed
    assert replies[0]["text"] == "价格在购物车里，今天有优惠哦。" and replies[0]["play_type"] == "INSERT"
    await receiver.wait_for(lambda: len(receiver.got) >= 1)
    assert receiver.got[0].message["reply_id"] == replies[0]["command_id"]
    await asyncio.sleep(0.25)  # > 10 s simulated: the window has passed
    await env.client.report_events(report_url, [_comment("多少钱？")])
    detail = await env.control("GET", f"/jobs/{job_id}")
    assert len([i for i in detail["inserts"] if i["rule_index"] == "price"]) == 2


async def test_gift_rule_and_callback_rule(env: Env, receiver: Receiver) -> None:
    job_id = await _processing(env, receiver)
    report_url = env.sandbox.world.jobs[job_id].report_url
    gift = LiveEvent(
        timestamp=_now_ms(),
        type=4,
        content={
            "user": {"userId": "g"},
            "gift": {"giftName": "Star", "giftNum": 3, "giftValue": 1, "totalValue": 3},
        },
    )
    await env.client.report_events(report_url, [gift, _comment("今天发货吗？")])
    detail: Any = await env.control("GET", f"/jobs/{job_id}")
    assert [i["rule_index"] for i in detail["inserts"]] == ["gift"]
    await receiver.wait_for(lambda: len(receiver.interactions) == 1)
    posted = receiver.interactions[0]
    assert posted["rule_index"] == "ask" and posted["job_id"] == job_id
    assert json.loads(posted["event"]["content"])["content"] == "今天发货吗？"


# --- validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "",
            {"video_config": {"codec": "H264", "bitrate": 30001, "width": 1080, "height": 1920}},
            "video_config.bitrate",
        ),
        (
            "",
            {"video_config": {"codec": "H264", "bitrate": 39, "width": 1080, "height": 1920}},
            "video_config.bitrate",
        ),
        ("", {"live_event_callback_config": {"key": "k" * 33}}, "live_event_callback_config.key"),
        ("/JOB/live-event-report", {"total": 0, "events": []}, "total"),
        ("/JOB/live-event-report", {"total": 1001, "events": [{"timestamp": 1, "type": 1}] * 1001}, "total"),
        ("/JOB/live-event-report", {"total": 2, "events": [{"timestamp": 1, "type": 1}]}, "total"),
        ("/JOB/command", {"command": "INSERT_PLAY_SCRIPT", "params": {"text_config": {"text": ""}}}, "text"),
        (
            "/JOB/command",
            {"command": "INSERT_PLAY_SCRIPT", "params": {"text_config": {"text": "x" * 131073}}},
            "text",
        ),
        (
            "/JOB/command",
            {"command": "CLEAN_UP_INSERT_COMMAND", "params": {"command_ids": ["c"] * 101}},
            "command_ids",
        ),
        # 004 §6.2.1 Tables 6-262 .. 6-265: the documented ranges
        ("", {"video_config": {"codec": "H264", "bitrate": 4000, "width": 3841, "height": 1920}}, "width"),
        ("", {"video_config": {"codec": "H264", "bitrate": 4000, "width": 1080, "height": -1}}, "height"),
        ("", {"video_config": {"bitrate": 4000, "width": 1080, "height": 1920}}, "video_config.codec"),
        (
            "",
            {"video_config": {"codec": "H264", "bitrate": 4000, "width": 1080, "height": 1920, "dx": -1921}},
            "video_config.dx",
        ),
        (
            "",
            {"video_config": {"codec": "H264", "bitrate": 4000, "width": 1080, "height": 1920, "dy": 3841}},
            "video_config.dy",
        ),
        (
            "",
            {
                "video_config": {
                    "codec": "H264",
                    "bitrate": 4000,
                    "width": 1080,
                    "height": 1920,
                    "subtitle_config": {"dx": 1921},
                }
            },
            "subtitle_config.dx",
        ),
        (
            "",
            {
                "video_config": {
                    "codec": "H264",
                    "bitrate": 4000,
                    "width": 1080,
                    "height": 1920,
                    "subtitle_config": {"font_name": "f" * 65},
                }
            },
            "subtitle_config.font_name",
        ),
        ("", {"play_policy": {"repeat_count": 101}}, "play_policy.repeat_count"),
        ("", {"play_policy": {"repeat_count": -2}}, "play_policy.repeat_count"),
        ("", {"interaction_callback_url": "https://x/" + "a" * 2040}, "interaction_callback_url"),
        ("", {"output_urls": ["rtmp://a/1", "rtmp://b/2"]}, "output_urls"),
    ],
)
async def test_invalid_parameters_name_the_field(
    env: Env, receiver: Receiver, path: str, body: dict[str, Any], field: str
) -> None:
    job_id = await _processing(env, receiver)
    url = env.client._url("smart-live-rooms", ROOM, "smart-live-jobs")
    target = url.with_path(url.path + path.replace("JOB", job_id), encoded=True)
    from orchestrator.providers.errors import ProviderBadRequest
    from orchestrator.providers.metastudio.client import Retry

    with pytest.raises(ProviderBadRequest) as info:
        await env.client._call("POST", target, body, Retry.NEVER)
    assert info.value.error_code == "MSS.00000003"
    assert info.value.error_msg is not None and info.value.error_msg.startswith("Invalid parameter")
    assert field in info.value.error_msg


async def test_bad_json_and_unknown_project(env: Env) -> None:
    from orchestrator.providers.errors import ProviderBadRequest, ProviderStatusError

    url = env.client._url("smart-live-rooms", ROOM, "smart-live-jobs")
    with pytest.raises(ProviderBadRequest) as info:
        await env.client._send("POST", url, b"{not json")
    assert info.value.error_code == "MSS.10000002"
    other = url.with_path(url.path.replace(env.client.project_id, "other-project"), encoded=True)
    with pytest.raises(ProviderStatusError) as info2:
        await env.client._send("GET", other, b"")
    # 004 l.16385: credentials of one project on another project's path
    assert info2.value.status == 403 and info2.value.error_code == "MSS.00020006"
