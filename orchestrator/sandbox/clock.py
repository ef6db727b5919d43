"""Simulated time for the sandboxes: hours of live in seconds of test.

``speed`` simulated seconds pass per real second: ``sleep(s)`` waits ``s`` simulated seconds and
``elapsed_s()`` counts them. Timestamps the sandbox *shows* others (job times, callback ``hwTime``, the
X-Sdk-Date it checks) come from the process's clock (:mod:`orchestrator.clock`), because the daemon checks
them against its own: the system clock in tests that only speed the sandbox up, the compressed clock every
process shares in the soak (where the sandbox's ``speed`` is that clock's).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from orchestrator import clock


class SimClock:
    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._origin = time.monotonic()

    @staticmethod
    def wall() -> datetime:
        return clock.now()

    @staticmethod
    def epoch_ms() -> int:
        return clock.time_ms()

    def elapsed_s(self) -> float:
        """Simulated seconds since the clock was made."""
        return (time.monotonic() - self._origin) * self.speed

    def real_s(self, sim_s: float) -> float:
        return max(0.0, sim_s / self.speed)

    async def sleep(self, sim_s: float) -> None:
        await asyncio.sleep(self.real_s(sim_s))
