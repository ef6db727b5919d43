"""Blocklists and moderation (issue 16, point 4): viewers blocked per room and everywhere, with expiry,
followed by every replica; forbidden words on outgoing lines; operator replies warned, not refused."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator import clock
from orchestrator.appkeys import AUDIENCE
from orchestrator.interaction.blocklists import BlockBook
from orchestrator.store.blocklists import Blocked, Blocklists
from tests.interaction.test_room_policies import _comment, _said
from tests.scheduling.conftest import ADMIN, until
from tests.softsugar.test_e2e import _true, softsugar_daemon, softsugar_room

POLICY = {
    "rules": [{"name": "price", "patterns": ["多少钱"], "replies": ["{user}，看购物车"]}],
    "reactions": {"join": {"templates": ["欢迎{user}"], "per_room_per_minute": 600, "per_room_burst": 50}},
    "per_user_interval_s": 0,
    "dedup_window_s": 0,
    "per_room_per_minute": 600,
    "per_room_burst": 50,
    "forbidden_words": ["最便宜"],
}


async def test_blocked_viewers_get_nothing_per_room_or_everywhere_until_their_block_expires(
    make_settings: Any, tmp_path: Path
) -> None:
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        assert (await daemon.api("PUT", "/api/policies/shop", POLICY))[0] == 200
        for room_id in ("a", "b"):
            await daemon.configs.put(softsugar_room([{"kind": "always"}], room_id=room_id, policy="shop"))
        audience = daemon.app[AUDIENCE]
        await until(lambda: _true({"a", "b"} <= set(audience.workers)), 20)

        status, entry = await daemon.api("PUT", "/api/rooms/a/blocklist/troll", {"reason": "spam"})
        assert (status, entry["user_id"], entry["until_ms"], entry["reason"]) == (200, "troll", 0, "spam")
        status, entry = await daemon.api("PUT", "/api/blocklist/everywhere-troll", {"ttl_s": 1.5})
        assert status == 200 and entry["until_ms"] > entry["at_ms"]
        listed = (await daemon.api("GET", "/api/rooms/a/blocklist"))[1]["blocked"]
        assert [e["user_id"] for e in listed] == ["troll"]
        assert (await daemon.api("GET", "/api/rooms/b/blocklist"))[1]["blocked"] == []
        await until(lambda: _true(audience.desk.blocks.blocked("a", "troll")), 5)

        for room_id in ("a", "b"):
            await _comment(daemon, room_id, "多少钱", "troll")
            await _comment(daemon, room_id, "多少钱呀", "everywhere-troll")
            await _comment(daemon, room_id, "多少钱啊", "fan")
        await until(lambda: _has(daemon, box, "b", "troll，看购物车"), 10)  # blocked in a only
        await until(lambda: _has(daemon, box, "a", "fan，看购物车"), 10)
        await until(lambda: _has(daemon, box, "b", "fan，看购物车"), 10)
        assert not await _has(daemon, box, "a", "troll，")
        assert not await _has(daemon, box, "a", "everywhere-troll") and not await _has(
            daemon, box, "b", "everywhere-troll"
        )

        async def skipped(room_id: str) -> list[tuple[str, str]]:
            events = await daemon.store.events(room_id, limit=500)
            return [(e["user_id"], e["reason"]) for e in events if e["kind"] == "comment_skipped"]

        await until(lambda: _true_async(skipped("a"), 2), 5)
        assert sorted(await skipped("a")) == [("everywhere-troll", "blocked_user"), ("troll", "blocked_user")]

        # The global block expires by itself: the viewer is answered again.
        await asyncio.sleep(1.6)
        await _comment(daemon, "b", "现在多少钱", "everywhere-troll")
        await until(lambda: _has(daemon, box, "b", "everywhere-troll，看购物车"), 10)
        assert (await daemon.api("GET", "/api/blocklist"))[1]["blocked"] == []  # and is gone from the list

        # Unblocked: at once on the owner (the change is announced).
        assert (await daemon.api("DELETE", "/api/rooms/a/blocklist/troll"))[0] == 200
        await until(lambda: _true(not audience.desk.blocks.blocked("a", "troll")), 5)
        await _comment(daemon, "a", "多少钱？", "troll")
        await until(lambda: _has(daemon, box, "a", "troll，看购物车"), 10)

        # Bad input: structured errors, nothing changed.
        status, body = await daemon.api("DELETE", "/api/rooms/a/blocklist/troll")
        assert (status, body["error_code"]) == (404, "NOT_BLOCKED")
        status, body = await daemon.api("PUT", "/api/blocklist/x", {"ttl_s": -1})
        assert (status, body["error_code"]) == (422, "BLOCK_INVALID") and "ttl_s" in body["error_msg"]
        status, body = await daemon.api("PUT", "/api/blocklist/x", {"until": 5})
        assert status == 422 and "until" in body["error_msg"]
        status, body = await daemon.api("PUT", "/api/rooms/nowhere/blocklist/x", {})
        assert (status, body["error_code"]) == (404, "ROOM_NOT_FOUND")
        assert (await daemon.api("GET", "/api/blocklist"))[1]["blocked"] == []

        # The CLI, as an operator would use it.
        async def cli(*args: str) -> Any:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "orchestrator", "blocklist", *args, "--api", daemon.url, "--token", ADMIN,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, err
            return json.loads(out)

        added = await cli("add", "cli-troll", "--room", "b", "--ttl-s", "60", "--reason", "abuse")
        assert added["reason"] == "abuse"
        assert [e["user_id"] for e in (await cli("list", "--room", "b"))["blocked"]] == ["cli-troll"]
        assert (await cli("remove", "cli-troll", "--room", "b"))["unblocked"] is True


async def test_forbidden_words_on_outgoing_lines_and_operator_replies_warned(
    make_settings: Any, tmp_path: Path
) -> None:
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        policy = {
            **POLICY,
            "rules": [{"name": "cheap", "patterns": ["便宜吗"], "replies": ["全网最便宜！"]}],
            "reactions": {"join": {"templates": ["{user}，这里最便宜"]}},
        }
        assert (await daemon.api("PUT", "/api/policies/shop", policy))[0] == 200
        await daemon.configs.put(softsugar_room([{"kind": "always"}], room_id="a", policy="shop"))
        audience = daemon.app[AUDIENCE]
        await until(lambda: _true("a" in audience.workers), 20)
        await _comment(daemon, "a", "便宜吗", "v1")
        status, _ = await daemon.api(
            "POST", "/api/rooms/a/events", {"type": "join", "user": {"userId": "v2", "name": "小红"}}
        )
        assert status == 200

        async def both_skipped() -> bool:
            return audience.metrics.unanswered.labels("forbidden_word")._value.get() == 2

        await until(both_skipped, 10)
        status, body = await daemon.api("POST", "/api/rooms/a/replies", {"text": "今天最便宜，快下单"})
        assert status == 202 and body["outcome"] == "queued"
        assert body["warnings"] == ["the reply holds a word the room's policy forbids: 最便宜"]
        status, body = await daemon.api("POST", "/api/rooms/a/replies", {"text": "欢迎大家"})
        assert status == 202 and "warnings" not in body
        await until(lambda: _has(daemon, box, "a", "今天最便宜"), 10)  # said as the operator wrote it
        assert not await _has(daemon, box, "a", "全网最便宜") and not await _has(
            daemon, box, "a", "这里最便宜"
        )


async def _has(daemon: Any, box: Any, room_id: str, text: str) -> bool:
    return any(text in line for line in await _said(daemon, box, room_id))


async def _true_async(values: Any, n: int) -> bool:
    return len(await values) >= n


@pytest.mark.parametrize(
    ("everywhere", "room", "blocked"),
    [
        ({}, {}, False),
        ({"v": 0}, {}, True),  # never expires
        ({}, {"v": 0}, True),
        ({"v": -1}, {}, False),  # expired (until in the past)
        ({}, {"v": +60_000}, True),  # a minute left
        ({"v": -1}, {"v": +60_000}, False),  # the global entry (expired) is the one consulted first
        ({"other": 0}, {"other": 0}, False),
    ],
)
def test_a_block_holds_until_it_expires(
    everywhere: dict[str, int], room: dict[str, int], blocked: bool
) -> None:
    now = clock.time_ms()

    def at(table: dict[str, int]) -> dict[str, int]:
        return {user: 0 if offset == 0 else now + offset for user, offset in table.items()}

    book = BlockBook(Blocklists(None))  # type: ignore[arg-type]  # no Redis: the table is given here
    book._everywhere, book._rooms = at(everywhere), {"r": at(room)}
    assert book.blocked("r", "v") is blocked
    assert not book.blocked("elsewhere", "v") or "v" in everywhere
    assert Blocked("v", 0, "", 0).active(now) and not Blocked("v", now, "", 0).active(now)
