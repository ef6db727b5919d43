"""Reply queue (real Redis) and reply pacing against the sandbox: priorities, bounds, finish, timeouts,
clean-up, idle filler, the vendor's CALLBACK mode and operator replies."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from orchestrator.sandbox.metastudio.engine import CallbackFaults
from orchestrator.store import keys
from orchestrator.store.redis import is_cluster
from orchestrator.store.replies import Reply, ReplyQueue
from tests.interaction.conftest import (
    CALLBACK_TOKEN,
    POLICY,
    ROOM,
    audience,
    comment,
    ingest,
    live_room,
    until,
)

# --- the queue itself -------------------------------------------------------------------------------------


async def test_queue_orders_by_priority_then_age(redis_client: aioredis.Redis) -> None:
    queue = ReplyQueue(redis_client, max_pending=15)
    for text, priority in [
        ("i", "idle"),
        ("q1", "question"),
        ("g", "gift"),
        ("q2", "question"),
        ("o", "operator"),
    ]:
        outcome, _, evicted = await queue.enqueue(ROOM, Reply(text, priority))  # type: ignore[arg-type]
        assert (outcome, evicted) == ("queued", None)
        await asyncio.sleep(0.002)
    assert [r.text for r in await queue.pending(ROOM)] == ["o", "g", "q1", "q2", "i"]
    popped = [await queue.pop(ROOM) for _ in range(6)]
    assert [p.text if p else None for p in popped] == ["o", "g", "q1", "q2", "i", None]


async def test_queue_bound_evicts_the_least_important(redis_client: aioredis.Redis) -> None:
    queue = ReplyQueue(redis_client, max_pending=3)
    ids = []
    for i in range(3):
        _, reply_id, _ = await queue.enqueue(ROOM, Reply(f"q{i}", "question"))
        ids.append(reply_id)
        await asyncio.sleep(0.002)
    assert (await queue.enqueue(ROOM, Reply("idle", "idle")))[0] == "dropped"
    assert (await queue.enqueue(ROOM, Reply("q3", "question")))[0] == "dropped"  # same band: the new one goes
    outcome, _, evicted = await queue.enqueue(ROOM, Reply("thanks", "gift"))
    assert (outcome, evicted) == ("queued", ids[2])  # the newest of the lowest band
    outcome, _, evicted = await queue.enqueue(ROOM, Reply("op", "operator"))
    assert (outcome, evicted) == ("queued", ids[1])
    assert [r.text for r in await queue.pending(ROOM)] == ["op", "thanks", "q0"]
    assert await redis_client.hlen(keys.room_reply_items(ROOM)) == 3  # evicted bodies are gone too


async def test_push_back_keeps_the_place(redis_client: aioredis.Redis) -> None:
    queue = ReplyQueue(redis_client)
    await queue.enqueue(ROOM, Reply("first", "question"))
    await asyncio.sleep(0.002)
    await queue.enqueue(ROOM, Reply("second", "question"))
    first = await queue.pop(ROOM)
    assert first is not None
    await queue.push_back(ROOM, first)
    assert [r.text for r in await queue.pending(ROOM)] == ["first", "second"]


async def test_finish_that_wins_the_race_is_not_counted_in_flight(redis_client: aioredis.Redis) -> None:
    queue = ReplyQueue(redis_client)
    await redis_client.sadd(keys.room_replies_done(ROOM), "cmd-early")  # the callback script's doing
    assert not await queue.record_sent(ROOM, "cmd-early", Reply("x", "question"), 1)
    assert await queue.record_sent(ROOM, "cmd-2", Reply("y", "gift"), 2)
    assert [(f.reply_id, f.priority, f.text) for f in await queue.in_flight(ROOM)] == [("cmd-2", "gift", "y")]
    assert await queue.forget(ROOM, ["cmd-2"]) == 1
    assert await queue.in_flight(ROOM) == []


async def test_a_pacers_pass_queues_looks_and_takes_in_one_round_trip(redis_client: aioredis.Redis) -> None:
    """take(): the decided replies are queued, the replies in flight listed, and the most important waiting
    ones taken to fill the free places (none while held), with the priority of the first left waiting --
    all in one round trip (counted by Redis: one EVALSHA per reply queued, one for the look)."""
    queue = ReplyQueue(redis_client)
    assert await queue.record_sent(ROOM, "cmd-1", Reply("playing", "question"), 1)
    await queue.enqueue(ROOM, Reply("op", "operator"))
    await queue.take("room-other", [], 1)  # its script loaded (a first call meets NOSCRIPT, then loads it)
    cluster = cast(RedisCluster, redis_client) if is_cluster(redis_client) else None
    master = cluster.get_node_from_key(keys.room_state(ROOM)) if cluster else None
    await (cluster.config_resetstat(target_nodes=master) if cluster else redis_client.config_resetstat())
    took = await queue.take(
        ROOM, [(Reply("q1", "question"), "rule-a"), (Reply("q2", "question"), "rule-b")], 3
    )
    if is_cluster(redis_client):  # the room's master's count
        cluster = cast(RedisCluster, redis_client)
        stats = await cluster.info(
            "commandstats", target_nodes=cluster.get_node_from_key(keys.room_state(ROOM))
        )
    else:
        stats = await redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 3
    assert not {"cmdstat_multi", "cmdstat_script|exists"} & set(stats)  # no transaction, no script check
    assert [outcome for outcome, _, _ in took.queued] == ["queued", "queued"]
    assert [f.reply_id for f in took.in_flight] == ["cmd-1"]
    assert [r.text for r in took.taken] == ["op", "q1"]  # two places free of three: most important first
    assert took.waiting == "question"
    events = await redis_client.xrange(keys.room_events(ROOM))
    assert [e[1][b"source"] for e in events if e[1].get(b"source")] == [b"rule-a", b"rule-b"]
    # Every place taken: nothing is taken, the head is reported.
    full = await queue.take(ROOM, [(Reply("op2", "operator"), "operator")], 1)
    assert (full.taken, full.waiting) == ([], "operator")
    # Held (an operator has the microphone): queued, not taken.
    await queue.forget(ROOM, ["cmd-1"])
    assert await queue.hold(ROOM, "mic", 5.0)
    held = await queue.take(ROOM, [], 3)
    assert (held.in_flight, held.taken) == ([], [])
    await queue.release(ROOM, "mic")
    assert [r.text for r in (await queue.take(ROOM, [], 3)).taken] == ["op2", "q2"]
    assert (await queue.take(ROOM, [], 3)).waiting is None


# --- pacing against the sandbox -------------------------------------------------------------------------


def _inserts(box: Any, job_id: str) -> list[Any]:
    return list(box.world.jobs[job_id].inserts)


async def test_replies_are_paced_by_reply_command_finish(make_settings: Any, tmp_path: Path) -> None:
    async with live_room(make_settings, tmp_path, report_window_ms=50, reply_in_flight=1) as (
        daemon,
        box,
        job_id,
    ):
        users = [f"u{i}" for i in range(5)]
        await ingest(daemon, [comment("什么时候发货", user=u) for u in users])
        peak = 0

        async def all_finished() -> bool:
            nonlocal peak
            inserts = _inserts(box, job_id)
            ours = [i for i in inserts if "下单明天发货" in i.text]
            peak = max(peak, sum(1 for i in ours if i.state in ("PENDING", "PLAYING")))
            return len(ours) == 5 and all(i.state == "FINISHED" for i in ours)

        await until(all_finished, 30)
        ours = [i for i in _inserts(box, job_id) if "下单明天发货" in i.text]
        assert peak == 1  # never two of ours at the vendor at once
        assert sorted(i.text for i in ours) == sorted(f"name-{u}，今天下单明天发货。" for u in users)
        assert {i.play_type for i in ours} == {"INSERT"}
        await until(lambda: _in_flight_empty(daemon), 5)
        events = await daemon.store.events(ROOM, limit=1000)
        assert sum(1 for e in events if e["kind"] == "reply_inserted") == 5
        assert sum(1 for e in events if e.get("event_type") == "REPLY_COMMAND_FINISH") == 5


async def test_reply_without_finish_is_given_up(make_settings: Any, tmp_path: Path) -> None:
    async with live_room(
        make_settings, tmp_path, report_window_ms=50, reply_in_flight=1, reply_timeout_s=1.0
    ) as (daemon, box, job_id):
        box.world.sender.faults = CallbackFaults(drop=1000)  # no REPLY_COMMAND_FINISH reaches us
        await ingest(daemon, [comment("发货吗", user="a"), comment("尺码呢", user="b")])
        await until(lambda: _async(len(_inserts(box, job_id)) == 2), 15)  # the second went after the timeout
        metrics = await (await daemon.http.get(f"{daemon.url}/metrics")).text()
        assert 'orch_replies_total{outcome="timed_out"}' in metrics


async def test_operator_reply_clears_unplayed_inserts(make_settings: Any, tmp_path: Path) -> None:
    long_reply = "这是一段很长的回答，" * 80  # plays for a long while at the sandbox
    policy = {**POLICY, "rules": [{"name": "long", "patterns": ["详细"], "replies": [long_reply]}]}
    async with live_room(make_settings, tmp_path, policy=policy, report_window_ms=50, reply_in_flight=3) as (
        daemon,
        box,
        job_id,
    ):
        await ingest(daemon, [comment("详细说说", user=f"u{i}") for i in range(3)])
        await until(lambda: _async(len(_inserts(box, job_id)) == 3), 15)
        status, body = await daemon.api("POST", f"/api/rooms/{ROOM}/replies", {"text": "主播马上回来！"})
        assert status == 202 and body["outcome"] == "queued"
        await until(lambda: _async(any(i.text == "主播马上回来！" for i in _inserts(box, job_id))), 15)
        inserts = _inserts(box, job_id)
        states = [i.state for i in inserts if i.text == long_reply]
        assert states.count("CLEANED") == 2 and states.count("PLAYING") == 1
        operator = next(i for i in inserts if i.text == "主播马上回来！")
        assert operator.play_type == "PLAY_NOW"
        metrics = await (await daemon.http.get(f"{daemon.url}/metrics")).text()
        assert 'orch_replies_total{outcome="cleaned_up"} 2.0' in metrics


async def test_an_operator_clear_drops_the_waiting_and_withdraws_the_unplayed(
    make_settings: Any, tmp_path: Path
) -> None:
    """DELETE /api/rooms/R/replies: the waiting replies dropped, the vendor's unplayed inserts cleaned up
    (CLEAN_UP_INSERT_COMMAND with no ids: all of them), nothing left in flight."""
    long_reply = "这是一段很长的回答，" * 80
    policy = {**POLICY, "rules": [{"name": "long", "patterns": ["详细"], "replies": [long_reply]}]}
    async with live_room(make_settings, tmp_path, policy=policy, report_window_ms=50, reply_in_flight=2) as (
        daemon,
        box,
        job_id,
    ):
        await ingest(daemon, [comment("详细说说", user=f"u{i}") for i in range(4)])
        await until(lambda: _async(len(_inserts(box, job_id)) == 2), 15)
        status, body = await daemon.api("DELETE", f"/api/rooms/{ROOM}/replies")
        assert status == 200 and body["dropped"] == 2, body
        assert [i.state for i in _inserts(box, job_id)].count("CLEANED") == 1  # the one not yet playing
        status, listed = await daemon.api("GET", f"/api/rooms/{ROOM}/replies")
        assert listed == {"pending": [], "in_flight": []}
        events = [e for e in await daemon.store.events(ROOM, limit=1000) if e["kind"] == "replies_cleared"]
        assert len(events) == 1 and events[0]["dropped"] == "2"
        assert (await daemon.api("DELETE", "/api/rooms/nope/replies"))[0] == 404


async def test_idle_filler_when_nothing_played(make_settings: Any, tmp_path: Path) -> None:
    async with live_room(
        make_settings, tmp_path, idle_after_s=0.5, idle_lines=["欢迎新进来的朋友！", "喜欢的点个关注。"]
    ) as (_daemon, box, job_id):
        await until(lambda: _async(len(_inserts(box, job_id)) >= 2), 15)
        first, second = _inserts(box, job_id)[:2]
        assert (first.text, second.text) == ("欢迎新进来的朋友！", "喜欢的点个关注。")
        assert first.play_type == "APPEND"


async def test_operator_api_validates_and_lists(make_settings: Any, tmp_path: Path) -> None:
    async with live_room(make_settings, tmp_path) as (daemon, _box, _job):
        status, body = await daemon.api("POST", f"/api/rooms/{ROOM}/replies", {"text": ""})
        assert status == 400 and body["error_code"] == "BAD_REPLY" and "text" in body["error_msg"]
        status, body = await daemon.api(
            "POST", f"/api/rooms/{ROOM}/replies", {"text": "x", "priority": "vip"}
        )
        assert status == 400
        status, body = await daemon.api("POST", "/api/rooms/nope/replies", {"text": "x"})
        assert status == 404
        status, body = await daemon.api("POST", f"/api/rooms/{ROOM}/replies", {"text": "x"}, token="wrong")
        assert status == 401
        status, body = await daemon.api("GET", f"/api/rooms/{ROOM}/replies")
        assert status == 200 and set(body) == {"pending", "in_flight"}


# --- the vendor's CALLBACK mode ------------------------------------------------------------------------------


async def test_vendor_callback_rule_gets_an_insert_with_its_rule_index(
    make_settings: Any, tmp_path: Path
) -> None:
    async with live_room(make_settings, tmp_path, report_window_ms=50) as (daemon, box, job_id):
        # Our policy has nothing for this; the sandbox's "ask" rule (questions → CALLBACK) fires.
        await ingest(daemon, [comment("这个能用多久？", user="q1")])
        await until(lambda: _async(any(i.rule_index == "ask" for i in _inserts(box, job_id))), 15)
        insert = next(i for i in _inserts(box, job_id) if i.rule_index == "ask")
        assert insert.text == "这个问题我记下了，稍后为您详细解答。"
        posts = box.world.interaction_posts
        assert len(posts) == 1 and posts[0]["status"] == 200


async def test_vendor_callback_endpoint_errors(make_settings: Any, tmp_path: Path) -> None:
    async with live_room(make_settings, tmp_path) as (daemon, _box, job_id):
        url = f"{daemon.url}/callbacks/metastudio/interaction"
        body = {"room_id": ROOM, "job_id": job_id, "rule_index": "r1", "event": {"type": 1, "content": "{}"}}
        async with daemon.http.post(f"{url}/wrong-token", json=body) as resp:
            assert resp.status == 401 and (await resp.json())["error_code"] == "INTERACTION_BAD_TOKEN"
        async with daemon.http.post(f"{url}/{CALLBACK_TOKEN}", data=b"{") as resp:
            assert resp.status == 400 and (await resp.json())["error_code"] == "INTERACTION_BAD_BODY"
        async with daemon.http.post(f"{url}/{CALLBACK_TOKEN}", json={**body, "job_id": "other"}) as resp:
            assert resp.status == 404
        content = json.dumps({"user": {"userId": "z", "name": "Z"}, "content": "什么时候发货"})
        ok = {**body, "event": {"type": 1, "timestamp": 0, "content": content}}
        async with daemon.http.post(f"{url}/{CALLBACK_TOKEN}", json=ok) as resp:
            answer = await resp.json()
            assert resp.status == 200 and answer["queued"] is True and answer["reply_id"]


async def test_interaction_callback_off_without_token(make_settings: Any, tmp_path: Path) -> None:
    async with live_room(make_settings, tmp_path, callback_token="") as (daemon, _box, job_id):
        body = {"room_id": ROOM, "job_id": job_id, "event": {"type": 1}}
        async with daemon.http.post(f"{daemon.url}/callbacks/metastudio/interaction/x", json=body) as resp:
            assert resp.status == 404 and (await resp.json())["error_code"] == "INTERACTION_CALLBACK_OFF"


async def _async(value: bool) -> bool:
    return value


async def _in_flight_empty(daemon: Any) -> bool:
    return not await audience(daemon).queue.in_flight(ROOM)
