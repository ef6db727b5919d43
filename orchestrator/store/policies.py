"""Reply policies in Redis, by name, versioned: what a room (or every room of a brand) answers.

A policy is a hash ``orch:policy:{name}``: ``version`` holds the current version's number, and ``<n>`` each
kept version's document ``{"policy": {...}, "saved_ms", "note"}``. Saving writes a new version (the previous
ones stay, the newest :data:`KEEP_VERSIONS`); restoring an old version saves it again as the newest, so
history only grows and every replica sees one number go up. The names are in the set ``orch:policies``.

The store keeps documents; what a policy may hold is the interaction layer's to say: callers validate a
document before they save it and when they read it (:mod:`orchestrator.interaction.policies` -- one
written by hand, or by a newer version of the daemon, that does not validate is refused, not half-used).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from orchestrator import clock
from orchestrator.store import keys, scripts
from orchestrator.store.redis import text

#: Versions kept per policy (older ones are dropped as new ones are saved).
KEEP_VERSIONS = 20


@dataclass(frozen=True)
class StoredPolicy:
    name: str
    version: int
    policy: dict[str, Any]  # the document, as saved
    saved_ms: int
    note: str = ""

    def to_api(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "saved_ms": self.saved_ms,
            "note": self.note,
            "policy": self.policy,
        }


class PolicyStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._save = redis.register_script(scripts.source("policy_save"))

    async def save(self, name: str, policy: dict[str, Any], *, note: str = "") -> int:
        """Save ``policy`` (a validated document) as the newest version of ``name`` (created if new); its
        version number."""
        document = orjson.dumps({"policy": policy, "saved_ms": clock.time_ms(), "note": note})
        version = int(await self._save(keys=[keys.policy(name)], args=[document, KEEP_VERSIONS]))
        await self._redis.sadd(keys.policies_index(), name)
        return version

    async def get(self, name: str, version: int | None = None) -> StoredPolicy | None:
        """The current version of ``name`` (or version ``version``); None if there is no such policy or
        version. Raises ValueError if what is stored is not a policy document."""
        key = keys.policy(name)
        if version is None:
            current = await self._redis.hget(key, "version")
            if current is None:
                return None
            version = int(current)
        raw = await self._redis.hget(key, str(version))
        return None if raw is None else _parse(name, version, raw)

    async def get_version(self, name: str) -> int | None:
        """The current version of ``name``; None if there is no such policy."""
        return (await self.current_versions([name])).get(name)

    async def current_versions(self, names: list[str]) -> dict[str, int]:
        """The current version of each of ``names`` that exists (one round trip)."""
        if not names:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(keys.policy(name), "version")
            found = await pipe.execute()
        return {name: int(v) for name, v in zip(names, found, strict=True) if v is not None}

    async def names(self) -> list[str]:
        return sorted(text(n) for n in await self._redis.smembers(keys.policies_index()))

    async def versions(self, name: str) -> list[StoredPolicy]:
        """Every kept version of ``name``, the newest first (empty if there is no such policy)."""
        stored = await self._redis.hgetall(keys.policy(name))
        found = [
            _parse(name, int(field), raw)
            for field, raw in ((text(f), r) for f, r in stored.items())
            if field.isdigit()
        ]
        return sorted(found, key=lambda p: -p.version)

    async def delete(self, name: str) -> bool:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(keys.policy(name))
            pipe.srem(keys.policies_index(), name)
            deleted, _ = await pipe.execute()
        return bool(deleted)


def _parse(name: str, version: int, raw: bytes | str) -> StoredPolicy:
    try:
        document = orjson.loads(raw)
        policy = document["policy"]
        if not isinstance(policy, dict):
            raise TypeError("its policy is not a mapping")
        return StoredPolicy(
            name, version, policy, int(document.get("saved_ms", 0)), str(document.get("note", ""))
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"policy {name!r} version {version} in Redis is not a valid policy: {exc}") from exc
