"""Audience event ingest: normalisation table, per-event errors, the HTTP endpoint, stream and counters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.app import create_app
from orchestrator.appkeys import ROOM_STORE
from orchestrator.interaction.ingest import normalise_batch
from orchestrator.store import keys
from tests.support.server import serving

USER = {"userId": "u1", "name": "小明", "level": 3}
NOW = 1_763_700_000_000
WIRE_USER = {"userId": "u1", "name": "小明", "level": 3, "badge": "", "badgeLevel": 0}


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            {"type": "comment", "user": USER, "text": "多少钱", "timestamp": 5},
            {
                "timestamp": 5,
                "type": 1,
                "content": {
                    "user": {"userId": "u1", "name": "小明", "level": 3, "badge": "", "badgeLevel": 0},
                    "content": "多少钱",
                },
            },
        ),
        (
            {"type": 2, "user": {"userId": "u2"}},
            {
                "timestamp": NOW,
                "type": 2,
                "content": {"user": {"userId": "u2", "name": "", "level": 0, "badge": "", "badgeLevel": 0}},
            },
        ),
        (
            {
                "type": "gift",
                "user": {"userId": "u3"},
                "gift": {"giftName": "Star", "giftNum": 10, "giftValue": 3},
            },
            {
                "timestamp": NOW,
                "type": 4,
                "content": {
                    "user": {"userId": "u3", "name": "", "level": 0, "badge": "", "badgeLevel": 0},
                    "gift": {"giftName": "Star", "giftNum": 10, "giftValue": 3, "totalValue": 30},
                },
            },
        ),
        (
            {"type": "follow", "user": USER},  # 004: "5: Subscription/Following", not used by the vendor
            {"timestamp": NOW, "type": 5, "content": {"user": WIRE_USER}},
        ),
        (
            {"type": "like"},  # an anonymous like: platforms do not always say who
            {"timestamp": NOW, "type": 3, "content": {}},
        ),
        (
            {"type": "viewers", "viewers": 5466},
            {"timestamp": NOW, "type": 6, "content": {"numberOfViewers": 5466}},
        ),
    ],
)
def test_normalisation(event: dict[str, Any], expected: dict[str, Any]) -> None:
    accepted, rejected = normalise_batch([event], NOW)
    assert (accepted, rejected) == ([expected], [])


@pytest.mark.parametrize(
    ("event", "fragment"),
    [
        ({"type": "subscribe", "user": USER}, "type must be"),
        ({"type": 7, "user": USER}, "type must be"),
        ({"type": "follow"}, "user is required"),
        ({"type": "comment", "user": USER}, "text is required"),
        ({"type": "comment", "text": "hi"}, "user is required"),
        ({"type": "gift", "user": USER}, "gift is required"),
        ({"type": "viewers"}, "viewers is required"),
        ({"type": "viewers", "viewers": -1}, "viewers"),
        ({"type": "comment", "user": USER, "text": "x", "surprise": 1}, "surprise"),
        ("not an object", "event"),
    ],
)
def test_per_event_errors(event: Any, fragment: str) -> None:
    accepted, rejected = normalise_batch([{"type": "viewers", "viewers": 1}, event], NOW)
    assert len(accepted) == 1  # the valid one in the same batch is kept
    assert rejected[0].index == 1 and fragment in rejected[0].error_msg


async def test_endpoint_stream_and_counters(make_settings: Any, tmp_path: Path) -> None:
    settings = make_settings(
        admin={"token": "ingest-token"}, callbacks={"journal_path": str(tmp_path / "j.jsonl")}
    )
    app = create_app(settings)
    headers = {"Authorization": "Bearer ingest-token"}
    async with serving(app, settings) as url, aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{url}/api/rooms/room-x/events", json={"type": "join", "user": USER}) as resp:
            assert resp.status == 404  # not a managed room
        await app[ROOM_STORE].register_room("room-x")
        batch = {
            "events": [
                {"type": "comment", "user": USER, "text": "多少钱"},
                {"type": "comment", "user": USER},  # invalid: no text
                {"type": "viewers", "viewers": 100, "timestamp": 2},
                {"type": "viewers", "viewers": 90, "timestamp": 1},  # older: not the room's count
                {"type": "like", "user": USER},
            ]
        }
        async with http.post(f"{url}/api/rooms/room-x/events", json=batch) as resp:
            body = await resp.json()
        assert resp.status == 200 and body["accepted"] == 4
        assert body["rejected"] == [
            {"index": 1, "error_code": "EVENT_INVALID", "error_msg": "text is required for a comment"}
        ]
        async with http.post(f"{url}/api/rooms/room-x/events", json=[{"type": "bogus"}]) as resp:
            assert resp.status == 422 and (await resp.json())["accepted"] == 0
        async with http.post(f"{url}/api/rooms/room-x/events", json=[]) as resp:
            assert (resp.status, (await resp.json())["error_code"]) == (400, "BAD_BATCH")
        async with http.post(f"{url}/api/rooms/room-x/events", data=b"{") as resp:
            assert (resp.status, (await resp.json())["error_code"]) == (400, "BAD_JSON")
        async with http.post(
            f"{url}/api/rooms/room-x/events", json=batch, headers={"Authorization": "Bearer no"}
        ) as resp:
            assert resp.status == 401
        state = await app[ROOM_STORE].state("room-x")
        assert state is not None
        assert (state["viewers"], state["audience:1"], state["audience:6"], state["audience:3"]) == (
            "100",
            "1",
            "2",
            "1",
        )
        from orchestrator.appkeys import REDIS

        entries = await app[REDIS].xrange(keys.room_ingest("room-x"))
        events = [json.loads(fields[b"event"]) for _, fields in entries]
        assert [e["type"] for e in events] == [1, 6, 6, 3]
        assert isinstance(events[0]["content"], str)  # wire form: the report sends it as is
        assert json.loads(events[0]["content"])["content"] == "多少钱"
