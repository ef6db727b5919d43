"""Human review mode (issue 16, point 5): a room's automatic replies wait for an operator -- approve, edit
then approve, reject -- and expire; operator replies skip it; every reply leaves the review once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from orchestrator.appkeys import AUDIENCE
from tests.interaction.test_room_policies import _comment, _said
from tests.scheduling.conftest import until
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


async def test_review_mode_approve_edit_reject_expire(make_settings: Any, tmp_path: Path) -> None:
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        assert (await daemon.api("PUT", "/api/policies/shop", POLICY))[0] == 200
        await daemon.configs.put(softsugar_room([{"kind": "always"}], room_id="r1", policy="shop"))
        audience = daemon.app[AUDIENCE]
        await until(lambda: _true("r1" in audience.workers), 20)

        status, mode = await daemon.api("PUT", "/api/rooms/r1/review", {"enabled": True, "expire_s": 3})
        assert (status, mode["enabled"], mode["expire_s"], mode["waiting"]) == (200, True, 3, [])
        await until(lambda: _true(audience.workers["r1"].desk.review_s == 3), 10)

        for user in ("a", "b", "c", "d"):
            await _comment(daemon, "r1", "多少钱", user)

        async def waiting(n: int) -> bool:
            return len((await daemon.api("GET", "/api/rooms/r1/review"))[1]["waiting"]) == n

        await until(lambda: waiting(4), 10)
        items = (await daemon.api("GET", "/api/rooms/r1/review"))[1]["waiting"]
        assert [i["text"] for i in items] == ["a，看购物车", "b，看购物车", "c，看购物车", "d，看购物车"]
        assert {i["priority"] for i in items} == {"question"} and items[0]["source"] == "price"
        await asyncio.sleep(0.5)
        assert await _said(daemon, box, "r1") == []  # nothing said without a yes

        # Operator replies skip the review.
        assert (await daemon.api("POST", "/api/rooms/r1/replies", {"text": "大家好"}))[0] == 202
        await until(lambda: _has(daemon, box, "大家好"), 10)

        ids = [i["review_id"] for i in items]
        status, body = await daemon.api("POST", f"/api/rooms/r1/review/{ids[0]}/approve")
        assert (status, body["outcome"], body["queued"]) == (202, "approved", True)
        status, body = await daemon.api(
            "POST", f"/api/rooms/r1/review/{ids[1]}/approve", {"text": "b，今天最便宜"}
        )
        assert (status, body["outcome"]) == (202, "edited")
        assert body["warnings"] == ["the reply holds a word the room's policy forbids: 最便宜"]
        status, body = await daemon.api("POST", f"/api/rooms/r1/review/{ids[2]}/reject")
        assert (status, body) == (200, {"outcome": "rejected"})
        await until(lambda: _has(daemon, box, "a，看购物车"), 10)
        await until(lambda: _has(daemon, box, "b，今天最便宜"), 10)

        # Once only: decided already.
        status, body = await daemon.api("POST", f"/api/rooms/r1/review/{ids[0]}/approve")
        assert (status, body["error_code"]) == (404, "REVIEW_NOT_FOUND")
        # Expired: the fourth was left alone for longer than 3 s.
        await asyncio.sleep(3.2)
        status, body = await daemon.api("POST", f"/api/rooms/r1/review/{ids[3]}/approve")
        assert (status, body["error_code"]) in {(410, "REVIEW_EXPIRED"), (404, "REVIEW_NOT_FOUND")}
        await until(lambda: waiting(0), 10)
        assert not await _has(daemon, box, "c，看购物车") and not await _has(daemon, box, "d，看购物车")
        await until(lambda: _true(audience.metrics.unanswered.labels("rejected")._value.get() == 2), 10)
        kinds = [(e["kind"], e.get("outcome")) for e in await daemon.store.events("r1", limit=500)]
        assert {("review_decided", o) for o in ("approved", "edited", "rejected", "expired")} <= set(kinds)

        # Bad input.
        status, body = await daemon.api("PUT", "/api/rooms/r1/review", {"enabled": "yes please"})
        assert (status, body["error_code"]) == (422, "REVIEW_INVALID") and "enabled" in body["error_msg"]
        status, body = await daemon.api("PUT", "/api/rooms/r1/review", {"enabled": True, "expire_s": 0})
        assert status == 422 and "expire_s" in body["error_msg"]
        status, body = await daemon.api("POST", "/api/rooms/r1/review/x/approve", {"text": ""})
        assert status == 422 and "text" in body["error_msg"]
        status, body = await daemon.api("POST", "/api/rooms/r1/review/x/maybe")
        assert status in (404, 405)

        # Review off: replies are said at once again.
        status, mode = await daemon.api("PUT", "/api/rooms/r1/review", {"enabled": False})
        assert (status, mode["enabled"]) == (200, False)
        await until(lambda: _true(audience.workers["r1"].desk.review_s == 0), 10)
        await _comment(daemon, "r1", "多少钱呢", "e")
        await until(lambda: _has(daemon, box, "e，看购物车"), 10)


async def _has(daemon: Any, box: Any, text: str) -> bool:
    return any(text in line for line in await _said(daemon, box, "r1"))
