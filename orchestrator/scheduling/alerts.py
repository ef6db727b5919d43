"""Alerts: a POST to each webhook of a room (and, for daemon-level trouble, the daemon's own targets) when
something needs a human -- and a "resolved" one when the room is live again.

Kinds and severities (:data:`SEVERITY`): ``circuit_open`` and ``room_blocked`` critical, ``start_failed``
and ``room_down`` (a room that should be live has not been for ``scheduling.down_alert_after_s``) error,
``action_failed`` warning; daemon-level ``redis_lost`` and ``vendor_auth`` critical. ``restarted`` and
``rtmp_end`` are *notices* (info): the daemon repairs those itself -- the soak showed every self-healed
fault paging someone -- and a repair that does not bring the room back becomes ``room_down``. Every alert
names the room (its name and id), its severity and kind. Formats: a generic JSON document, or the
incoming-webhook shapes of DingTalk, Feishu and Slack, signed when the target has a secret (DingTalk:
``timestamp`` and ``sign`` = base64(HMAC-SHA256(secret, "timestamp\\nsecret")) in the query; Feishu:
``timestamp`` and ``sign`` = base64(HMAC-SHA256("timestamp\\nsecret", "")) in the body).

Delivery is *verified*: those robots answer HTTP 200 with an error body (DingTalk ``{"errcode": 310000}``,
Feishu ``{"code": 19021}``, Slack ``ok: false`` or a text other than ``ok``), which counts as a failure:
retried with backoff, then counted (``orch_alerts_total{outcome="failed"}``) and logged. Per room (or the
daemon) and kind at most one alert per ``scheduling.alert_min_interval_s`` (a Redis gate for rooms, so
replicas do not each send one; in memory for the daemon's, which must work without Redis); every room alert
-- sent, failed or suppressed -- is recorded in the room's event stream. A room's open alerts are kept
(``orch:{room}:alerts:open``) until the reconciler sees it live again: then one "resolved" alert, by one
replica. Webhook URLs and secrets are secrets, never logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from orchestrator import clock
from orchestrator.scheduling.rooms import ManagedRoom
from orchestrator.settings import AlertTarget
from orchestrator.store import keys
from orchestrator.store.events import RoomEvents

log = structlog.get_logger(__name__)

SEVERITY = {
    "circuit_open": "critical",
    "room_blocked": "critical",
    "redis_lost": "critical",
    "vendor_auth": "critical",
    "vendor_unknown_session": "error",
    "start_failed": "error",
    "room_down": "error",
    "action_failed": "warning",
    "rtmp_end": "info",
    "restarted": "info",
    "resolved": "info",
}
#: Kinds that also go to the daemon's own targets (settings ``alerts.targets``).
DAEMON_KINDS = frozenset({"circuit_open", "redis_lost", "vendor_auth", "vendor_unknown_session"})


def payload(
    target_format: str,
    kind: str,
    room_id: str,
    message: str,
    at: float,
    *,
    room_name: str | None = None,
    severity: str | None = None,
) -> dict[str, Any]:
    """The webhook body for ``target_format`` (pure)."""
    severity = severity or SEVERITY.get(kind, "warning")
    where = f"room {room_name} ({room_id})" if room_name else f"room {room_id}" if room_id else "the daemon"
    text = f"[orchestrator] {severity.upper()} {kind} in {where}: {message}"
    if target_format == "dingtalk":
        return {"msgtype": "text", "text": {"content": text}}
    if target_format == "feishu":
        return {"msg_type": "text", "content": {"text": text}}
    if target_format == "slack":
        return {"text": text}
    return {
        "kind": kind,
        "severity": severity,
        "room_id": room_id,
        "room_name": room_name,
        "message": message,
        "at": int(at),
    }


def signed(target: AlertTarget, body: dict[str, Any], now: float) -> tuple[str, dict[str, Any]]:
    """The URL and body to send to ``target``, signed as its robot expects when it has a secret (pure)."""
    url = target.url.get_secret_value()
    if target.secret is None:
        return url, body
    secret = target.secret.get_secret_value()
    if target.format == "dingtalk":
        timestamp = str(int(now * 1000))
        digest = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
        sign = quote(base64.b64encode(digest).decode(), safe="")
        return f"{url}{'&' if '?' in url else '?'}timestamp={timestamp}&sign={sign}", body
    if target.format == "feishu":
        timestamp = str(int(now))
        digest = hmac.new(f"{timestamp}\n{secret}".encode(), b"", hashlib.sha256).digest()
        return url, {**body, "timestamp": timestamp, "sign": base64.b64encode(digest).decode()}
    return url, body


def delivery_error(target_format: str, status: int, text: str) -> str | None:
    """Why an answer is a failure, or None when the robot took the message (pure). DingTalk, Feishu and
    Slack answer HTTP 200 with an error in the body."""
    if status >= 400:
        return f"HTTP {status}"
    try:
        data: Any = json.loads(text) if text.strip() else None
    except ValueError:
        data = None
    if target_format == "dingtalk" and isinstance(data, dict) and data.get("errcode", 0) != 0:
        return f"errcode {data.get('errcode')}: {data.get('errmsg', '')}"
    if target_format == "feishu" and isinstance(data, dict):
        code = data.get("code", data.get("StatusCode", 0))
        if code not in (0, None):
            return f"code {code}: {data.get('msg', data.get('StatusMessage', ''))}"
    if target_format == "slack":
        if isinstance(data, dict) and data.get("ok") is False:
            return f"ok: false ({data.get('error', '')})"
        if data is None and text.strip() not in ("", "ok"):
            return text.strip()[:100]
    return None


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
        daemon_targets: list[AlertTarget] | None = None,
        on_outcome: Any = None,
    ) -> None:
        self._session = session
        self._redis = redis
        self._min_interval_s = min_interval_s
        self._events = RoomEvents(redis, maxlen=events_maxlen)
        self._attempts = attempts
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._daemon_targets = daemon_targets or []
        self._daemon_sent: dict[str, float] = {}
        self._on_outcome = on_outcome  # (outcome) -> None: metrics

    async def alert(self, room: ManagedRoom, kind: str, message: str) -> None:
        """A room's alert, to its webhooks (and the daemon's, for :data:`DAEMON_KINDS`), rate-limited."""
        if kind in DAEMON_KINDS:
            await self.daemon_alert(kind, message, room=room)
        if not room.alerts:
            return
        gate = keys.room_alert_gate(room.room_id, kind)
        if not await self._redis.set(gate, "1", nx=True, px=clock.real_ms(self._min_interval_s)):
            await self._record(room.room_id, kind, message, "suppressed (rate limit)")
            return
        results = await self._send_all(room.alerts, kind, room.room_id, room.name, message)
        if SEVERITY.get(kind, "warning") != "info":  # open until the room is live again
            await self._redis.hsetnx(keys.room_state(room.room_id), f"alert_open:{kind}", int(clock.time()))
        await self._record(room.room_id, kind, message, ", ".join(results))

    async def daemon_alert(
        self, kind: str, message: str, *, room: ManagedRoom | None = None, resolves: str | None = None
    ) -> None:
        """Daemon-level trouble to ``alerts.targets``: rate-limited in memory (it must work while Redis is
        the trouble). A "resolved" one (``resolves``: the kind it ends) is never held back, and lifts that
        kind's rate limit: the same trouble again is a new incident."""
        if not self._daemon_targets:
            return
        where = room.room_id if room else ""
        if resolves is not None:
            self._daemon_sent.pop(f"{resolves}:{where}", None)
        else:
            gate = f"{kind}:{where}"
            now = clock.monotonic()
            if now - self._daemon_sent.get(gate, -1e9) < self._min_interval_s:
                return
            self._daemon_sent[gate] = now
        await self._send_all(
            self._daemon_targets, kind, room.room_id if room else "", room.name if room else None, message
        )

    async def resolved(self, room: ManagedRoom, open_kinds: list[str], message: str) -> bool:
        """The room is live again: one "resolved" alert naming what was open (``open_kinds``, read from its
        state), sent by the one replica whose HDEL removed them. True when it was sent here."""
        fields = [f"alert_open:{kind}" for kind in open_kinds]
        try:
            removed = await self._redis.hdel(keys.room_state(room.room_id), *fields) if fields else 0
        except RedisError:
            return False
        if not removed or not room.alerts:
            return False
        # The trouble is over: the next one of the same kind is a new incident and must not be swallowed
        # by the rate limit of the last (the soak saw a second block, minutes after the first, go unsent).
        with contextlib.suppress(RedisError):
            await self._redis.delete(*(keys.room_alert_gate(room.room_id, kind) for kind in open_kinds))
        text = f"{message} (was: {', '.join(sorted(open_kinds))})"
        results = await self._send_all(room.alerts, "resolved", room.room_id, room.name, text)
        await self._record(room.room_id, "resolved", text, ", ".join(results))
        return True

    async def _send_all(
        self, targets: list[AlertTarget], kind: str, room_id: str, room_name: str | None, message: str
    ) -> list[str]:
        now = clock.time()
        return list(
            await asyncio.gather(*(self._deliver(t, kind, room_id, room_name, message, now) for t in targets))
        )

    async def _deliver(
        self, target: AlertTarget, kind: str, room_id: str, room_name: str | None, message: str, at: float
    ) -> str:
        body = payload(target.format, kind, room_id, message, at, room_name=room_name)
        error = "not sent"
        for attempt in range(self._attempts):
            url, signed_body = signed(target, body, time.time())  # the robot checks it against real time
            try:
                async with self._session.post(url, json=signed_body, timeout=self._timeout) as resp:
                    error = delivery_error(target.format, resp.status, await resp.text()) or ""
                    if not error:
                        self._count("sent")
                        return f"{target.format}: sent"
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = type(exc).__name__
            if attempt + 1 < self._attempts:
                await asyncio.sleep(0.2 * 2**attempt)
        self._count("failed")
        log.warning("alert not delivered", room_id=room_id, kind=kind, format=target.format, error=error)
        return f"{target.format}: failed ({error})"

    def _count(self, outcome: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    async def _record(self, room_id: str, kind: str, message: str, outcome: str) -> None:
        await self._events.alert(room_id, kind, SEVERITY.get(kind, "warning"), outcome, message)
