"""SoftSugar access tokens: one per account, shared by every replica through Redis.

003 only says calls carry a token ("add token information in the request header"); how to obtain one is in
the vendor's public access guide, and its users' code agrees::

    POST /api/uc/v1/access/api/token
         {"appId", "timestamp": <ms>, "grantType": "sign",
          "sign": md5(appId + timestamp + appKey) lower-case hex}
      → data.accessToken, data.expiresIn (seconds; 8 h by default), data.refreshToken
    POST /api/uc/v1/access/api/token/refresh       Authorization: Bearer <refreshToken>
         {"appId", "grantType": "refreshToken"}
      → the same

Calls carry ``Authorization: Bearer <accessToken>`` (WebSockets: ``?Authorization=Bearer%20<token>``).

**At most two access tokens are valid at once per account**: a third issued invalidates the oldest. So the
daemon holds one token for the whole deployment, in Redis (``keys.vendor_token``): a replica reads it, and
only when it is missing or expires within :data:`REFRESH_BEFORE_S` does one replica -- the holder of a
short lock -- obtain a new one (by the refresh token while it is valid, else by signing); the others wait
for it. A 401 invalidates the token a call used only if it is still the stored one (one refresh, not a
storm: the replicas that saw the same 401 find the new token already there).

Each replica keeps the token it last read for :data:`REREAD_S` (real seconds) before it asks Redis again:
every call carries it, and a thousand sessions' heartbeats each reading Redis first cost a round trip per
call for a value that changes every few hours. A token another replica replaced meanwhile stays valid (two
are), and a 401 reads Redis at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog

from orchestrator import clock
from orchestrator.providers.errors import ProviderConfigError, ProviderError
from orchestrator.store import keys, scripts
from orchestrator.store.redis import text

log = structlog.get_logger(__name__)

TOKEN_PATH = "/api/uc/v1/access/api/token"  # noqa: S105 -- a path, not a secret
REFRESH_PATH = "/api/uc/v1/access/api/token/refresh"
#: A token expiring within this is replaced first (of 8 h: the last half hour).
REFRESH_BEFORE_S = 1800.0
#: The lock on obtaining a token lapses this long after its holder last renewed it (real seconds): the
#: holder renews it every third of that while its request is out, so a replica killed mid-request holds
#: the others up for at most this -- with 10 s and no renewal, a kill at a window's start cost the window.
LOCK_TTL_S = 2.0
#: How long a replica waits for another's request (its own request's timeout is the vendor client's).
MAX_WAIT_S = 60.0
#: How long a replica uses the token it read before it reads Redis again (real seconds).
REREAD_S = 5.0


def sign(app_id: str, timestamp_ms: int, app_key: str) -> str:
    """``md5(appId + timestamp + appKey)``, lower-case hex (pure)."""
    return hashlib.md5(f"{app_id}{timestamp_ms}{app_key}".encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class Issued:
    """A token as the vendor issued it: expiry instants in ms on the daemon's clock."""

    access: str
    expires_ms: int
    refresh: str | None = None
    refresh_expires_ms: int = 0


#: Obtains a token: given the refresh token to use (None: sign), returns what the vendor issued.
Obtain = Callable[[str | None], Awaitable[Issued]]


class SharedToken:
    """The account's token, shared through Redis."""

    def __init__(self, redis: aioredis.Redis, account: str, obtain: Obtain) -> None:
        if not account:
            raise ProviderConfigError("softsugar.app_id is not set")
        self._redis = redis
        self._key = keys.vendor_token("softsugar", account)
        self._lock = keys.vendor_token_lock("softsugar", account)
        self._obtain = obtain
        self._release = redis.register_script(scripts.source("lease_release"))
        self._renew_lock = redis.register_script(scripts.source("fence_renew"))
        self._local = asyncio.Lock()  # one obtain at a time in this process
        self._read: tuple[float, Issued] | None = None  # (when read, real monotonic s; the token)

    async def get(self) -> str:
        """A valid access token. Raises ProviderError (the vendor refused, or is unreachable)."""
        if self._read is not None and time.monotonic() - self._read[0] < REREAD_S:
            stored: Issued | None = self._read[1]
        else:
            stored = await self._stored()
        if stored is not None and stored.expires_ms - clock.time_ms() > REFRESH_BEFORE_S * 1000:
            return stored.access
        return await self._renew(stored.access if stored else None)

    async def invalidate(self, refused: str) -> str:
        """The vendor refused ``refused`` (401): a new token -- unless another replica already replaced it."""
        stored = await self._stored()
        if stored is not None and stored.access != refused:
            return stored.access
        return await self._renew(refused, force=True)

    async def _renew(self, seen: str | None, *, force: bool = False) -> str:
        async with self._local:
            owner = uuid.uuid4().hex
            deadline = time.monotonic() + MAX_WAIT_S
            while time.monotonic() < deadline:
                stored = await self._stored()
                fresh = stored is not None and stored.access != seen
                if (
                    stored is not None
                    and not force
                    and stored.expires_ms - clock.time_ms() > REFRESH_BEFORE_S * 1000
                ):
                    return stored.access
                if fresh and stored is not None:
                    return stored.access  # another replica renewed it meanwhile
                if await self._redis.set(self._lock, owner, nx=True, px=int(LOCK_TTL_S * 1000)):
                    keeping = asyncio.create_task(self._keep_lock(owner), name="softsugar-token-lock")
                    try:
                        return await self._issue(stored)
                    finally:
                        keeping.cancel()
                        await asyncio.gather(keeping, return_exceptions=True)
                        await self._release(keys=[self._lock], args=[owner])
                await asyncio.sleep(0.1)  # another replica is obtaining it
            raise ProviderError("could not obtain a SoftSugar token: another replica holds the lock")

    async def _keep_lock(self, owner: str) -> None:
        """Renew the lock while this replica's request is out (it lapses soon after a crash)."""
        while True:
            await asyncio.sleep(LOCK_TTL_S / 3)
            await self._renew_lock(keys=[self._lock], args=[owner, int(LOCK_TTL_S * 1000)])

    async def _issue(self, stored: Issued | None) -> str:
        refresh = None
        if stored is not None and stored.refresh and stored.refresh_expires_ms > clock.time_ms():
            refresh = stored.refresh
        try:
            issued = await self._obtain(refresh)
        except ProviderError:
            if refresh is None:
                raise
            log.warning("softsugar token refresh refused; signing for a new one")
            issued = await self._obtain(None)
        await self._redis.hset(
            self._key,
            mapping={
                "access": issued.access,
                "expires_ms": issued.expires_ms,
                "refresh": issued.refresh or "",
                "refresh_expires_ms": issued.refresh_expires_ms,
            },
        )
        lifetime_s = (max(issued.expires_ms, issued.refresh_expires_ms) - clock.time_ms()) / 1000
        await self._redis.pexpire(self._key, max(1, clock.real_ms(lifetime_s)))
        self._read = (time.monotonic(), issued)
        log.info("softsugar token obtained", by="refresh" if refresh else "sign")
        return issued.access

    async def _stored(self) -> Issued | None:
        """The token in Redis (kept as this replica's copy)."""
        self._read = None
        found = await self._redis.hgetall(self._key)
        if not found or not found.get(b"access"):
            return None
        issued = Issued(
            text(found[b"access"]),
            int(found.get(b"expires_ms", b"0")),
            text(found.get(b"refresh", b"")) or None,
            int(found.get(b"refresh_expires_ms", b"0")),
        )
        self._read = (time.monotonic(), issued)
        return issued
