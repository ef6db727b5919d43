"""A SoftSugar room keeps itself live (003's statuses, against the sandbox and a real Redis): a channel
shortage at create backs off and pages, an exception (9) or a failed initialisation (99) restarts, a
forged close is confirmed with ``stat`` before anything acts, a session a replica created and never
recorded is adopted (or stopped, when the room already runs another) instead of billed for nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from orchestrator.store import keys
from tests.scheduling.conftest import Webhooks, until
from tests.softsugar.conftest import APP_ID, script
from tests.softsugar.test_e2e import ROOM, TOKEN, _session, _true, softsugar_daemon, softsugar_room


async def _actions(daemon: Any) -> list[dict[str, Any]]:
    return [e for e in await daemon.store.events(ROOM, limit=1000) if e["kind"] == "action"]


async def _live(daemon: Any, box: Any) -> Any:
    async def live() -> bool:
        return await _session(daemon, box) is not None

    await until(live, 10)
    return await _session(daemon, box)


async def test_a_channel_shortage_at_create_backs_off_pages_and_resolves(
    make_settings: Any, tmp_path: Path, webhooks: Webhooks
) -> None:
    """003: 97 (system channels short) and 98 (the customer's channels short) answer the create itself; the
    start is refused, retried after the room's backoff, paged once, and resolved when the room is live."""
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        box.world.create_faults.extend([97, 98])
        await daemon.configs.put(
            softsugar_room([{"kind": "always"}], alerts=[{"url": f"{webhooks.url}/generic"}])
        )
        await _live(daemon, box)
        shorts = [s for s in box.world.sessions.values() if s.status in (97, 98)]
        assert sorted(s.status for s in shorts) == [97, 98]
        starts = [a for a in await _actions(daemon) if a["action"] == "start"]
        assert [a["outcome"].startswith("failed") for a in starts] == [True, True, False], starts
        assert "98" in starts[1]["outcome"]  # the vendor's status named
        await until(lambda: _true(any(h["kind"] == "resolved" for h in webhooks.got)), 10)
        kinds = [h["kind"] for h in webhooks.got]
        assert kinds.count("start_failed") == 1, kinds  # one page for the incident, not one per attempt
        running = [s for s in box.world.sessions.values() if s.status in (2, 32, 35)]
        assert len(running) == 1


@pytest.mark.parametrize("status", [9, 99])
async def test_a_session_ending_in_an_exception_or_a_failed_initialisation_is_restarted(
    make_settings: Any, tmp_path: Path, status: int
) -> None:
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        await daemon.configs.put(softsugar_room([{"kind": "always"}]))
        first = await _live(daemon, box)
        box.world.fail(first.session_id, status)

        async def replaced() -> bool:
            now = await _session(daemon, box)
            return now is not None and now.session_id != first.session_id

        await until(replaced, 15)
        restarts = [a for a in await _actions(daemon) if a["action"] == "restart"]
        assert len(restarts) == 1 and first.session_id in restarts[0]["reason"]
        assert len([s for s in box.world.sessions.values() if s.status in (2, 32, 35)]) == 1


async def test_a_forged_close_on_a_live_session_restarts_nothing(make_settings: Any, tmp_path: Path) -> None:
    """A callback saying 50 (closed) for a session that is live: the callback is a hint, ``stat`` the
    truth -- the session keeps running, no second session, no restart."""
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        await daemon.configs.put(softsugar_room([{"kind": "always"}]))
        session = await _live(daemon, box)
        async with daemon.http.post(
            f"{daemon.url}/callbacks/softsugar/{TOKEN}",
            json={"sessionId": session.session_id, "status": 50, "userData": ROOM},
        ) as resp:
            assert resp.status == 200
        await asyncio.sleep(1.5)  # several reconcile passes (0.2 s)
        assert session.status == 2
        assert len(box.world.sessions) == 1
        assert not [a for a in await _actions(daemon) if a["action"] in ("restart", "start", "stop")][1:]
        state = await daemon.store.state(ROOM) or {}
        assert state.get("job_state") == "PROCESSING"


async def test_a_session_created_and_never_recorded_is_adopted_by_its_callback(
    make_settings: Any, tmp_path: Path
) -> None:
    """A replica died between the vendor's create and its own record: the session's status callback names
    the room (``userData``), so the session is claimed and adopted when the room is resumed -- not closed
    as nobody's, and no second session created beside it."""
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        await daemon.configs.put(softsugar_room([{"kind": "always"}], paused=True))  # in its window
        orphan = box.world.create(script().to_wire(), ROOM)  # 32; its 35 callback comes with userData

        async def claimed() -> bool:
            sessions = keys.vendor_sessions("softsugar", APP_ID)
            return await daemon.store._redis.hget(sessions, orphan.session_id) in (ROOM, ROOM.encode())

        await until(claimed, 10)
        status, _ = await daemon.api("POST", f"/api/rooms/{ROOM}/resume")
        assert status == 200

        async def adopted() -> bool:
            state = await daemon.store.state(ROOM) or {}
            return state.get("job_id") == orphan.session_id and orphan.status == 2

        await until(adopted, 10)
        await asyncio.sleep(1.0)
        assert list(box.world.sessions) == [orphan.session_id]  # nothing created beside it
        assert [a["action"] for a in await _actions(daemon)][:1] == ["adopt"]


async def test_a_second_session_for_a_live_room_is_stopped(make_settings: Any, tmp_path: Path) -> None:
    """The room runs its session; another, named the room's by its callback but never recorded by the
    daemon, is a second bill for one room: stopped, the room's own left alone."""
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        await daemon.configs.put(softsugar_room([{"kind": "always"}]))
        own = await _live(daemon, box)
        stray = box.world.create(script().to_wire(), ROOM)

        async def stopped() -> bool:  # closed at the vendor, and the action recorded (just after)
            return stray.status == 5 and any(a["action"] == "stop" for a in await _actions(daemon))

        await until(stopped, 15)
        await asyncio.sleep(0.5)  # no second stop follows
        assert own.status == 2
        stops = [a for a in await _actions(daemon) if a["action"] == "stop"]
        assert len(stops) == 1 and stray.session_id in stops[0]["reason"]
