"""Audience event ingest: normalisation table, per-event errors, the HTTP endpoint, stream and counters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from orchestrator.app import create_app
from orchestrator.appkeys import ROOM_STORE
from orchestrator.interaction.ingest import by_the_models, live_event_fast, normalise_batch
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
        (  # unknown fields are kept under extra (never reported); message_id travels beside the event
            {
                "type": "comment",
                "user": USER,
                "text": "hi",
                "message_id": "dy-1",
                "platform": "douyin",
                "extra": {"room_url": "https://live.example/1"},
            },
            {
                "timestamp": NOW,
                "type": 1,
                "content": {"user": WIRE_USER, "content": "hi"},
                "message_id": "dy-1",
                "extra": {"room_url": "https://live.example/1", "platform": "douyin"},
            },
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
        ({"type": "comment", "user": USER, "text": "x", "blob": "y" * 3000}, "extra: at most 2048 bytes"),
        ({"type": "comment", "user": USER, "text": "x", "message_id": ""}, "message_id"),
        ({"type": "comment", "user": USER, "text": "x", "extra": []}, "extra"),
        ("not an object", "event"),
    ],
)
def test_per_event_errors(event: Any, fragment: str) -> None:
    accepted, rejected = normalise_batch([{"type": "viewers", "viewers": 1}, event], NOW)
    assert len(accepted) == 1  # the valid one in the same batch is kept
    assert rejected[0].index == 1 and fragment in rejected[0].error_msg


_COUNT = [-1, 0, 1, 2**63 - 1, 2**63, True, "3", 3.0, None]
_NAME = ["", "a", "a" * 256, "a" * 257, 5, None]
#: For each field (a path into the event), values at its bounds and of the kinds the models coerce or refuse.
_FIELD_VALUES: dict[tuple[str, ...], list[Any]] = {
    ("type",): [0, 1, 4, 6, 7, True, "comment", "viewers", "x", "1", 1.0, None],
    ("timestamp",): [-1, 0, 4_102_415_999_000, 4_102_415_999_001, 1.5, "5", True, None],
    ("user",): [None, {}, [], "u1", {"userId": "u"}],
    ("user", "userId"): ["", "a", "a" * 128, "a" * 129, 5, None],
    ("user", "name"): _NAME,
    ("user", "level"): _COUNT,
    ("user", "badge"): _NAME,
    ("user", "badgeLevel"): _COUNT,
    ("user", "user_id"): ["x"],
    ("user", "badge_level"): [1],
    ("user", "other"): [1, None],
    ("text",): ["", " ", "a", "a" * 1024, "a" * 1025, 5, None],
    ("gift",): [None, {}, [], {"giftName": "g"}],
    ("gift", "giftName"): ["", "a", "a" * 256, "a" * 257, 5, None],
    ("gift", "giftNum"): _COUNT,
    ("gift", "giftValue"): _COUNT,
    ("gift", "totalValue"): _COUNT,
    ("gift", "gift_num"): [3],
    ("viewers",): _COUNT,
    ("message_id",): ["", "a", "a" * 128, "a" * 129, 5, None],
    ("extra",): [None, {}, [], "x", {"a": 1}, {"b": "y" * 2030}, {"b": "y" * 2040}],
    ("platform",): ["douyin", None, {"x": 1}, "y" * 2050],
}
_VALID = [
    {"type": "comment", "user": {"userId": "u1", "name": "小明"}, "text": "多少钱"},
    {"type": 4, "user": {"userId": "u"}, "gift": {"giftName": "rose", "giftNum": 2, "giftValue": 5}},
    {"type": "like"},
    {"type": "join", "user": {"userId": "u", "level": 2, "badge": "b", "badgeLevel": 1}},
    {"type": "follow", "user": {"userId": "u"}, "timestamp": 5},
    {"type": "viewers", "viewers": 7, "message_id": "m"},
]


@st.composite
def _events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with up to three fields (its own, its user's, its gift's) set to a value at a bound
    or of another kind, or removed."""
    event: dict[str, Any] = json.loads(json.dumps(draw(st.sampled_from(_VALID))))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(sorted(_FIELD_VALUES)))
        inner = event
        if len(path) == 2:
            inner = event.setdefault(path[0], {})
            if not isinstance(inner, dict):
                continue
        if draw(st.integers(0, 9)) == 0:
            inner.pop(path[-1], None)
        else:
            inner[path[-1]] = draw(st.sampled_from(_FIELD_VALUES[path]))
    return event


def _mutated(base: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any] | None:
    event: dict[str, Any] = json.loads(json.dumps(base))
    inner = event.setdefault(path[0], {}) if len(path) == 2 else event
    if not isinstance(inner, dict):
        return None
    inner[path[-1]] = value
    return event


def test_the_plain_path_agrees_with_the_models_at_every_bound() -> None:
    """Every valid shape with each field, in turn, at each of its bounds and of each other kind: the fast
    checks agree with the models on all of them (and take the valid ones)."""
    taken = 0
    for base in _VALID:
        for path, values in _FIELD_VALUES.items():
            for value in values:
                event = _mutated(base, path, value)
                if event is None:
                    continue
                fast, slow = live_event_fast(event, NOW), by_the_models(event, NOW)
                assert fast is None or fast == slow, (event, fast, slow)
                taken += fast is not None
    assert taken > 200


@settings(max_examples=600, deadline=None)
@given(_events())
@example({"type": "comment", "user": {"userId": "u1", "name": "小明"}, "text": "多少钱"})
@example({"type": 4, "user": {"userId": "u"}, "gift": {"giftName": "rose", "giftNum": 2, "giftValue": 5}})
@example({"type": "viewers", "viewers": 0, "platform": "douyin", "extra": {"room_url": "u"}})
def test_property_the_plain_path_agrees_with_the_models(event: dict[str, Any]) -> None:
    """The fast checks take an event only if the models take it, and build the same LiveEvent (issue 18:
    they exist for speed alone). What they decline goes to the models."""
    fast = live_event_fast(event, NOW)
    if fast is not None:
        assert fast == by_the_models(event, NOW)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "comment", "user": USER, "text": "多少钱", "timestamp": 5, "message_id": "m1"},
        {"type": "like"},
        {"type": "like", "user": {"userId": "u2"}},
        {"type": "gift", "user": USER, "gift": {"giftName": "Star", "giftNum": 10, "giftValue": 3}},
        {"type": "follow", "user": USER, "platform": "douyin", "extra": {"room_url": "x"}},
        {"type": 2, "user": USER},
        {"type": "viewers", "viewers": 5466},
    ],
)
def test_the_plain_shapes_take_the_fast_path(event: dict[str, Any]) -> None:
    """What the contract shows bridges sending is not left to the models (a third of the cost)."""
    assert live_event_fast(event, NOW) == by_the_models(event, NOW)


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


async def test_bridge_contract_tokens_dedup_extra_and_backpressure(
    make_settings: Any, tmp_path: Path
) -> None:
    """A bridge's own token posts to its rooms only; a resent message id is taken once; unknown fields are
    kept in the stream, never in the event reported; a room at its backlog bound answers 429 with
    Retry-After and takes nothing until it drains."""
    bridge_token = "douyin-bridge-token-0001"
    settings = make_settings(
        admin={
            "token": "ingest-token",
            "bridges": [{"name": "douyin", "token": bridge_token, "rooms": ["brand-a-*"]}],
        },
        interaction={"ingest_backlog_max": 100},
        callbacks={"journal_path": str(tmp_path / "j.jsonl")},
    )
    app = create_app(settings)
    bridge = {"Authorization": f"Bearer {bridge_token}"}
    from orchestrator.appkeys import REDIS

    async with serving(app, settings) as url, aiohttp.ClientSession(headers=bridge) as http:
        for room_id in ("brand-a-1", "brand-b-1"):
            await app[ROOM_STORE].register_room(room_id)
        event = {"type": "comment", "user": USER, "text": "hi", "message_id": "m-1", "platform": "douyin"}
        async with http.post(f"{url}/api/rooms/brand-a-1/events", json=[event]) as resp:
            assert resp.status == 200 and (await resp.json())["duplicates"] == 0
        async with http.post(
            f"{url}/api/rooms/brand-a-1/events", json=[event, {**event, "message_id": "m-2"}]
        ) as resp:
            body = await resp.json()
        assert (resp.status, body["accepted"], body["duplicates"]) == (200, 2, 1)  # m-1 again: taken once
        entries = await app[REDIS].xrange(keys.room_ingest("brand-a-1"))
        assert [fields[b"m"] for _, fields in entries] == [b"m-1", b"m-2"]
        assert json.loads(entries[0][1][b"x"]) == {"platform": "douyin"}
        assert (
            "platform" not in entries[0][1][b"event"].decode()
            and "m-1" not in entries[0][1][b"event"].decode()
        )
        state = await app[ROOM_STORE].state("brand-a-1")
        assert state is not None and state["audience:1"] == "2"  # the duplicate is not counted

        # Not its room; not its endpoint.
        async with http.post(f"{url}/api/rooms/brand-b-1/events", json=[event]) as resp:
            assert (resp.status, (await resp.json())["error_code"]) == (403, "ROOM_NOT_ALLOWED")
        async with http.get(f"{url}/api/rooms") as resp:
            assert resp.status == 401
        async with http.post(f"{url}/api/rooms/brand-a-1/replies", json={"text": "x"}) as resp:
            assert resp.status == 401

        # Backpressure: 98 more fill the room's backlog to its bound (100); the next batch is refused whole.
        filler = [{"type": "like"} for _ in range(98)]
        async with http.post(f"{url}/api/rooms/brand-a-1/events", json=filler) as resp:
            assert resp.status == 200
        async with http.post(
            f"{url}/api/rooms/brand-a-1/events", json=[{**event, "message_id": "m-3"}]
        ) as resp:
            body = await resp.json()
            assert (resp.status, body["error_code"], resp.headers["Retry-After"]) == (
                429,
                "BACKLOG_FULL",
                "1",
            )
        assert await app[REDIS].xlen(keys.room_ingest("brand-a-1")) == 100  # nothing taken
        # Drained (reported and trimmed): taken again, and m-3 is not a duplicate -- it was never taken.
        await app[REDIS].xtrim(keys.room_ingest("brand-a-1"), maxlen=10)
        async with http.post(
            f"{url}/api/rooms/brand-a-1/events", json=[{**event, "message_id": "m-3"}]
        ) as resp:
            assert resp.status == 200 and (await resp.json())["duplicates"] == 0
