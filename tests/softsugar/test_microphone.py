"""003 "Streaming Voice Takeover" in the daemon: the session's socket followed for takeover notices (an
account without callbacks), and the operator's microphone relay -- against the sandbox and a real Redis."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import pytest

from orchestrator.appkeys import PROVIDERS, REDIS
from orchestrator.sandbox.softsugar.app import Fault
from orchestrator.store.replies import TAKE_LUA
from orchestrator.store.rooms import INGEST_LUA
from tests.scheduling.conftest import ADMIN, in_, managed_room, until
from tests.softsugar.test_e2e import ROOM, _comment, _session, _true, softsugar_daemon, softsugar_room

HEADERS = {"Authorization": f"Bearer {ADMIN}"}


async def _live(daemon: Any, box: Any) -> Any:
    async def live() -> bool:
        state = await daemon.store.state(ROOM) or {}
        return await _session(daemon, box) is not None and state.get("job_state") == "PROCESSING"

    await until(live, 10)
    return await _session(daemon, box)


async def _answer(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The vendor's next answer on the relay, past the takeover notices (18/19/20) it passes on too."""
    while True:
        message: dict[str, Any] = await ws.receive_json(timeout=3)
        if message.get("code") not in (18, 19, 20):
            return message


async def test_without_callbacks_the_sessions_socket_ends_replies(make_settings: Any, tmp_path: Any) -> None:
    """No callback URL, and ``queue/list`` failing throughout: replies still follow one another, ended by
    the socket's notices (18) -- without the socket the second would wait for the reply timeout (120 s)."""
    async with softsugar_daemon(make_settings, tmp_path, callbacks=False) as (daemon, box):
        box.faults.append(Fault("status", status=500, count=100_000, path_contains="queue/list"))
        await daemon.configs.put(softsugar_room([{"kind": "always"}]))
        session = await _live(daemon, box)
        await _comment(daemon, "可以退货吗？", "viewer-1")
        await _comment(daemon, "什么时候发货？", "viewer-2")
        wanted = {"七天无理由退货，运费险已经送上。", "下单后四十八小时内发货哦，请放心。"}
        await until(lambda: _true(wanted <= {t.text for t in session.played}), 15)
        finished = [e for e in await daemon.store.events(ROOM, limit=1000) if e["kind"] == "reply_finished"]
        assert len(finished) >= 2


async def test_while_a_reply_plays_its_pacer_waits_for_the_sockets_notice(
    make_settings: Any, tmp_path: Any
) -> None:
    """With the session's socket followed, a reply's end is noticed from the socket: the room's pacer does
    not look at its replies every second while one plays (the SoftSugar benchmark: a thousand rooms'
    pacers doing so were a fifth of the loop, and the tail of every reply's latency). Counted in Redis's
    slow log (every command logged): the pacer's look is its own script."""
    async with softsugar_daemon(make_settings, tmp_path, callbacks=False, char_s=4.0) as (daemon, box):
        redis = daemon.app[REDIS]
        await daemon.configs.put(softsugar_room([{"kind": "always"}]))
        session = await _live(daemon, box)
        following = daemon.app[PROVIDERS].get("softsugar").audience.following  # type: ignore[attr-defined]
        await until(lambda: _true(session.session_id in following), 5)
        await _comment(daemon, "这个多少钱？", "viewer-1")  # 14 characters: ~5.6 s of play at speed 10
        await until(lambda: _true(bool(session.queue)), 5)
        await redis.config_set("slowlog-max-len", 100_000)
        await redis.config_set("slowlog-log-slower-than", 0)
        await redis.slowlog_reset()
        await asyncio.sleep(3.0)
        logged = await redis.slowlog_get(10_000)
        await redis.config_set("slowlog-log-slower-than", 10_000)
        take_sha = redis.register_script(TAKE_LUA).sha.encode()
        looks = [e for e in logged if e["command"].startswith(b"EVALSHA " + take_sha)]
        assert session.queue, "the reply is still playing"
        assert len(looks) <= 1, looks
        await until(lambda: _true(not session.queue), 10)

        async def finished() -> bool:  # the socket's notice ended it
            return any(e["kind"] == "reply_finished" for e in await daemon.store.events(ROOM, limit=100))

        await until(finished, 5)


async def test_an_arrivals_reply_reaches_redis_before_its_write(make_settings: Any, tmp_path: Any) -> None:
    """On the room's owner, the pacer's look at the replies (which queues the reply just decided and takes
    it) reaches Redis before the comment's own write: not behind it and the reader's wake-up on it, which
    costs Redis a thousand streams' work on a replica owning a thousand rooms. Redis's slow log (every
    command logged) gives the order in which Redis ran them."""
    if os.environ.get("ORCH_TEST_REDIS") == "cluster":
        pytest.skip("one server's slow log orders the commands; a cluster has three")
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        redis = daemon.app[REDIS]
        await daemon.configs.put(softsugar_room([{"kind": "always"}]))
        session = await _live(daemon, box)
        await asyncio.sleep(0.5)  # the room's worker has started
        await redis.config_set("slowlog-max-len", 100_000)
        await redis.config_set("slowlog-log-slower-than", 0)
        await redis.slowlog_reset()
        await _comment(daemon, "这个多少钱？", "viewer-1")
        await until(lambda: _true(bool(session.queue) or bool(session.played)), 5)
        logged = list(reversed(await redis.slowlog_get(10_000)))  # oldest first
        await redis.config_set("slowlog-log-slower-than", 10_000)
        take = b"EVALSHA " + redis.register_script(TAKE_LUA).sha.encode()
        write = b"EVALSHA " + redis.register_script(INGEST_LUA).sha.encode()
        order = [e["command"][: len(take)] for e in logged if e["command"].startswith((take, write))]
        assert order[:2] == [take, write], order


async def test_the_operators_microphone_is_relayed_with_replies_held(
    make_settings: Any, tmp_path: Any
) -> None:
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        await daemon.configs.put(softsugar_room([{"kind": "always"}]))
        session = await _live(daemon, box)
        # Something the vendor is playing and something queued: both cancelled before the microphone.
        await _comment(daemon, "可以退货吗？", "viewer-1")
        await until(lambda: _true(bool(session.queue)), 10)
        url = f"{daemon.url}/api/rooms/{ROOM}/microphone"
        async with daemon.http.ws_connect(url, headers=HEADERS) as ws:
            assert not session.queue  # cancel -1 before the socket was accepted
            await ws.send_json({"code": 0, "message": "begin"})
            assert (await _answer(ws))["code"] == 2
            for _ in range(5):
                await ws.send_bytes(b"\x01\x00" * 320)  # 20 ms of 16 kHz 16-bit mono
            await ws.send_bytes(b"\x01\x00\x02")  # not 16-bit PCM: refused here, never sent on
            assert (await _answer(ws))["error_code"] == "BAD_AUDIO"
            await ws.send_json({"code": 3, "message": "what"})
            assert (await _answer(ws))["error_code"] == "BAD_MESSAGE"
            # While the operator speaks, the room's replies wait.
            await _comment(daemon, "什么时候发货？", "viewer-2")
            await asyncio.sleep(1.0)
            assert not session.queue
            status, body = await daemon.api("GET", f"/api/rooms/{ROOM}/replies")
            assert status == 200 and len(body["pending"]) == 1
            await ws.send_json({"code": 99, "message": "eof"})
            await until(lambda: _true(session.voice_bytes == 5 * 640), 3)
        # The relay closed: the held reply is said.
        await until(lambda: _true(any("四十八小时" in t.text for t in [*session.queue, *session.played])), 10)
        kinds = [
            e.get("outcome") for e in await daemon.store.events(ROOM, limit=1000) if e["kind"] == "microphone"
        ]
        assert kinds == ["taken", "released"]


async def test_the_vendors_refusals_are_clear_errors(make_settings: Any, tmp_path: Any) -> None:
    """A takeover queued at the vendor behind the daemon's back conflicts with the microphone: 003's code 7
    reaches the operator as MIC_CONFLICT; a second operator is refused while the first holds the room."""
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        await daemon.configs.put(softsugar_room([{"kind": "always"}]))
        session = await _live(daemon, box)
        url = f"{daemon.url}/api/rooms/{ROOM}/microphone"
        async with daemon.http.ws_connect(url, headers=HEADERS) as ws:
            async with daemon.http.get(url, headers={**HEADERS, "Upgrade": "websocket"}) as second:
                assert second.status == 409 and (await second.json())["error_code"] == "MICROPHONE_TAKEN"
            box.world.enqueue(session.session_id, "有人从控制台插入了一段话，很长很长。", None)
            await ws.send_json({"code": 0, "message": "begin"})
            refused = await _answer(ws)
            assert refused["code"] == 7 and refused["error_code"] == "MIC_CONFLICT"
            assert "another takeover" in refused["error_msg"]


async def test_the_relay_refuses_what_it_cannot_serve(make_settings: Any, tmp_path: Any) -> None:
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, _box):
        url = f"{daemon.url}/api/rooms/{ROOM}/microphone"
        await daemon.configs.put(softsugar_room([{"kind": "once", "start": in_(3600), "end": in_(7200)}]))
        cases: list[tuple[dict[str, str], int, str]] = [
            ({}, 401, "UNAUTHORIZED"),
            (HEADERS, 409, "ROOM_NOT_LIVE"),
        ]
        for headers, status, code in cases:
            async with daemon.http.get(url, headers={**headers, "Upgrade": "websocket"}) as resp:
                assert resp.status == status and (await resp.json())["error_code"] == code
        await daemon.configs.put(managed_room([{"kind": "always"}], room_id="ms-room"))
        ms_url = f"{daemon.url}/api/rooms/ms-room/microphone"
        async with daemon.http.get(ms_url, headers={**HEADERS, "Upgrade": "websocket"}) as resp:
            assert resp.status == 409 and (await resp.json())["error_code"] == "MICROPHONE_UNSUPPORTED"
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await daemon.http.ws_connect(f"{daemon.url}/api/rooms/nope/microphone", headers=HEADERS)
