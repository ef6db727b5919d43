"""A SoftSugar room end to end, against the sandbox and a real Redis: scheduled, created, started, kept
alive by heartbeats, answered through the takeover queue (finishes by callback, or by polling the queue),
closed at the window's end -- nothing leaked; heartbeats lost → 50 → restarted; an unknown session closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from orchestrator.sandbox.softsugar.app import Fault, SandboxConfig, SoftSugarSandbox, running_sandbox
from orchestrator.scheduling.rooms import ManagedRoom
from tests.scheduling.conftest import Daemon, daemon_for, in_, until
from tests.softsugar.conftest import APP_ID, APP_KEY, script
from tests.support.redis_server import free_port

ROOM = "ss-room-1"
TOKEN = "softsugar-callback-token-0123456789"


def softsugar_room(windows: list[dict[str, Any]], **over: Any) -> ManagedRoom:
    return ManagedRoom.model_validate(
        {
            "room_id": ROOM,
            "provider": "softsugar",
            "template": {"script": script().model_dump(exclude_none=True)},
            "schedule": {"timezone": "UTC", "windows": windows},
            "restart": {
                "backoff_initial_s": 0.3,
                "backoff_max_s": 1,
                "max_restarts_per_hour": 20,
                "rtmp_grace_s": 0.5,
                "refresh_wait_s": 0.6,
            },
            **over,
        }
    )


@asynccontextmanager
async def softsugar_daemon(
    make_settings: Any,
    tmp_path: Path,
    *,
    callbacks: bool = True,
    heartbeat_timeout_s: float = 60.0,
    heartbeat_interval_s: float = 1.0,
    char_s: float = 0.1,
    softsugar: dict[str, Any] | None = None,
    **interaction: Any,
) -> AsyncIterator[tuple[Daemon, SoftSugarSandbox]]:
    port = free_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "rules": [
                    {
                        "name": "price",
                        "match": "keyword",
                        "patterns": ["多少钱"],
                        "replies": ["价格在购物车里，今天有优惠哦。"],
                    }
                ],
                "faq": [
                    {"question": "什么时候发货", "answer": "下单后四十八小时内发货哦，请放心。"},
                    {"question": "可以退货吗", "answer": "七天无理由退货，运费险已经送上。"},
                ],
            },
            allow_unicode=True,
        )
    )
    config = SandboxConfig(
        APP_ID,
        APP_KEY,
        f"http://127.0.0.1:{port}/callbacks/softsugar/{TOKEN}" if callbacks else None,
        speed=10.0,
        create_s=2.0,
        heartbeat_timeout_s=heartbeat_timeout_s,
        char_s=char_s,
    )
    async with (
        running_sandbox(config) as (box, url),
        daemon_for(
            make_settings,
            tmp_path,
            "http://127.0.0.1:9",  # no MetaStudio here
            port=port,
            softsugar={
                "endpoint": url,
                "app_id": APP_ID,
                "app_key": APP_KEY,
                "callback_token": TOKEN,
                "callbacks": callbacks,
                "heartbeat_interval_s": heartbeat_interval_s,
                "timeout_s": 3,
                **(softsugar or {}),
            },
            interaction={"policy_file": str(policy), "lease_ttl_s": 1.5, **interaction},
        ) as daemon,
    ):
        yield daemon, box


async def _session(daemon: Daemon, box: SoftSugarSandbox, status: int = 2) -> Any:
    state = await daemon.store.state(ROOM) or {}
    session = box.world.sessions.get(state.get("job_id", ""))
    return session if session is not None and session.status == status else None


async def _comment(daemon: Daemon, text: str, user: str) -> None:
    status, _ = await daemon.api(
        "POST",
        f"/api/rooms/{ROOM}/events",
        {"events": [{"type": "comment", "user": {"userId": user, "name": user}, "text": text}]},
    )
    assert status == 200


async def test_a_window_creates_starts_keeps_alive_answers_and_closes(
    make_settings: Any, tmp_path: Path
) -> None:
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        await daemon.configs.put(softsugar_room([{"kind": "once", "start": in_(0.5), "end": in_(6.0)}]))

        async def live() -> bool:
            return await _session(daemon, box) is not None

        await until(live, 10)
        session = await _session(daemon, box)
        assert session.user_data == ROOM  # callbacks name the room
        await until(lambda: _true(session.heartbeats >= 2), 5)  # by the room's owner, every second
        await _comment(daemon, "这个多少钱？", "viewer-1")
        await until(lambda: _true(any("购物车" in t.text for t in session.played)), 10)
        inserted = [e for e in await daemon.store.events(ROOM, limit=1000) if e["kind"] == "reply_inserted"]
        assert len(inserted) == 1
        # How long the answer waited in the daemon, from the comment's arrival to the vendor call.
        assert 0 <= float(inserted[0]["waited_ms"]) < 1000
        metrics = await (await daemon.http.get(f"{daemon.url}/metrics")).text()
        assert "orch_reply_sent_seconds_count 1.0" in metrics

        async def closed() -> bool:
            return session.status == 5

        await until(closed, 15)  # the window ended: closed on request
        assert [s for s in box.world.sessions.values() if s.status in (2, 32, 35)] == []  # nothing leaked
        assert len(box.world.sessions) == 1  # one session for the window


async def test_replies_are_tracked_by_polling_the_queue_without_callbacks(
    make_settings: Any, tmp_path: Path
) -> None:
    """An account without a callback URL: sessions are polled (stat) and replies' ends seen in queue/list."""
    async with softsugar_daemon(make_settings, tmp_path, callbacks=False) as (daemon, box):
        await daemon.configs.put(softsugar_room([{"kind": "always"}]))

        async def live() -> bool:
            return await _session(daemon, box) is not None

        await until(live, 10)
        session = await _session(daemon, box)
        for i in range(3):
            await _comment(daemon, "请问多少钱", f"viewer-{i}")
        await until(lambda: _true(len(session.played) >= 1), 10)

        async def none_in_flight() -> bool:
            status, body = await daemon.api("GET", f"/api/rooms/{ROOM}/replies")
            return status == 200 and not body["in_flight"] and not body["pending"]

        await until(none_in_flight, 15)


async def test_heartbeats_lost_the_vendor_closes_with_50_and_the_room_is_restarted(
    make_settings: Any, tmp_path: Path
) -> None:
    async with softsugar_daemon(
        make_settings, tmp_path, heartbeat_timeout_s=6.0, heartbeat_interval_s=30.0
    ) as (
        daemon,
        box,
    ):
        await daemon.configs.put(softsugar_room([{"kind": "always"}]))

        async def live() -> bool:
            return await _session(daemon, box) is not None

        await until(live, 10)
        first = await _session(daemon, box)

        async def replaced() -> bool:
            now = await _session(daemon, box)
            return first.status == 50 and now is not None and now.session_id != first.session_id

        await until(replaced, 20)
        actions = [e for e in await daemon.store.events(ROOM, limit=1000) if e["kind"] == "action"]
        assert any(a["action"] == "restart" and first.session_id in a["reason"] for a in actions), actions


async def test_a_running_session_no_room_knows_is_closed(make_settings: Any, tmp_path: Path) -> None:
    """Closed once its grace is over -- not at first sight: a replica lists sessions between another's
    create and its record of it (``test_self_healing.py`` has the session its callback claims)."""
    async with softsugar_daemon(make_settings, tmp_path, softsugar={"unknown_grace_s": 1.5}) as (daemon, box):
        stray = box.world.create(script().to_wire(), None)
        await daemon.configs.put(softsugar_room([{"kind": "always"}]))
        await daemon.configs.put(softsugar_room([{"kind": "always"}], room_id="ss-room-2"))

        await asyncio.sleep(1.0)
        assert stray.status in (32, 35)  # within its grace

        async def closed() -> bool:
            return stray.status == 5

        await until(closed, 15)


async def test_questions_go_to_the_rooms_qa_database_and_the_faq_answers_when_it_cannot(
    make_settings: Any, tmp_path: Path
) -> None:
    """003 "Live NLP Q&A": a room naming its Q&A database (``qa_app_id``) has the questions its rules do
    not answer answered from it; a question it has no answer to, or does not answer within
    ``softsugar.qa_timeout_s``, is answered from the policy's FAQ."""
    async with softsugar_daemon(make_settings, tmp_path, softsugar={"qa_timeout_s": 1.0}) as (daemon, box):
        box.world.qa["qa-db-1"] = {
            "保修": "整机保修两年，有问题随时找客服。",
            "发货": "今天下单今天发货，顺丰包邮。",  # the Q&A database's answer differs from the FAQ's
        }
        room = softsugar_room([{"kind": "always"}])
        template = {**room.template.stored(), "qa_app_id": "qa-db-1"}
        await daemon.configs.put(softsugar_room([{"kind": "always"}], template=template))

        async def live() -> bool:
            return await _session(daemon, box) is not None

        await until(live, 10)
        session = await _session(daemon, box)
        texts = lambda: [t.text for t in session.played]  # noqa: E731

        await _comment(daemon, "这个保修多久？", "viewer-1")  # the Q&A database has it; the FAQ has not
        await until(lambda: _true("整机保修两年，有问题随时找客服。" in texts()), 10)
        await _comment(daemon, "可以退货吗？", "viewer-2")  # the Q&A database has no answer: the FAQ's
        await until(lambda: _true("七天无理由退货，运费险已经送上。" in texts()), 10)
        box.faults.append(Fault("hang", hang_s=100.0, path_contains="/nlp/"))  # 10 real s: past the timeout
        await _comment(daemon, "什么时候发货？", "viewer-3")
        await until(lambda: _true("下单后四十八小时内发货哦，请放心。" in texts()), 10)
        assert "今天下单今天发货，顺丰包邮。" not in texts()
        asked = [c for c in box.calls if c[1].endswith("/nlp/model/reply")]
        assert len(asked) >= 2  # the hung one is recorded when it ends


async def test_a_room_without_a_qa_database_never_asks_one(make_settings: Any, tmp_path: Path) -> None:
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        await daemon.configs.put(softsugar_room([{"kind": "always"}]))

        async def live() -> bool:
            return await _session(daemon, box) is not None

        await until(live, 10)
        session = await _session(daemon, box)
        await _comment(daemon, "可以退货吗？", "viewer-1")
        await until(lambda: _true(any("七天无理由" in t.text for t in session.played)), 10)
        assert not [c for c in box.calls if c[1].endswith("/nlp/model/reply")]


async def _true(value: bool) -> bool:
    return value
