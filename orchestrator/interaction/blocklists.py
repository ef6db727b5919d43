"""The blocked viewers this replica's rooms must not answer, kept in memory (a reply is decided without
awaiting anything): the global list and the lists of the rooms it works on, from
:mod:`orchestrator.store.blocklists`.

Kept current like the policies: read again at once when a replica says a list changed
(``blocklist_changed``) and whenever the version in Redis differs, compared every :data:`REFRESH_S`.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from redis.exceptions import RedisError

from orchestrator import clock
from orchestrator.store.blocklists import Blocklists
from orchestrator.store.reactions import Reactions
from orchestrator.tasks import being_cancelled, checkpoint

log = structlog.get_logger(__name__)

REFRESH_S = 3.0


class BlockBook:
    def __init__(self, store: Blocklists) -> None:
        self.store = store
        self._version = -1
        self._everywhere: dict[str, int] = {}
        self._rooms: dict[str, dict[str, int]] = {}
        self._wanted: set[str] = set()

    def blocked(self, room_id: str, user_id: str) -> bool:
        """Whether the viewer is blocked in the room (or everywhere) now."""
        if not user_id or (not self._everywhere and not self._rooms):
            return False
        until = self._everywhere.get(user_id)
        if until is None:
            until = self._rooms.get(room_id, {}).get(user_id)
        return until is not None and (until == 0 or clock.time_ms() < until)

    async def want(self, room_ids: set[str]) -> None:
        """Hold these rooms' lists: a room new here has its list read at once (only its own: the version
        this replica holds stays, so a change made meanwhile to another list is still seen by the next
        :meth:`refresh`). Raises RedisError."""
        new = sorted(room_ids - self._wanted)
        self._wanted = set(room_ids)
        for gone in set(self._rooms) - room_ids:
            del self._rooms[gone]
        if self._version < 0:  # nothing read yet: the global list too
            await self.reload()
        elif new:
            _, _, rooms = await self.store.snapshot(new)
            self._rooms.update(rooms)

    async def reload(self) -> None:
        """Read the global list and the wanted rooms' lists again. Raises RedisError."""
        version, everywhere, rooms = await self.store.snapshot(sorted(self._wanted))
        self._version, self._everywhere, self._rooms = version, everywhere, rooms

    async def refresh(self) -> None:
        """Read again if any list changed. Raises RedisError."""
        if await self.store.version() != self._version:
            await self.reload()

    async def follow(self, reactions: Reactions) -> None:
        """Keep the lists current until cancelled."""
        async with reactions.subscribe() as queue:
            while True:
                checkpoint()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REFRESH_S):
                        while (await queue.get()).get("kind") != "blocklist_changed":
                            pass
                try:
                    await self.refresh()
                except RedisError as exc:
                    if being_cancelled():
                        raise
                    log.warning("cannot refresh blocklists", error=str(exc))
