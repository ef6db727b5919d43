"""Key names that changed, renamed once at start so that an upgrade keeps what an older version stored.

Vendor account keys gained a hash tag (``orch:vendor:{softsugar:app}:sessions``, was
``orch:vendor:softsugar:app:sessions``) when Redis Cluster support came: a session and its answer backend
are written in one transaction, which a cluster runs only within one slot. A Redis Cluster never held the
old names (the daemon did not run on one), so the rename runs on a standalone or Sentinel Redis only.
"""

from __future__ import annotations

import redis.asyncio as aioredis
import structlog

from orchestrator.store import keys
from orchestrator.store.redis import is_cluster, text

log = structlog.get_logger(__name__)

#: The vendor keys worth keeping across the rename (the token lock is held seconds at most).
_SUFFIXES = ("token", "sessions", "unknown-sessions", "session-answers")

#: Set once the rename has run to the end on this Redis.
_DONE = keys.migration_done("vendor-hash-tags")


async def rename_legacy_keys(redis: aioredis.Redis) -> int:
    """Rename every vendor key still under its old name (``RENAMENX``: a key already under its new name
    wins); how many were renamed. Raises RedisError."""
    if is_cluster(redis) or await redis.exists(_DONE):
        return 0  # the scan walks the whole keyspace: once per Redis, not at every start
    renamed = 0
    async for raw in redis.scan_iter(match=f"{keys.PREFIX}:vendor:*", count=1000):
        old = text(raw)
        if "{" in old:
            continue
        parts = old.split(":")  # orch, vendor, provider, account..., suffix
        if len(parts) < 5 or parts[-1] not in _SUFFIXES:
            continue
        provider, account, suffix = parts[2], ":".join(parts[3:-1]), parts[-1]
        new = f"{keys.PREFIX}:vendor:{{{provider}:{account}}}:{suffix}"
        if await redis.renamenx(old, new):
            renamed += 1
            log.info("vendor key renamed", old=old, new=new)
    await redis.set(_DONE, "1")
    return renamed
