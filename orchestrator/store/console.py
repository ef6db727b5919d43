"""What the console keeps in Redis, shared by every replica: login sessions, one-time login links, the
replicas' presence, and each room's activity samples (for the charts).

Sessions and links are stored under a digest of their secret, never the secret: a copy of Redis (a
backup, ``MONITOR``) hands nobody a usable cookie.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from orchestrator.store import keys
from orchestrator.store.redis import chunks, mget, text

#: Samples kept per room: a day at the default minute.
ACTIVITY_MAXLEN = 1440
#: What a sample records, read from the room's state: (sample field, state field).
ACTIVITY_FIELDS = (
    ("viewers", "viewers"),
    ("comments", "audience:comment"),
    ("replies", "events:reply_inserted"),
)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class Session:
    operator: str
    csrf: str
    expires_ms: int


class ConsoleStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def open_session(self, operator: str, ttl_s: int) -> tuple[str, Session]:
        """A new session for ``operator``: its cookie value and the session (with its CSRF token)."""
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        expires_ms = int(time.time() * 1000) + ttl_s * 1000  # the browser's clock: real time
        key = keys.console_session(_digest(sid))
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"operator": operator, "csrf": csrf, "expires_ms": expires_ms})
        pipe.expire(key, ttl_s)
        await pipe.execute()
        return sid, Session(operator, csrf, expires_ms)

    async def session(self, sid: str) -> Session | None:
        if not sid or len(sid) > 128:
            return None
        raw: Any = await self._redis.hgetall(keys.console_session(_digest(sid)))
        if not raw:
            return None
        return Session(raw[b"operator"].decode(), raw[b"csrf"].decode(), int(raw[b"expires_ms"]))

    async def close_session(self, sid: str) -> None:
        await self._redis.delete(keys.console_session(_digest(sid)))

    async def new_link(self, operator: str, ttl_s: int) -> str:
        """A one-time login code for ``operator``, valid ``ttl_s`` seconds."""
        code = secrets.token_urlsafe(24)
        await self._redis.set(keys.console_link(_digest(code)), operator, ex=ttl_s)
        return code

    async def take_link(self, code: str) -> str | None:
        """The operator a one-time code logs in, once; None for an unknown, used or expired code."""
        if not code or len(code) > 128:
            return None
        operator = await self._redis.getdel(keys.console_link(_digest(code)))
        return text(operator) if operator is not None else None

    async def announce(self, replica_id: str, about: dict[str, Any], ttl_s: float) -> None:
        """This replica is alive, and what it holds (seen by every replica's daemon page)."""
        now_ms = int(time.time() * 1000)
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(keys.replica(replica_id), json.dumps({**about, "seen_ms": now_ms}), px=int(ttl_s * 1000))
        pipe.zadd(keys.replicas_index(), {replica_id: now_ms})
        pipe.zremrangebyscore(keys.replicas_index(), "-inf", now_ms - int(ttl_s * 1000) * 10)
        await pipe.execute()

    async def withdraw(self, replica_id: str) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(keys.replica(replica_id))
        pipe.zrem(keys.replicas_index(), replica_id)
        await pipe.execute()

    async def replicas(self) -> list[dict[str, Any]]:
        """The replicas that announced themselves lately, alive (their key not yet expired) or not."""
        members: Any = await self._redis.zrange(keys.replicas_index(), 0, -1)
        ids = [text(i) for i in members]
        if not ids:
            return []
        raws: Any = await mget(self._redis, [keys.replica(i) for i in ids])
        return [
            {"replica_id": replica_id, "alive": raw is not None, **(json.loads(raw) if raw else {})}
            for replica_id, raw in zip(ids, raws, strict=True)
        ]

    async def sample_activity(self, room_ids: list[str], minute_ms: int) -> int:
        """One activity sample per room for the interval starting ``minute_ms``, taken by one replica (the
        first to claim the interval); returns the rooms sampled (0: another replica took it)."""
        claimed = await self._redis.set(keys.activity_claim(minute_ms), "1", nx=True, px=600_000)
        if not claimed:
            return 0
        state_fields = [field for _, field in ACTIVITY_FIELDS]
        sampled = 0
        for chunk in chunks(room_ids):
            pipe = self._redis.pipeline(transaction=False)
            for room_id in chunk:
                pipe.hmget(keys.room_state(room_id), state_fields)
            answers = await pipe.execute(raise_on_error=False)
            write = self._redis.pipeline(transaction=False)
            for room_id, values in zip(chunk, answers, strict=True):
                if isinstance(values, Exception):
                    continue
                sample = {
                    name: (value.decode() if value is not None else "")
                    for (name, _), value in zip(ACTIVITY_FIELDS, values, strict=True)
                }
                write.xadd(
                    keys.room_activity(room_id),
                    sample,  # type: ignore[arg-type]
                    id=f"{minute_ms}-0",
                    maxlen=ACTIVITY_MAXLEN,
                    approximate=True,
                )
                sampled += 1
            await write.execute(raise_on_error=False)  # an id not after the last: sampled already
        return sampled

    async def activity(self, room_id: str, since_ms: int) -> list[dict[str, Any]]:
        """The room's samples since ``since_ms``, oldest first: ``{at_ms, viewers, comments, replies}`` with
        the counters as totals (the caller takes differences)."""
        entries: Any = await self._redis.xrange(keys.room_activity(room_id), min=f"{since_ms}-0", max="+")
        samples = []
        for entry_id, fields in entries:
            sample: dict[str, Any] = {"at_ms": int(entry_id.decode().split("-")[0])}
            for name, _ in ACTIVITY_FIELDS:
                value = fields.get(name.encode(), b"")
                sample[name] = int(value) if value else None
            samples.append(sample)
        return samples
