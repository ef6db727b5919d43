"""Redis goes away mid-stream: callbacks are journaled (fsync'd) and answered 200, then replayed in order
when Redis returns; every callback ends up applied exactly once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from orchestrator.app import create_app
from orchestrator.appkeys import REACTIONS, REDIS, ROOM_STORE
from tests.callbacks.conftest import Daemon, settings_for, switch
from tests.support.redis_server import RedisServer, free_port
from tests.support.server import serving

ROOM, JOB = "room-outage", "job-outage"


async def test_redis_outage_mid_stream_loses_and_duplicates_nothing(
    controllable_redis: RedisServer, make_settings: Any, tmp_path: Path
) -> None:
    port = free_port()
    settings = settings_for(make_settings, port, tmp_path / "journal.jsonl", write_timeout_s=0.3)
    settings = settings.model_copy(
        update={
            "redis": settings.redis.model_copy(
                update={
                    "retry_attempts": 1,
                    "socket_timeout_s": 0.3,
                    "connect_timeout_s": 0.3,
                    "readiness_timeout_s": 0.3,
                }
            )
        }
    )
    app = create_app(settings)
    async with serving(app, settings, port=port) as url, aiohttp.ClientSession() as http:
        daemon = Daemon(url, http, app[ROOM_STORE], app[REACTIONS], tmp_path / "journal.jsonl")
        await daemon.store.register_room(ROOM)
        await daemon.store.set_current_job(ROOM, JOB)
        replies = [f"reply-{i}" for i in range(90)]
        for reply in replies:
            await daemon.store.add_reply(ROOM, reply)
        t0 = int(time.time() * 1000)
        outcomes: list[str] = []

        async def send(i: int) -> None:
            # Alternate paragraph switches and reply finishes; each has its own time, so its own signature.
            if i % 2:
                status, body = await daemon.send(
                    "REPLY_COMMAND_FINISH",
                    {"room_id": ROOM, "job_id": JOB, "reply_id": replies[i]},
                    time_ms=t0 + i,
                )
            else:
                status, body = await daemon.send("SHOOT_SCRIPT_SWITCH", switch(ROOM, JOB, i), time_ms=t0 + i)
            assert status == 200, body  # never an error: durable in Redis or in the journal
            outcomes.append(body["outcome"])

        for i in range(30):
            await send(i)
        controllable_redis.stop(save=True)  # Redis goes away (its data survives, as in production)
        await asyncio.gather(*(send(i) for i in range(30, 60)))  # concurrent, while Redis is down
        assert outcomes.count("journaled") >= 25
        assert daemon.journal.exists() and daemon.journal.stat().st_size > 0
        controllable_redis.start()
        for i in range(60, 90):
            await send(i)
        async with asyncio.timeout(15):  # the replay loop notices within a second or two
            while daemon.journal.exists() and daemon.journal.read_bytes().strip():
                await asyncio.sleep(0.1)
        state = await daemon.room(ROOM)
        assert state["counters"] == {"SHOOT_SCRIPT_SWITCH": 45, "REPLY_COMMAND_FINISH": 45}
        assert state["replies_in_flight"] == sorted(r for i, r in enumerate(replies) if i % 2 == 0)
        assert state["paragraph_seq"] == "88"  # the latest by callback time, although replayed last
        _, events = await daemon.api(f"/api/rooms/{ROOM}/events?limit=1000")
        seen = [(e["event_type"], e["event_ms"]) for e in events["events"] if e["kind"] == "callback"]
        assert len(seen) == len(set(seen)) == 90  # each callback exactly once


async def test_group_commit_survives_a_script_flush_and_a_redis_restart(
    controllable_redis: RedisServer, make_settings: Any, tmp_path: Path
) -> None:
    """The batch's EVALSHA is sent on a pooled connection by the batcher itself: a Redis that forgot the
    script (SCRIPT FLUSH, a restart) gets it loaded again, and a pooled connection the restart closed is
    replaced -- the callbacks are applied in Redis, not journaled."""
    port = free_port()
    settings = settings_for(make_settings, port, tmp_path / "journal.jsonl")
    app = create_app(settings)
    async with serving(app, settings, port=port) as url, aiohttp.ClientSession() as http:
        daemon = Daemon(url, http, app[ROOM_STORE], app[REACTIONS], tmp_path / "journal.jsonl")
        await daemon.store.register_room(ROOM)
        await daemon.store.set_current_job(ROOM, JOB)
        assert (await daemon.send("SHOOT_SCRIPT_SWITCH", switch(ROOM, JOB, 1)))[1]["outcome"] == "applied"
        await app[REDIS].script_flush()
        second = int(time.time() * 1000)
        sent_second = await daemon.send("SHOOT_SCRIPT_SWITCH", switch(ROOM, JOB, 2), time_ms=second)
        assert sent_second[1]["outcome"] == "applied"
        # Several concurrent callbacks so that the pool holds several connections the restart will close.
        # Their times come after the second's: an MSS_A signature covers the time, not the body, so a
        # callback sent in the same millisecond would carry a used signature and be refused as a replay.
        now = second + 1
        sent = await asyncio.gather(
            *(
                daemon.send("SHOOT_SCRIPT_SWITCH", switch(ROOM, JOB, 3 + i), time_ms=now + i)
                for i in range(20)
            )
        )
        assert {body["outcome"] for _, body in sent} == {"applied"}
        controllable_redis.stop()
        controllable_redis.start()
        await daemon.store.register_room(ROOM)  # the restarted Redis kept nothing
        await daemon.store.set_current_job(ROOM, JOB)
        status, body = await daemon.send("SHOOT_SCRIPT_SWITCH", switch(ROOM, JOB, 40), time_ms=now + 20)
        assert (status, body["outcome"]) == (200, "applied")
        assert (await daemon.room(ROOM))["paragraph_seq"] == "40"
        assert not (tmp_path / "journal.jsonl").exists() or not (tmp_path / "journal.jsonl").read_text()


async def test_the_api_answers_503_without_a_traceback_while_redis_is_away(
    controllable_redis: RedisServer, make_settings: Any, tmp_path: Path
) -> None:
    """Soak finding: audience events posted while Redis restarted (or loaded its AOF) got a bare 500, and
    each left a traceback in the log. Now: 503 REDIS_UNAVAILABLE with Retry-After, one warning line."""
    from structlog.testing import capture_logs

    port = free_port()
    settings = settings_for(make_settings, port, tmp_path / "journal.jsonl")
    settings = settings.model_copy(
        update={
            "admin": settings.admin.model_copy(update={"token": SecretStr("t" * 24)}),
            "redis": settings.redis.model_copy(
                update={"retry_attempts": 0, "socket_timeout_s": 0.3, "connect_timeout_s": 0.3}
            ),
        }
    )
    app = create_app(settings)
    async with serving(app, settings, port=port) as url, aiohttp.ClientSession() as http:
        await app[ROOM_STORE].register_room(ROOM)
        controllable_redis.stop()
        try:
            with capture_logs() as logs:
                async with http.post(
                    f"{url}/api/rooms/{ROOM}/events",
                    json={"type": "comment", "user": {"userId": "u1"}, "text": "hi"},
                    headers={"Authorization": f"Bearer {'t' * 24}"},
                ) as resp:
                    body = await resp.json()
                    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        finally:
            controllable_redis.start()
    assert body["error_code"] == "REDIS_UNAVAILABLE" and body["error_msg"]
    assert not [e for e in logs if e["log_level"] == "error"]
    assert any(e["event"] == "redis unavailable for a request" for e in logs)
