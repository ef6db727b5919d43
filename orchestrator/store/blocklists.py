"""Blocked viewers, by platform user id: per room (``orch:{room}:blocklist``) and for every room
(``orch:blocklist``), each entry with its expiry (0: never), reason and when it was made.

Every change raises ``orch:blocklist:version`` after it (in the same pipeline: no transaction, whose keys
would have to share a Redis Cluster slot), so a replica knows to read again by comparing one number; it
reads the number before the lists, so a change made while it reads shows as a new number next time. An
expired entry is ignored wherever it is read and removed when a list is read through
:meth:`Blocklists.entries`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from orchestrator import clock
from orchestrator.store import keys
from orchestrator.store.redis import text

#: Longest reason kept.
MAX_REASON = 200


@dataclass(frozen=True)
class Blocked:
    user_id: str
    until_ms: int  # 0: never expires
    reason: str
    at_ms: int

    def active(self, now_ms: int) -> bool:
        return self.until_ms == 0 or now_ms < self.until_ms

    def as_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "until_ms": self.until_ms,
            "reason": self.reason,
            "at_ms": self.at_ms,
        }


def _key(room_id: str | None) -> str:
    return keys.global_blocklist() if room_id is None else keys.room_blocklist(room_id)


def _parse(user_id: str, raw: Any) -> Blocked | None:
    try:
        data = orjson.loads(raw)
        return Blocked(user_id, int(data.get("until_ms", 0)), str(data.get("reason", "")), int(data["at_ms"]))
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return None  # written by hand and wrong: not a block


class Blocklists:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def block(
        self, user_id: str, *, room_id: str | None = None, ttl_s: float | None = None, reason: str = ""
    ) -> Blocked:
        """Block a viewer in one room (or everywhere), for ``ttl_s`` (None: until unblocked)."""
        now_ms = clock.time_ms()
        until_ms = 0 if ttl_s is None else now_ms + max(1, int(ttl_s * 1000))
        entry = Blocked(user_id, until_ms, reason[:MAX_REASON], now_ms)
        body = orjson.dumps({"until_ms": until_ms, "reason": entry.reason, "at_ms": now_ms})
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(_key(room_id), user_id, body)
            pipe.incr(keys.blocklist_version())
            await pipe.execute()
        return entry

    async def unblock(self, user_id: str, *, room_id: str | None = None) -> bool:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hdel(_key(room_id), user_id)
            pipe.incr(keys.blocklist_version())
            removed, _ = await pipe.execute()
        return bool(removed)

    async def entries(self, room_id: str | None = None) -> list[Blocked]:
        """The active entries, oldest first; expired ones are removed."""
        raw = await self._redis.hgetall(_key(room_id))
        now_ms = clock.time_ms()
        active, expired = [], []
        for user, value in raw.items():
            entry = _parse(text(user), value)
            if entry is not None and entry.active(now_ms):
                active.append(entry)
            else:
                expired.append(text(user))
        if expired:
            await self._redis.hdel(_key(room_id), *expired)
        return sorted(active, key=lambda e: (e.at_ms, e.user_id))

    async def version(self) -> int:
        return int(await self._redis.get(keys.blocklist_version()) or 0)

    async def snapshot(self, room_ids: list[str]) -> tuple[int, dict[str, int], dict[str, dict[str, int]]]:
        """The version, the global list and these rooms' lists as ``user_id → until_ms`` (one round trip,
        the version first)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.blocklist_version())
            pipe.hgetall(keys.global_blocklist())
            for room_id in room_ids:
                pipe.hgetall(keys.room_blocklist(room_id))
            version, everywhere, *rooms = await pipe.execute()
        return (
            int(version or 0),
            _until(everywhere),
            {room_id: _until(raw) for room_id, raw in zip(room_ids, rooms, strict=True) if raw},
        )


def _until(raw: dict[Any, Any]) -> dict[str, int]:
    found = {}
    for user, value in raw.items():
        entry = _parse(text(user), value)
        if entry is not None:
            found[entry.user_id] = entry.until_ms
    return found
