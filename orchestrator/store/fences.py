"""Fences: one replica acts on a room at a time, and a fence never outlives the replica holding it.

A fence is a Redis string ``orch:{room}:fence:<action>:<cause>`` holding its holder's random token, with a
short TTL (``scheduling.fence_ttl_s``, 30 s by default) that the holder renews every third of it while
the action runs. A holder that dies -- SIGKILL, a lost machine -- stops renewing, and the fence is gone one
TTL later; nothing it held can strand a window for longer. Renewal and release compare the token first
(Lua), so a holder that was too slow never extends or deletes a fence that has passed to another.

Beside each fence its holder writes an *intent* (``...:intent``, kept for ``intent_ttl_s``) and removes it
when the action has finished, done or failed. An intent found when the fence is taken means the previous
holder died in the middle of the action: it may or may not have reached the vendor. The caller is told
(:attr:`FenceHold.orphaned`), so it looks at the vendor before acting again.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from orchestrator import clock
from orchestrator.store import scripts
from orchestrator.tasks import cancel_and_wait, checkpoint

log = structlog.get_logger(__name__)

RENEW_LUA = scripts.source("fence_renew")

RELEASE_LUA = scripts.source("fence_release")

CLEAR_INTENT_LUA = scripts.source("fence_clear_intent")

#: Take the fence and write the intent in one step; the answer is [taken, previous intent or false].
ACQUIRE_LUA = scripts.source("fence_acquire")


class FenceHold:
    """A fence this process holds: renewed in the background until :meth:`finish` or :meth:`release`."""

    def __init__(self, fences: Fences, key: str, token: str, orphaned: bool) -> None:
        self.key = key
        self.token = token
        #: The previous holder died in the middle of this action (its intent was still there).
        self.orphaned = orphaned
        self._fences = fences
        self._renewal: asyncio.Task[None] | None = None

    def _start_renewal(self) -> None:
        self._renewal = asyncio.create_task(self._renew(), name=f"fence-renew:{self.key}")

    async def _renew(self) -> None:
        interval_s = self._fences.ttl_s / 3
        while True:
            checkpoint()
            await clock.sleep(interval_s)
            try:
                if not await self._fences.renew(self.key, self.token):
                    log.warning("fence lost while its action ran", fence=self.key)
                    return
            except RedisError as exc:
                log.warning("cannot renew a fence; retrying", fence=self.key, error=str(exc))

    async def finish(self) -> None:
        """The action is done: stop renewing, clear the intent, and let the fence run out its TTL (a
        replica that decided on a view from before the action still finds it taken)."""
        await self._stop()
        with contextlib.suppress(RedisError):
            await self._fences.clear_intent(self.key, self.token)

    async def release(self) -> None:
        """The action failed or did nothing: remove the fence and the intent now (a later pass may act)."""
        await self._stop()
        try:
            await self._fences.release(self.key, self.token)
        except RedisError as exc:
            log.warning("cannot release a fence; it expires by itself", fence=self.key, error=str(exc))

    async def _stop(self) -> None:
        if self._renewal is not None:
            await cancel_and_wait(self._renewal)
            self._renewal = None


class Fences:
    """Takes, renews and releases room fences on one Redis."""

    def __init__(self, redis: aioredis.Redis, *, ttl_s: float, intent_ttl_s: float = 3600.0) -> None:
        self._redis = redis
        self.ttl_s = ttl_s
        self._intent_ttl_s = intent_ttl_s
        self._acquire = redis.register_script(ACQUIRE_LUA)
        self._renew_script = redis.register_script(RENEW_LUA)
        self._release_script = redis.register_script(RELEASE_LUA)
        self._clear_intent = redis.register_script(CLEAR_INTENT_LUA)

    async def acquire(self, key: str) -> FenceHold | None:
        """The fence ``key``, held and renewed, or None if another holder has it. Raises RedisError."""
        token = secrets.token_hex(8)
        taken, previous = await self._acquire(
            keys=[key, intent_key(key)],
            args=[token, clock.real_ms(self.ttl_s), clock.real_ms(self._intent_ttl_s)],
        )
        if not taken:
            return None
        hold = FenceHold(self, key, token, orphaned=bool(previous))
        hold._start_renewal()
        return hold

    async def renew(self, key: str, token: str) -> bool:
        return bool(await self._renew_script(keys=[key], args=[token, clock.real_ms(self.ttl_s)]))

    async def release(self, key: str, token: str) -> bool:
        return bool(await self._release_script(keys=[key, intent_key(key)], args=[token]))

    async def clear_intent(self, key: str, token: str) -> None:
        await self._clear_intent(keys=[intent_key(key)], args=[token])


def intent_key(fence_key: str) -> str:
    """The intent written beside a fence (same hash tag: same slot)."""
    return f"{fence_key}:intent"
