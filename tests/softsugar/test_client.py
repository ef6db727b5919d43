"""The SoftSugar client against the sandbox: tokens, every endpoint of 003, errors."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.providers.errors import (
    ProviderAuthError,
    ProviderConnectError,
    ProviderServerError,
    ProviderStatusError,
)
from orchestrator.providers.softsugar import auth
from orchestrator.providers.softsugar.auth import sign
from orchestrator.providers.softsugar.models import (
    HistoryQuery,
    LiveScript,
    NlpQuery,
    QuickHandoff,
    Takeover,
    TtsQuery,
)
from orchestrator.sandbox.softsugar.app import Fault
from orchestrator.store import keys
from tests.softsugar.conftest import APP_ID, APP_KEY, Env, make_client, script


def say(text: str) -> Takeover:
    return Takeover(tts_query=TtsQuery(content=text))


async def until(check: Any, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.02)


async def live(env: Env) -> str:
    """A live session: created, created-ready (35), started (2)."""
    channel = await env.client.create_channel(script(), user_data="room-1")
    assert channel.status in (32, 35) and channel.sessionToken

    async def ready() -> bool:
        return (await env.client.stat(channel.sessionId)).status == 35

    await until(ready)
    assert await env.client.start(channel.sessionId)
    assert (await env.client.stat(channel.sessionId)).status == 2
    return channel.sessionId


def test_sign_is_md5_of_app_id_timestamp_and_key() -> None:
    assert sign("app", 1700000000000, "key") == hashlib.md5(b"app1700000000000key").hexdigest()  # noqa: S324


async def test_one_token_for_every_client_of_the_account(env: Env) -> None:
    """Replicas share the account's token through Redis: two clients, many calls, one token issued."""
    other = make_client(env.http, env.url, env.redis)
    await asyncio.gather(*(c.running() for c in [env.client, other] * 10))
    assert env.sandbox.tokens.issued == 1


async def test_a_replica_killed_while_obtaining_the_token_holds_the_others_up_briefly(env: Env) -> None:
    """The lock on obtaining a token lapses ~2 s after its holder stops renewing it (a replica killed
    mid-request): before, it held every replica's calls for 10 s -- a window's start was lost so."""
    lock = keys.vendor_token_lock("softsugar", APP_ID)
    await env.redis.set(lock, "a-replica-that-died", px=int(auth.LOCK_TTL_S * 1000))
    started = time.monotonic()
    token = await env.client.token.get()  # type: ignore[union-attr]
    assert token and time.monotonic() - started < 3.5  # was 10 s


async def test_a_live_holder_keeps_the_lock_through_a_slow_request_and_one_token_is_signed(env: Env) -> None:
    # Twice the lock's life, in the sandbox's simulated seconds (x50).
    env.sandbox.faults.append(
        Fault("slow", hang_s=auth.LOCK_TTL_S * 2 * 50, path_contains="/access/api/token")
    )
    first = make_client(env.http, env.url, env.redis, timeout_s=10.0)
    second = make_client(env.http, env.url, env.redis, timeout_s=10.0)
    one = asyncio.create_task(first.token.get())  # type: ignore[union-attr]
    await asyncio.sleep(0.3)
    two = await second.token.get()  # type: ignore[union-attr]  # waits: the lock is renewed meanwhile
    assert two == await one
    assert env.sandbox.tokens.issued == 1


async def test_a_replica_reads_the_shared_token_once_in_a_while_not_per_call(env: Env) -> None:
    """A thousand sessions' heartbeats each read the token from Redis first: a round trip per call. The
    replica keeps what it read for ``REREAD_S`` (counted by Redis itself: HGETALL calls)."""

    async def reads() -> int:
        stats = await env.redis.info("commandstats")
        return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))

    await env.client.running()
    before = await reads()
    await asyncio.gather(*(env.client.running() for _ in range(50)))
    assert await reads() - before <= 1


async def test_a_third_token_invalidates_the_oldest_and_a_401_renews_once(env: Env) -> None:
    """The vendor keeps at most two tokens valid: when something else takes two more, ours is refused --
    one renewal, not a storm, and the call goes through."""
    await env.client.running()
    for _ in range(2):  # another program of the same account takes two tokens
        timestamp = __import__("time").time_ns() // 1_000_000
        async with env.http.post(
            f"{env.url}/api/uc/v1/access/api/token",
            json={
                "appId": APP_ID,
                "timestamp": timestamp,
                "sign": sign(APP_ID, timestamp, APP_KEY),
                "grantType": "sign",
            },
        ) as resp:
            assert (await resp.json())["code"] == 0
    issued = env.sandbox.tokens.issued
    results = await asyncio.gather(*(env.client.running() for _ in range(10)))
    assert all(r == [] for r in results)
    assert env.sandbox.tokens.issued == issued + 1  # one renewal for ten refused calls


async def test_wrong_app_key_is_an_auth_error(env: Env) -> None:
    await env.redis.flushall()
    bad = make_client(env.http, env.url, env.redis, app_key="not-the-key")
    with pytest.raises(ProviderAuthError):
        await bad.running()


async def test_session_life_create_heartbeat_start_stat_close_history(env: Env) -> None:
    session = await live(env)
    await env.client.heartbeat(session)
    assert [s.sessionId for s in await env.client.running()] == [session]
    assert await env.client.close(session)
    stat = await env.client.stat(session)
    assert stat.status == 5
    assert await env.client.running() == []
    page = await env.client.history(HistoryQuery(pageNo=1, pageSize=10, status=5))
    assert [s.sessionId for s in page.result] == [session] and page.pagination.numberRecords == 1


async def test_a_session_without_heartbeats_is_closed_by_the_vendor_with_50(env: Env) -> None:
    session = await live(env)

    async def closed() -> bool:
        return (await env.client.stat(session)).status == 50

    await until(closed, 5)


async def test_the_takeover_queue_positions_reorder_cancel_and_list(env: Env) -> None:
    session = await live(env)
    first = await env.client.queue(session, say("第一条回复，正在播放的内容。"))
    assert first.commandStatus == 34
    second = await env.client.queue(session, say("第二条回复，排在最后面的。"))
    third = await env.client.queue(session, say("第三条回复，插到第一条之后。"), priority=1)
    order = await env.client.queue_list(session)
    assert order == [first.commandTraceId, third.commandTraceId, second.commandTraceId]
    assert await env.client.reorder(session, second.commandTraceId, 1)
    assert await env.client.queue_list(session) == [
        first.commandTraceId,
        second.commandTraceId,
        third.commandTraceId,
    ]
    cancelled = await env.client.cancel(session, [second.commandTraceId, third.commandTraceId])
    assert cancelled.isSuccess
    assert await env.client.queue_list(session) == [first.commandTraceId]
    await env.client.queue(session, say("又一条回复，然后全部取消。"))
    assert (await env.client.cancel(session, None)).isSuccess  # "-1": everything
    assert await env.client.queue_list(session) == []


async def test_interruptible_takeover_and_v1_and_quick_handoff(env: Env) -> None:
    session = await live(env)
    queued = await env.client.queue(session, say("一段很长的介绍，会被打断的内容。"))
    result = await env.client.command(session, say("立即插播：现在开始抽奖！"))
    assert result.isSuccess and result.commandTraceId
    assert (await env.client.queue_list(session))[0] == result.commandTraceId
    assert queued.commandTraceId not in await env.client.queue_list(session)  # interrupted
    assert await env.client.command_v1(session, say("旧接口的接管，马上就要下线。"))
    with pytest.raises(ProviderStatusError) as refused:  # the script defines no quick responses
        await env.client.quick(session, QuickHandoff(order=0))
    assert refused.value.error_code == "10001"


async def test_quick_handoff_is_refused_while_a_chat_is_ongoing(env: Env) -> None:
    chatty = script(
        live_type="interactive",
        sceneList=[
            {
                **script().model_dump(exclude_none=True)["sceneList"][0],
                "quick_response": ["我想一想，稍后回复您。"],
            }
        ],
    )
    channel = await env.client.create_channel(chatty, user_data="room-q")

    async def ready() -> bool:
        return (await env.client.stat(channel.sessionId)).status == 35

    await until(ready)
    await env.client.start(channel.sessionId)
    assert (await env.client.quick(channel.sessionId, QuickHandoff(order=-1))).isSuccess
    with pytest.raises(ProviderStatusError) as busy:
        await env.client.quick(channel.sessionId, QuickHandoff(order=0))
    assert busy.value.error_code == "10010"


async def test_rtc_audience_token_and_nlp_reply(env: Env) -> None:
    session = await live(env)
    stat = await env.client.stat(session)
    assert stat.rtcChannelId
    assert await env.client.rtc_audience_token(session, stat.rtcChannelId)
    await env.control("POST", "/qa/qa-1", {"保温杯能保温多久": "能保温十二小时。"})
    query = NlpQuery(appId="qa-1", device="macos", query="保温杯能保温多久", session="s-1", trace="t-1")
    assert (await env.client.nlp_reply(query)).answer == "能保温十二小时。"
    with pytest.raises(ProviderStatusError):
        await env.client.nlp_reply(query.model_copy(update={"appId": "nope"}))


async def test_errors_map_to_the_tree(env: Env) -> None:
    with pytest.raises(ProviderStatusError) as missing:
        await env.client.stat("no-such-session")
    assert missing.value.error_code == "10004"
    env.sandbox.faults.append(Fault("status", count=5, status=503, path_contains="running"))
    with pytest.raises(ProviderServerError):
        await env.client.running()  # retried, then raised
    env.sandbox.faults.clear()
    env.sandbox.faults.append(Fault("status", count=1, status=503, path_contains="running"))
    assert await env.client.running() == []  # a read is retried through one failure
    env.sandbox.faults.append(Fault("status", count=1, status=503, path_contains="channel/create"))
    with pytest.raises(ProviderServerError):
        await env.client.create_channel(script())  # never repeated: billing starts at create


async def test_a_refused_connection_is_a_connect_error(env: Env) -> None:
    client = make_client(env.http, "http://127.0.0.1:9", env.redis)
    with pytest.raises(ProviderConnectError):
        await client.obtain_token(None)


def test_the_live_script_refuses_out_of_range_values_naming_the_field() -> None:
    base = script().model_dump(exclude_none=True)
    cases = [
        (("sceneList", 0, "tts_config", "pitch_offset"), 61.0),
        (("sceneList", 0, "tts_config", "speed_ratio"), 0.4),
        (("sceneList", 0, "tts_config", "volume"), 401),
        (("sceneList", 0, "tts_query", "content"), "太短了"),
        (("bit_rate",), 8.0),
        (("resolution",), [1080, 2000]),
    ]
    for path, value in cases:
        data: Any = __import__("copy").deepcopy(base)
        target = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        with pytest.raises(ValidationError) as refused:
            LiveScript.model_validate(data)
        assert path[-1] in str(refused.value), (path, str(refused.value))
    beauty = __import__("copy").deepcopy(base)
    beauty["sceneList"][0]["effects"] = {"version": "1.0", "beautify": {"chinLength": -1.5}}
    with pytest.raises(ValidationError, match="chinLength"):
        LiveScript.model_validate(beauty)


async def test_the_sandbox_refuses_a_script_the_models_refuse(env: Env) -> None:
    """The sandbox checks the documented ranges too (it is the daemon's only stand-in for the vendor)."""
    token = await env.client.token.get()  # type: ignore[union-attr]
    bad = '{"version":"0.0.1","recycle":0,"stream_mode":true,"sceneList":[]}'
    async with env.http.post(
        f"{env.url}/api/2dvh/v2/material/live/channel/create",
        json={"param": bad},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        body = await resp.json()
    assert resp.status == 200 and body["code"] == 10001 and "sceneList" in body["message"]


async def test_microphone_websocket_notices_and_codes(env: Env) -> None:
    session = await live(env)
    stat = await env.client.stat(session)
    url = env.client.microphone_url(session, stat.sessionToken or "")
    async with env.http.ws_connect(url) as ws:
        await ws.send_json({"code": 0, "message": "begin"})
        assert (await ws.receive_json(timeout=2))["code"] == 2
        await ws.send_bytes(b"\x00\x01" * 160)
        await ws.send_json({"code": 99, "message": "eof"})
        queued = await env.client.queue(session, say("麦克风之后的一条文字接管。"))
        notices = [await ws.receive_json(timeout=2) for _ in range(2)]
        assert {n["code"] for n in notices} <= {18, 19, 20}
        assert all(n["data"]["commandTraceId"] == queued.commandTraceId for n in notices)
    bad = env.client.microphone_url(session, "wrong-token")
    async with env.http.ws_connect(bad) as ws:
        assert (await ws.receive_json(timeout=2))["code"] == 1


async def test_following_a_session_opens_its_socket_only_once_it_is_live(env: Env) -> None:
    """Before a session is live the vendor refuses its socket (6). The owner does not knock each second (the
    1,000-room benchmark found every owner doing so: 13,000 refusals in six minutes, the vendor's answers
    to everything else timing out): it waits for the session to be live, with a growing pause."""
    from orchestrator.providers.softsugar.microphone import follow
    from orchestrator.sandbox.softsugar.app import MICROPHONE

    created = await env.client.create_channel(script(), user_data="room-1")  # 32, then 35: not started
    connected: set[str] = set()
    task = asyncio.create_task(
        follow(
            lambda: env.client, created.sessionId, _ignore, connected=connected, retry_s=0.1, max_retry_s=1
        )
    )
    try:
        for _ in range(3):  # the sandbox closes a session without heartbeats after 1.2 s here
            await env.client.heartbeat(created.sessionId)
            await asyncio.sleep(0.5)
        refused = [c for c in env.sandbox.calls if c[1] == MICROPHONE]  # a refused socket closes at once
        assert refused == [] and not connected
        looks = [c for c in env.sandbox.calls if c[1].endswith("/stat")]
        assert 3 <= len(looks) <= 6  # 0.1, 0.2, 0.4, 0.8 s apart: not ten a second
        await env.client.start(created.sessionId)

        async def up() -> bool:
            # Kept alive meanwhile: the owner's next look may be a second away, past the sandbox's 1.2 s.
            await env.client.heartbeat(created.sessionId)
            return created.sessionId in connected

        await until(up, 3)  # live: the socket is open (the sandbox records a socket when it closes)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _ignore(_event: object) -> None:
    return None
