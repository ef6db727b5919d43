"""Simulated time for the sandboxes: hours of live in seconds of test.

``speed`` simulated seconds pass per real second: ``sleep(s)`` waits ``s`` simulated seconds and
``elapsed_s()`` counts them. Timestamps the sandbox *shows* others (job times, callback ``hwTime``) stay on
the real wall clock, because the daemon checks them against its own clock (callback clock skew).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime


class SimClock:
    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._origin = time.monotonic()

    @staticmethod
    def wall() -> datetime:
        return datetime.now(UTC)

    @staticmethod
    def epoch_ms() -> int:
        return int(time.time() * 1000)

    def elapsed_s(self) -> float:
        """Simulated seconds since the clock was made."""
        return (time.monotonic() - self._origin) * self.speed

    def real_s(self, sim_s: float) -> float:
        return max(0.0, sim_s / self.speed)

    async def sleep(self, sim_s: float) -> None:
        await asyncio.sleep(self.real_s(sim_s))
