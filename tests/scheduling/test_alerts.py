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


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("generic", {"kind": "start_failed", "room_id": "r1", "message": "boom", "at": 1700000000}),
        (
            "dingtalk",
            {"msgtype": "text", "text": {"content": "[orchestrator] start_failed in room r1: boom"}},
        ),
        ("feishu", {"msg_type": "text", "content": {"text": "[orchestrator] start_failed in room r1: boom"}}),
        ("slack", {"text": "[orchestrator] start_failed in room r1: boom"}),
    ],
)
def test_payloads(fmt: str, expected: dict[str, Any]) -> None:
    assert payload(fmt, "start_failed", "r1", "boom", 1700000000.5) == expected


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
        "[orchestrator] rtmp_end in room demo-room: output ended",
        "[orchestrator] room_blocked in room demo-room: blocked",
    ]
    events = [e for e in await store.events(ROOM) if e["kind"] == "alert"]
    assert [(e["alert"], e["outcome"]) for e in events] == [
        ("rtmp_end", "slack: sent, dingtalk: failed (ClientConnectorError)"),
        ("rtmp_end", "suppressed (rate limit)"),
        ("room_blocked", "slack: sent, dingtalk: failed (ClientConnectorError)"),
    ]
