"""Watches RTMP links for outages longer than the grace period and raises ``rtmp_stalled`` once each.

DISCONNECTED and RECONNECTING are normal for a few seconds; longer, the reconciler should act (refresh
the output URL, then restart). Every replica may run the watcher: marking a stall is a Lua script keyed by
the outage's start, so each outage is reported exactly once.
"""

from __future__ import annotations

from typing import Any

import structlog
from redis.exceptions import RedisError

from orchestrator import clock
from orchestrator.store.rooms import RoomStore
from orchestrator.tasks import being_cancelled, pause

log = structlog.get_logger(__name__)

STALLED_STATES = frozenset({"DISCONNECTED", "RECONNECTING"})


def stalled_links(links: dict[str, dict[str, Any]], now_ms: int, grace_s: float) -> list[tuple[str, int]]:
    """``(output url, since ms)`` of a room's links (:meth:`RoomStore.links`) down for longer than
    ``grace_s`` (pure)."""
    return [
        (url, int(link["since_ms"]))
        for url, link in links.items()
        if link["state"] in STALLED_STATES and now_ms - int(link["since_ms"]) > grace_s * 1000
    ]


class RtmpStallWatcher:
    def __init__(self, store: RoomStore, *, grace_s: float, interval_s: float | None = None) -> None:
        self._store = store
        self._grace_s = grace_s
        self._interval_s = interval_s if interval_s is not None else max(0.2, grace_s / 4)

    async def run(self) -> None:
        while True:
            try:
                await self.check_once()
            except RedisError as exc:
                if being_cancelled():
                    raise
                log.debug("rtmp watcher skipped a pass", error=str(exc))
            await pause(clock.real_s(self._interval_s))

    async def check_once(self) -> int:
        marked = 0
        now_ms = clock.time_ms()
        # Every room's links in a few pipelined round trips (one at a time, a thousand rooms were two
        # thousand round trips every few seconds: the largest share of an idle daemon's Redis traffic).
        links = await self._store.links(await self._store.rooms())
        for room_id, room_links in links.items():
            for url, since in stalled_links(room_links, now_ms, self._grace_s):
                if await self._store.mark_rtmp_stalled(room_id, url, since):
                    marked += 1
                    log.warning(
                        "rtmp link stalled",
                        room_id=room_id,
                        output_url=url,
                        down_s=round((now_ms - since) / 1000, 1),
                    )
        return marked
