"""Room leases: which replica does a live room's background work (reporting, reply pacing) right now.

A lease is a Redis string ``orch:{room}:lease`` holding the owner's replica id, with a TTL. The owner
renews it well before it expires; a replica that dies stops renewing, and another takes the room once the
TTL has run out -- within ``ttl`` seconds. Acquiring and renewing are one script (take it if free or
already ours, then extend), so two replicas can never both believe they hold it.

The owner also keeps a local deadline (when it last renewed + TTL, on the monotonic clock, minus a safety
margin): if it cannot reach Redis to renew, it stops acting on the room before another replica may start
(:meth:`RoomLeases.valid`).
"""

from __future__ import annotations

import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from orchestrator import clock
from orchestrator.store import keys, scripts
from orchestrator.store.redis import PackedCommands, chunks, execute_packed, packed, text

ACQUIRE_LUA = scripts.source("lease_acquire")

RELEASE_LUA = scripts.source("lease_release")

#: The share of the TTL a holder trusts its lease for without a renewal (clock drift, Redis latency) ...
SAFETY = 0.8
#: ... and, whatever the TTL, it stops trusting it this many real seconds before it runs out: a process can
#: stall (CPU, GC, a long callback) for a machine's time, not a policy's -- under the soak's compressed
#: clock a fifth of the TTL was a few real milliseconds, and two replicas reported the same room.
STALL_MARGIN_REAL_S = 0.5


class RoomLeases:
    def __init__(self, redis: aioredis.Redis, *, ttl_s: float, replica_id: str | None = None) -> None:
        self.replica_id = replica_id or uuid.uuid4().hex[:12]
        self.ttl_s = ttl_s
        self._redis = redis
        self._acquire = redis.register_script(ACQUIRE_LUA)
        self._release = redis.register_script(RELEASE_LUA)
        self._valid_until: dict[str, float] = {}
        #: Bumped whenever a room's lease is gained or lost here (not when one is merely renewed).
        self.generation = 0
        self._packed_for: tuple[str, str] = ("", "")  # (script sha, TTL ms) the renewals are packed for
        self._packed = PackedCommands(
            lambda room_id: packed(
                "EVALSHA",
                self._acquire.sha,
                1,
                keys.room_lease(room_id),
                self.replica_id,
                self._packed_for[1],
            )
        )

    async def acquire(self, room_ids: list[str]) -> set[str]:
        """Take or renew the leases of ``room_ids`` (one round trip); the rooms held now."""
        if not room_ids:
            return set()
        started = clock.monotonic()
        ttl_ms = str(clock.real_ms(self.ttl_s))
        results: list[Any] = []
        # In round trips of PIPELINE_CHUNK: parsing a thousand rooms' replies at once held the event loop
        # for tens of ms (the SoftSugar benchmark's reply latency tail, every lease renewal). Each room's
        # EVALSHA is packed once (execute_packed); a Redis that forgot the script gets it loaded again.
        for chunk in chunks(room_ids):
            answers = await execute_packed(self._redis, [self._renewal(r, ttl_ms) for r in chunk])
            if any(isinstance(a, NoScriptError) for a in answers):
                self._acquire.sha = await self._redis.script_load(self._acquire.script)
                self._packed.clear()
                answers = await execute_packed(self._redis, [self._renewal(r, ttl_ms) for r in chunk])
            for answer in answers:
                if isinstance(answer, Exception):
                    raise answer
            results += answers
        held = {room_id for room_id, ok in zip(room_ids, results, strict=True) if ok == 1}
        margin_s = max(self.ttl_s * (1 - SAFETY), STALL_MARGIN_REAL_S * clock.installed().speed)
        deadline = started + self.ttl_s - margin_s
        valid_until = self._valid_until
        for room_id in room_ids:
            if room_id in held:
                if valid_until.get(room_id, 0.0) <= started:
                    self.generation += 1
                valid_until[room_id] = deadline
            elif valid_until.pop(room_id, None) is not None:
                self.generation += 1
        return held

    def _renewal(self, room_id: str, ttl_ms: str) -> bytes:
        """The room's lease script call, packed once (for this script, replica and TTL)."""
        if self._packed_for != (self._acquire.sha, ttl_ms):
            self._packed.clear()
            self._packed_for = (self._acquire.sha, ttl_ms)
        return self._packed(room_id)

    def valid(self, room_id: str) -> bool:
        """Whether this replica may still act on the room (held, and renewed recently enough)."""
        return clock.monotonic() < self._valid_until.get(room_id, 0.0)

    def valid_until(self, room_id: str) -> float:
        """Until when (:func:`clock.monotonic`) this replica may act on the room; 0 if it holds no lease."""
        return self._valid_until.get(room_id, 0.0)

    async def release(self, room_id: str) -> None:
        if self._valid_until.pop(room_id, None) is not None:
            self.generation += 1
        await self._release(keys=[keys.room_lease(room_id)], args=[self.replica_id])

    async def owner(self, room_id: str) -> str | None:
        value = await self._redis.get(keys.room_lease(room_id))
        return None if value is None else text(value)
