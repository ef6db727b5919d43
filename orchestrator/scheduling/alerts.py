"""Alerts: a JSON POST to each of a room's webhooks when something needs a human.

Kinds: ``circuit_open`` (restarts exhausted), ``start_failed``, ``room_blocked``, ``rtmp_end``. Formats: a
generic JSON document, or the incoming-webhook shapes of DingTalk, Feishu and Slack. Each delivery is
retried with backoff; per room and kind at most one alert per ``scheduling.alert_min_interval_s`` (a
Redis gate, so replicas do not each send one); every alert -- sent, failed or suppressed -- is recorded
in the room's event stream. Webhook URLs carry tokens: they are secrets, never logged.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import structlog

from orchestrator.scheduling.rooms import AlertTarget, ManagedRoom
from orchestrator.store import keys

log = structlog.get_logger(__name__)


def payload(target_format: str, kind: str, room_id: str, message: str, at: float) -> dict[str, Any]:
    """The webhook body for ``target_format`` (pure)."""
    text = f"[orchestrator] {kind} in room {room_id}: {message}"
    if target_format == "dingtalk":
        return {"msgtype": "text", "text": {"content": text}}
    if target_format == "feishu":
        return {"msg_type": "text", "content": {"text": text}}
    if target_format == "slack":
        return {"text": text}
    return {"kind": kind, "room_id": room_id, "message": message, "at": int(at)}


class Alerter:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        redis: aioredis.Redis,
        *,
        min_interval_s: float,
        events_maxlen: int,
        attempts: int = 3,
        timeout_s: float = 5.0,
    ) -> None:
        self._session = session
        self._redis = redis
        self._min_interval_s = min_interval_s
        self._maxlen = events_maxlen
        self._attempts = attempts
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def alert(self, room: ManagedRoom, kind: str, message: str) -> None:
        if not room.alerts:
            return
        gate = keys.room_alert_gate(room.room_id, kind)
        if not await self._redis.set(gate, "1", nx=True, ex=max(1, int(self._min_interval_s))):
            await self._record(room.room_id, kind, message, "suppressed (rate limit)")
            return
        now = time.time()
        results = await asyncio.gather(
            *(self._deliver(t, kind, room.room_id, message, now) for t in room.alerts)
        )
        await self._record(room.room_id, kind, message, ", ".join(results))

    async def _deliver(self, target: AlertTarget, kind: str, room_id: str, message: str, at: float) -> str:
        body = payload(target.format, kind, room_id, message, at)
        for attempt in range(self._attempts):
            try:
                async with self._session.post(
                    target.url.get_secret_value(), json=body, timeout=self._timeout
                ) as resp:
                    if resp.status < 400:
                        return f"{target.format}: sent"
                    error = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = type(exc).__name__
            await asyncio.sleep(0.2 * 2**attempt)
        log.warning("alert not delivered", room_id=room_id, kind=kind, format=target.format, error=error)
        return f"{target.format}: failed ({error})"

    async def _record(self, room_id: str, kind: str, message: str, outcome: str) -> None:
        await self._redis.xadd(
            keys.room_events(room_id),
            {
                "kind": "alert",
                "alert": kind,
                "outcome": outcome,
                "event_ms": int(time.time() * 1000),
                "message": json.dumps({"text": message}, ensure_ascii=False),
            },
            maxlen=self._maxlen,
            approximate=True,
        )
