"""The callback receiver over real HTTP and a real Redis: authentication, parsing, state, idempotency."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from orchestrator.store import keys
from tests.callbacks.conftest import KEY, OLD_KEY, Daemon, rtmp, switch

ROOM, JOB = "room-1", "job-1"


async def _managed(daemon: Daemon, room: str = ROOM, job: str = JOB) -> None:
    await daemon.store.register_room(room)
    await daemon.store.set_current_job(room, job)


async def _metric(daemon: Daemon, line_start: str) -> float:
    async with daemon.http.get(f"{daemon.admin}/metrics") as resp:
        text = await resp.text()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    return sum(values)


# --- authentication -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["default", "head", "none"])
async def test_each_auth_type_accepts_a_good_callback(daemon: Daemon, profile: str) -> None:
    await _managed(daemon)
    status, body = await daemon.send("SHOOT_SCRIPT_SWITCH", switch(ROOM, JOB, 1), profile=profile)
    assert (status, body) == (200, {"result": "ok", "outcome": "applied"})
    assert (await daemon.room(ROOM))["paragraph_seq"] == "1"


async def test_rotation_accepts_the_previous_key(daemon: Daemon) -> None:
    await _managed(daemon)
    status, _ = await daemon.send("SHOOT_SCRIPT_SWITCH", switch(ROOM, JOB, 1), key=OLD_KEY)
    assert status == 200
    status, body = await daemon.send("SHOOT_SCRIPT_SWITCH", switch(ROOM, JOB, 2), key="some-other-key")
    assert (status, body["error_code"]) == (401, "CALLBACK_BAD_SIGNATURE")


async def test_rejections_are_401_named_and_counted(daemon: Daemon) -> None:
    await _managed(daemon)
    body = json.dumps({"event_type": "SHOOT_SCRIPT_SWITCH", "message": json.dumps(switch(ROOM, JOB, 1))})
    base = daemon.profile_url("default")
    now = int(time.time() * 1000)
    cases = {
        "CALLBACK_MISSING": base,
        "CALLBACK_MALFORMED_TIME": f"{base}?hwSecret={'a' * 64}&hwTime=not-hex",
        "CALLBACK_TOO_OLD": f"{base}?hwSecret={'a' * 64}&hwTime={now - 400_000:x}",
        "CALLBACK_IN_FUTURE": f"{base}?hwSecret={'a' * 64}&hwTime={now + 400_000:x}",
        "CALLBACK_BAD_SIGNATURE": f"{base}?hwSecret={'a' * 64}&hwTime={now:x}",
    }
    for code, url in cases.items():
        async with daemon.http.post(url, data=body) as resp:
            error = await resp.json()
            assert resp.status == 401, (code, error)
            assert error["error_code"] == code and error["request_id"]
    # A wrong header signature on the MSS_A_HEAD profile, and headers sent to the MSS_A profile, fail too.
    async with daemon.http.post(
        daemon.profile_url("head"),
        data=body,
        headers={"x-hw-mss-secret": "b" * 64, "x-hw-mss-time": f"{now:x}"},
    ) as resp:
        assert (await resp.json())["error_code"] == "CALLBACK_BAD_SIGNATURE"
    assert await _metric(daemon, 'orch_callbacks_rejected_total{reason="bad_signature"}') == 2
    assert await _metric(daemon, 'orch_callbacks_rejected_total{reason="too_old"}') == 1
    assert (await daemon.room(ROOM)).get("paragraph_seq") is None  # nothing applied


async def test_duplicate_is_acknowledged_and_applied_once_replay_is_rejected(daemon: Daemon) -> None:
    await _managed(daemon)
    at = int(time.time() * 1000)
    first = await daemon.send("SHOOT_SCRIPT_SWITCH", switch(ROOM, JOB, 1), time_ms=at)
    again = await daemon.send("SHOOT_SCRIPT_SWITCH", switch(ROOM, JOB, 1), time_ms=at)
    assert [first[1]["outcome"], again[1]["outcome"]] == ["applied", "duplicate"]
    assert (await daemon.room(ROOM))["counters"]["SHOOT_SCRIPT_SWITCH"] == 1
    # The same signature with another body (MSS_A does not sign the body): a replay.
    status, body = await daemon.send("SHOOT_SCRIPT_SWITCH", switch(ROOM, JOB, 7), time_ms=at)
    assert (status, body["error_code"]) == (401, "CALLBACK_REPLAY")
    assert (await daemon.room(ROOM))["paragraph_seq"] == "1"
    assert await _metric(daemon, 'orch_callbacks_rejected_total{reason="replay"}') == 1


async def test_unknown_profile_is_404(daemon: Daemon) -> None:
    async with daemon.http.post(daemon.profile_url("nobody"), data=b"{}") as resp:
        assert resp.status == 404 and (await resp.json())["error_code"] == "CALLBACK_PROFILE_UNKNOWN"


# --- parsing ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{broken", 400, "CALLBACK_MALFORMED"),
        (b'{"event_type": "SHOOT_SCRIPT_SWITCH", "message": "{}"}', 400, "CALLBACK_MALFORMED"),
        (
            json.dumps(
                {"event_type": "RTMP_STREAM_STATE_CHANGE", "message": json.dumps(rtmp(ROOM, JOB, "ON_FIRE"))}
            ).encode(),
            400,
            "CALLBACK_MALFORMED",
        ),
        (
            b'{"event_type": "X", "message": {"room_id": "r", "job_id": "j", "pad": "'
            + b"p" * 1_100_000
            + b'"}}',
            413,
            "PAYLOAD_TOO_LARGE",
        ),
    ],
)
async def test_bad_bodies(daemon: Daemon, raw: bytes, status: int, code: str) -> None:
    await _managed(daemon)
    got_status, body = await daemon.send("", {}, raw=raw)
    assert (got_status, body["error_code"]) == (status, code)


async def test_unmanaged_room_or_job_is_404_audited_not_applied(daemon: Daemon) -> None:
    await _managed(daemon)
    status, body = await daemon.send("SHOOT_SCRIPT_SWITCH", switch("stranger-room", JOB, 1))
    assert (status, body["error_code"]) == (404, "CALLBACK_NOT_MANAGED")
    status, _ = await daemon.send("SHOOT_SCRIPT_SWITCH", switch(ROOM, "stranger-job", 1))
    assert status == 404
    status, _ = await daemon.send("SHOOT_SCRIPT_SWITCH", switch("bad{room}", JOB, 1))
    assert status == 404
    audit = await daemon.store.audit_entries()
    assert [(a["outcome"], a["room_id"], a["job_id"]) for a in audit] == [
        ("unknown_room", "stranger-room", JOB),
        ("unknown_job", ROOM, "stranger-job"),
    ]
    assert (await daemon.room(ROOM)).get("paragraph_seq") is None


async def test_unknown_event_type_is_recorded_and_acknowledged(daemon: Daemon) -> None:
    await _managed(daemon)
    status, body = await daemon.send("LIVE_SOMETHING_NEW", {"room_id": ROOM, "job_id": JOB, "x": 1})
    assert (status, body["outcome"]) == (200, "recorded")
    status, events = await daemon.api(f"/api/rooms/{ROOM}/events")
    assert events["events"][-1]["event_type"] == "LIVE_SOMETHING_NEW"
    assert events["events"][-1]["message"]["x"] == 1


async def test_message_as_object_is_accepted(daemon: Daemon) -> None:
    await _managed(daemon)
    raw = json.dumps({"event_type": "SHOOT_SCRIPT_SWITCH", "message": switch(ROOM, JOB, 3)}).encode()
    status, body = await daemon.send("", {}, raw=raw)
    assert (status, body["outcome"]) == (200, "applied")


# --- room state -------------------------------------------------------------------------------------------------


async def test_room_state_follows_callbacks(daemon: Daemon) -> None:
    await _managed(daemon)
    await daemon.store.add_reply(ROOM, "reply-1")
    await daemon.store.add_reply(ROOM, "reply-2")
    t0 = int(time.time() * 1000)
    # As an insert records them (with the time sent): a room worker's pacer, if one runs for the room, must
    # not take them for overdue and give them up while this test looks.
    meta = json.dumps({"priority": "question", "text": "t", "sent_ms": t0})
    await daemon.store._redis.hset(keys.room_replies_meta(ROOM), mapping={"reply-1": meta, "reply-2": meta})
    message = {**switch(ROOM, JOB, 2, "Thermos", "Products"), "product_id": "p-1", "product_title": "Cup"}
    await daemon.send("SHOOT_SCRIPT_SWITCH", message, time_ms=t0)
    await daemon.send("RTMP_STREAM_STATE_CHANGE", rtmp(ROOM, JOB, "CONNECTING"), time_ms=t0 + 1)
    await daemon.send("RTMP_STREAM_STATE_CHANGE", rtmp(ROOM, JOB, "CONNECTED"), time_ms=t0 + 2)
    await daemon.send(
        "RTMP_STREAM_STATE_CHANGE", rtmp(ROOM, JOB, "CONNECTED", "rtmp://backup/live"), time_ms=t0 + 3
    )
    await daemon.send(
        "REPLY_COMMAND_FINISH", {"room_id": ROOM, "job_id": JOB, "reply_id": "reply-1"}, time_ms=t0 + 4
    )
    state = await daemon.room(ROOM)
    assert (state["job_id"], state["job_state"]) == (JOB, "WAITING")
    assert (state["scene"], state["paragraph_seq"], state["paragraph_title"]) == ("Products", "2", "Thermos")
    assert (state["product_id"], state["product_title"]) == ("p-1", "Cup")
    assert state["rtmp"] == {
        "rtmp://push/live": {"state": "CONNECTED", "since_ms": t0 + 2, "event_ms": t0 + 2},
        "rtmp://backup/live": {"state": "CONNECTED", "since_ms": t0 + 3, "event_ms": t0 + 3},
    }
    assert state["replies_in_flight"] == ["reply-2"]
    assert state["last_event_at"] == str(t0 + 4)
    assert state["counters"] == {
        "SHOOT_SCRIPT_SWITCH": 1,
        "RTMP_STREAM_STATE_CHANGE": 3,
        "REPLY_COMMAND_FINISH": 1,
    }
    assert "secret-stream-key" not in json.dumps(state)
    _, events = await daemon.api(f"/api/rooms/{ROOM}/events?limit=1000")
    assert all("secret-stream-key" not in json.dumps(e) for e in events["events"])


async def test_late_callbacks_never_move_state_backwards(daemon: Daemon) -> None:
    await _managed(daemon)
    t0 = int(time.time() * 1000)
    await daemon.send("RTMP_STREAM_STATE_CHANGE", rtmp(ROOM, JOB, "CONNECTED"), time_ms=t0 + 10)
    status, body = await daemon.send("RTMP_STREAM_STATE_CHANGE", rtmp(ROOM, JOB, "CONNECTING"), time_ms=t0)
    assert (status, body["outcome"]) == (200, "out_of_order")
    # (Distinct times: MSS_A signs URL + time only, so two callbacks in one millisecond share a signature.)
    await daemon.send("SHOOT_SCRIPT_SWITCH", switch(ROOM, JOB, 3), time_ms=t0 + 11)
    status, body = await daemon.send("SHOOT_SCRIPT_SWITCH", switch(ROOM, JOB, 2), time_ms=t0 + 5)
    assert body["outcome"] == "out_of_order"
    state = await daemon.room(ROOM)
    assert state["rtmp"]["rtmp://push/live"]["state"] == "CONNECTED" and state["paragraph_seq"] == "3"


async def test_a_new_job_starts_without_the_previous_jobs_links(daemon: Daemon) -> None:
    await _managed(daemon, job="old-job")
    await daemon.send("RTMP_STREAM_STATE_CHANGE", rtmp(ROOM, "old-job", "END"))
    assert (await daemon.room(ROOM))["rtmp"]["rtmp://push/live"]["state"] == "END"
    await daemon.store.set_current_job(ROOM, JOB)
    state = await daemon.room(ROOM)
    assert state["rtmp"] == {} and state["job_id"] == JOB and state["job_state"] == "WAITING"


async def test_old_job_callbacks_are_recorded_not_applied(daemon: Daemon) -> None:
    await _managed(daemon, job="old-job")
    await daemon.store.set_current_job(ROOM, JOB)
    status, body = await daemon.send("RTMP_STREAM_STATE_CHANGE", rtmp(ROOM, "old-job", "END"))
    assert (status, body["outcome"]) == (200, "stale_job")
    assert (await daemon.room(ROOM))["rtmp"] == {}


async def test_event_stream_is_capped(make_settings: Any, tmp_path: Any) -> None:
    import aiohttp

    from orchestrator.app import create_app
    from orchestrator.appkeys import ROOM_STORE
    from tests.callbacks.conftest import settings_for
    from tests.support.redis_server import free_port
    from tests.support.server import serving

    port = free_port()
    settings = settings_for(make_settings, port, tmp_path / "j.jsonl", events_maxlen=100)
    app = create_app(settings)
    async with serving(app, settings, port=port) as url, aiohttp.ClientSession() as http:
        daemon = Daemon(url, http, app[ROOM_STORE], None, tmp_path)  # type: ignore[arg-type]
        await _managed(daemon)
        t0 = int(time.time() * 1000)
        for i in range(400):
            await daemon.send("SHOOT_SCRIPT_SWITCH", switch(ROOM, JOB, i), time_ms=t0 + i, profile="head")
        _, events = await daemon.api(f"/api/rooms/{ROOM}/events?limit=1000")
        assert 100 <= len(events["events"]) < 400  # MAXLEN ~ trims in whole nodes: approximately 100
        assert (await daemon.room(ROOM))["counters"]["SHOOT_SCRIPT_SWITCH"] == 400


# --- reactions --------------------------------------------------------------------------------------------------


async def test_reactions_reach_subscribers(daemon: Daemon) -> None:
    await _managed(daemon)
    async with daemon.reactions.subscribe() as queue:
        t0 = int(time.time() * 1000)
        await daemon.send(
            "REPLY_COMMAND_FINISH", {"room_id": ROOM, "job_id": JOB, "reply_id": "r-9"}, time_ms=t0
        )
        await daemon.send(
            "RTMP_STREAM_STATE_CHANGE", rtmp(ROOM, JOB, "RECONNECTING", "rtmp://a"), time_ms=t0 + 1
        )
        await daemon.send("RTMP_STREAM_STATE_CHANGE", rtmp(ROOM, JOB, "END", "rtmp://b"), time_ms=t0 + 2)
        await daemon.store.set_job_state(ROOM, JOB, "PROCESSING")
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(5):
            while len(got) < 4:  # rtmp_stalled comes after the 0.3 s grace period
                got.append(await queue.get())
    kinds = {r["kind"]: r for r in got}
    assert kinds["reply_finished"]["reply_id"] == "r-9"
    assert kinds["rtmp_end"]["output_url"] == "rtmp://b"
    assert kinds["job_state"]["job_state"] == "PROCESSING"
    assert (
        kinds["rtmp_stalled"]["output_url"] == "rtmp://a" and kinds["rtmp_stalled"]["state"] == "RECONNECTING"
    )
    await asyncio.sleep(0.5)  # the stall is reported once, not on every watcher pass
    assert queue.empty()


# --- read API ---------------------------------------------------------------------------------------------------


async def test_read_api_needs_the_admin_token(daemon: Daemon) -> None:
    await _managed(daemon)
    for token in ("", "wrong"):
        status, body = await daemon.api("/api/rooms", token=token)
        assert (status, body["error_code"]) == (401, "UNAUTHORIZED")
    status, body = await daemon.api("/api/rooms")
    assert status == 200 and [r["room_id"] for r in body["rooms"]] == [ROOM]


async def test_read_api_events_paging_and_errors(daemon: Daemon) -> None:
    await _managed(daemon)
    t0 = int(time.time() * 1000)
    for i in range(5):
        await daemon.send("SHOOT_SCRIPT_SWITCH", switch(ROOM, JOB, i), time_ms=t0 + i)
    _, first = await daemon.api(f"/api/rooms/{ROOM}/events?limit=3")
    _, rest = await daemon.api(f"/api/rooms/{ROOM}/events?since={first['next']}&limit=10")
    kinds = [e.get("event_type", e["kind"]) for e in first["events"] + rest["events"]]
    assert kinds == ["job_started"] + ["SHOOT_SCRIPT_SWITCH"] * 5
    for query, code in (
        ("limit=0", "BAD_QUERY"),
        ("limit=abc", "BAD_QUERY"),
        ("limit=%C2%B2", "BAD_QUERY"),  # "²": a digit to str.isdigit, not to int() (the fuzz test found it)
        ("since=yesterday", "BAD_QUERY"),
    ):
        status, body = await daemon.api(f"/api/rooms/{ROOM}/events?{query}")
        assert (status, body["error_code"]) == (400, code)
    assert (await daemon.api("/api/rooms/nope"))[0] == 404
    assert (await daemon.api("/api/rooms/nope/events"))[0] == 404


async def test_callback_config_command(tmp_path: Any) -> None:
    import subprocess
    import sys

    config = tmp_path / "o.toml"
    config.write_text(
        '[metastudio.callback_profiles.default]\npublic_url = "https://live.example.com/callbacks/metastudio/live-events"\n'
        f'auth_type = "MSS_A_HEAD"\nkeys = ["{KEY}", "{OLD_KEY}"]\n'
    )
    run = [sys.executable, "-m", "orchestrator", "callback-config", "room-1", "--config", str(config)]
    masked = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert masked.returncode == 0, masked.stderr
    assert json.loads(masked.stdout) == {
        # bound to the room: a signature for this URL verifies for room-1 only
        "live_event_type_callback_url": "https://live.example.com/callbacks/metastudio/live-events?room_id=room-1",
        "auth_type": "MSS_A_HEAD",
        "key": "**********",
        "callback_event_type": ["SHOOT_SCRIPT_SWITCH", "RTMP_STREAM_STATE_CHANGE", "REPLY_COMMAND_FINISH"],
    }
    revealed = subprocess.run([*run, "--reveal-key"], capture_output=True, text=True, timeout=60)
    assert json.loads(revealed.stdout)["key"] == KEY  # the current key, not the previous one
    missing = subprocess.run([*run, "--profile", "other"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "other" in missing.stderr


async def test_the_room_hears_of_its_product_only_when_it_changes(daemon: Daemon) -> None:
    """Every replica decodes every reaction: paragraphs switch far more often than products, and a reaction
    per paragraph cost the callback path a third of its throughput (benchmarks/callbacks)."""
    await _managed(daemon)
    pubsub = daemon.store._redis.pubsub()
    await pubsub.subscribe(keys.reactions_channel())
    await pubsub.get_message(timeout=1)  # the subscription's confirmation
    t0 = int(time.time() * 1000)
    products = ["Cup", "Cup", "Cup", "Lipstick", "Lipstick"]
    for i, product in enumerate(products):
        message = {**switch(ROOM, JOB, i + 1), "product_id": f"p-{product}", "product_title": product}
        status, _ = await daemon.send("SHOOT_SCRIPT_SWITCH", message, time_ms=t0 + i)
        assert status == 200
    heard = []
    while (got := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)) is not None:
        reaction = json.loads(got["data"])
        if reaction["kind"] == "paragraph":
            heard.append(reaction["product_title"])
    await pubsub.aclose()
    assert heard == ["Cup", "Lipstick"]
    assert (await daemon.room(ROOM))["paragraph_seq"] == "5"  # every paragraph recorded all the same
