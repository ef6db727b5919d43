"""Alert payloads for each webhook format, delivery retries, and the per-room rate limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from orchestrator.scheduling.alerts import Alerter, payload
from orchestrator.store.rooms import RoomStore
from tests.scheduling.conftest import ROOM, Webhooks, managed_room

TEXT = "[orchestrator] ERROR start_failed in room Evening shop (r1): boom"


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (
            "generic",
            {
                "kind": "start_failed",
                "severity": "error",
                "room_id": "r1",
                "room_name": "Evening shop",
                "message": "boom",
                "at": 1700000000,
            },
        ),
        (
            "dingtalk",
            {"msgtype": "text", "text": {"content": TEXT}},
        ),
        ("feishu", {"msg_type": "text", "content": {"text": TEXT}}),
        ("slack", {"text": TEXT}),
    ],
)
def test_payloads(fmt: str, expected: dict[str, Any]) -> None:
    assert payload(fmt, "start_failed", "r1", "boom", 1700000000.5, room_name="Evening shop") == expected


async def test_rate_limited_retried_and_recorded(
    redis_client: aioredis.Redis, webhooks: Webhooks, tmp_path: Path
) -> None:
    store = RoomStore(redis_client)
    room = managed_room(
        [{"kind": "always"}],
        alerts=[
            {"url": f"{webhooks.url}/slack", "format": "slack"},
            {"url": "http://127.0.0.1:9/unreachable", "format": "dingtalk"},  # fails: retried, recorded
        ],
    )
    async with aiohttp.ClientSession() as http:
        alerter = Alerter(http, redis_client, min_interval_s=60, events_maxlen=100, attempts=2, timeout_s=1)
        await alerter.alert(room, "rtmp_end", "output ended")
        await alerter.alert(room, "rtmp_end", "output ended again")  # within a minute: suppressed
        await alerter.alert(room, "room_blocked", "blocked")  # another kind: sent
    assert [h["text"] for h in webhooks.got] == [
        "[orchestrator] INFO rtmp_end in room demo-room: output ended",
        "[orchestrator] CRITICAL room_blocked in room demo-room: blocked",
    ]
    events = [e for e in await store.events(ROOM) if e["kind"] == "alert"]
    assert [(e["alert"], e["outcome"]) for e in events] == [
        ("rtmp_end", "slack: sent, dingtalk: failed (ClientConnectorError)"),
        ("rtmp_end", "suppressed (rate limit)"),
        ("room_blocked", "slack: sent, dingtalk: failed (ClientConnectorError)"),
    ]


async def test_a_resolved_alert_lifts_its_rate_limit(
    redis_client: aioredis.Redis, webhooks: Webhooks
) -> None:
    """Soak finding: a room blocked twice within alert_min_interval_s, the first resolved in between, paged
    once -- the second incident was swallowed by the first's rate limit."""
    store = RoomStore(redis_client)
    room = managed_room([{"kind": "always"}], alerts=[{"url": f"{webhooks.url}/generic"}])
    await store.register_room(ROOM)
    async with aiohttp.ClientSession() as http:
        alerter = Alerter(http, redis_client, min_interval_s=300, events_maxlen=100, attempts=1, timeout_s=1)
        await alerter.alert(room, "room_blocked", "blocked")
        assert (await store.state(ROOM) or {})["open_alerts"] == ["room_blocked"]
        assert await alerter.resolved(room, ["room_blocked"], "the room is live again")
        await alerter.alert(room, "room_blocked", "blocked again")  # a new incident: sent
        await alerter.alert(room, "room_blocked", "still blocked")  # the same one: rate-limited
    assert [(h["kind"], h["message"]) for h in webhooks.got] == [
        ("room_blocked", "blocked"),
        ("resolved", "the room is live again (was: room_blocked)"),
        ("room_blocked", "blocked again"),
    ]


def test_repairs_are_notices_and_an_outage_is_an_error() -> None:
    """Soak finding: every self-healed restart and ended output paged as a warning. They are notices now;
    what needs a human is a room still down after its repairs had their time (room_down)."""
    assert payload("generic", "restarted", "r", "m", 0)["severity"] == "info"
    assert payload("generic", "rtmp_end", "r", "m", 0)["severity"] == "info"
    assert payload("generic", "room_down", "r", "m", 0)["severity"] == "error"


@pytest.mark.parametrize(
    ("fmt", "status", "body", "error"),
    [
        ("dingtalk", 200, '{"errcode":0,"errmsg":"ok"}', None),
        ("dingtalk", 200, '{"errcode":310000,"errmsg":"sign not match"}', "errcode 310000: sign not match"),
        ("feishu", 200, '{"code":0,"msg":"success"}', None),
        ("feishu", 200, '{"StatusCode":0,"StatusMessage":"success"}', None),
        ("feishu", 200, '{"code":19021,"msg":"sign match fail"}', "code 19021: sign match fail"),
        ("slack", 200, "ok", None),
        ("slack", 200, '{"ok":false,"error":"invalid_token"}', "ok: false (invalid_token)"),
        ("slack", 200, "no_service", "no_service"),
        ("generic", 200, "", None),
        ("generic", 500, "", "HTTP 500"),
    ],
)
def test_delivery_is_verified_by_the_answer_body(fmt: str, status: int, body: str, error: str | None) -> None:
    from orchestrator.scheduling.alerts import delivery_error

    assert delivery_error(fmt, status, body) == error


def test_signing_as_dingtalk_and_feishu_document_it() -> None:
    import base64
    import hashlib
    import hmac
    from urllib.parse import parse_qs, urlsplit

    from orchestrator.scheduling.alerts import signed
    from orchestrator.settings import AlertTarget

    ding = AlertTarget.model_validate(
        {
            "url": "https://oapi.dingtalk.com/robot/send?access_token=t",
            "format": "dingtalk",
            "secret": "SECabc",
        }
    )
    url, _ = signed(ding, {"msgtype": "text"}, 1700000000.123)
    query = parse_qs(urlsplit(url).query)
    assert query["timestamp"] == ["1700000000123"] and query["access_token"] == ["t"]
    expected = base64.b64encode(
        hmac.new(b"SECabc", b"1700000000123\nSECabc", hashlib.sha256).digest()
    ).decode()
    assert query["sign"] == [expected]
    feishu = AlertTarget.model_validate(
        {"url": "https://open.feishu.cn/hook/x", "format": "feishu", "secret": "fs"}
    )
    _, body = signed(feishu, {"msg_type": "text"}, 1700000000.9)
    digest = hmac.new(b"1700000000\nfs", b"", hashlib.sha256).digest()
    assert body == {"msg_type": "text", "timestamp": "1700000000", "sign": base64.b64encode(digest).decode()}


async def test_refusals_in_a_200_are_failures_and_resolved_follows(
    redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    from aiohttp import web

    from tests.support.server import serving_plain

    got: list[dict[str, Any]] = []

    async def robot(request: web.Request) -> web.Response:
        body = await request.json()
        got.append(body)
        if request.path == "/refusing":
            return web.json_response({"errcode": 310000, "errmsg": "keywords not in content"})
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    app = web.Application()
    app.router.add_post("/{name}", robot)
    async with serving_plain(app) as url, aiohttp.ClientSession() as http:
        from orchestrator.settings import AlertTarget

        room = managed_room(
            [{"kind": "always"}],
            name="Evening shop",
            alerts=[
                {"url": f"{url}/ok", "format": "dingtalk"},
                {"url": f"{url}/refusing", "format": "dingtalk"},
            ],
        )
        outcomes: list[str] = []
        daemon_target = AlertTarget.model_validate({"url": f"{url}/ops", "format": "dingtalk"})
        alerter = Alerter(
            http,
            redis_client,
            min_interval_s=60,
            events_maxlen=100,
            attempts=2,
            timeout_s=1,
            daemon_targets=[daemon_target],
            on_outcome=outcomes.append,
        )
        await RoomStore(redis_client).register_room(ROOM)
        await alerter.alert(room, "circuit_open", "6 restarts in the last hour")
        assert sum(1 for b in got if "circuit_open" in b["text"]["content"]) == 4  # ok, refusing twice, ops
        assert outcomes.count("failed") == 1 and outcomes.count("sent") == 2
        store = RoomStore(redis_client)
        state = await store.state(ROOM) or {}
        assert state.get("open_alerts") == ["circuit_open"]
        assert await alerter.resolved(room, ["circuit_open"], "the room is live again")
        assert not await alerter.resolved(room, ["circuit_open"], "again")  # once, by one replica
        resolved = [b["text"]["content"] for b in got if "resolved" in b["text"]["content"]]
        assert resolved[0] == (
            "[orchestrator] INFO resolved in room Evening shop (demo-room): "
            "the room is live again (was: circuit_open)"
        )
        events = [e for e in await store.events(ROOM) if e["kind"] == "alert"]
        assert events[0]["outcome"].endswith("failed (errcode 310000: keywords not in content)")
        assert "Evening shop" in got[0]["text"]["content"] and "CRITICAL" in got[0]["text"]["content"]
