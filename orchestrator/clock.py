"""The daemon's one clock: every reading of the time and every wait that a schedule or a policy decides.

In production it is the system clock. For the chaos soak (``benchmarks/soak``) the ``simulation`` settings
make it run ``speed`` times faster from a simulated start, the same in every process (each derives the
simulated time from the real one and a shared origin), and optionally ``skew_s`` ahead of or behind the
others on one replica -- so a simulated day, time zones and DST changes included, passes in minutes while
the scheduler, the reconciler, backoffs, leases, fences and their Redis TTLs, reply timeouts and the
sandbox all keep the same proportions.

Two kinds of duration, two units:

* **policy durations** (schedules, intervals, backoffs, graces, TTLs of leases and fences, timeouts of
  vendor calls and of replies, rate limits) are simulated seconds: read and wait through this module;
  a Redis TTL is given as :func:`real_ms` of them;
* **machine durations** (Redis socket and connect timeouts, the HTTP server's header and body timeouts,
  the group commit's deadline, the journal's replay) stay real seconds: they are about a network and a
  process, not a schedule, and compressing them would test the machine's speed, not the daemon.

Signatures that a third party checks against its own clock (DingTalk/Feishu alert signing) use the real
clock. Stream entry ids (``XADD *``) carry Redis's real milliseconds: :func:`of_real` turns them into
simulated time before they are compared with :func:`time`.

The process-wide clock is installed once by the entry point (as structlog's configuration is); tests that
compress time install their own and put the previous one back.
"""

from __future__ import annotations

import asyncio
import time as _time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime


class Clock:
    """Simulated time = ``start`` + (real time − ``real_origin``) × ``speed`` + ``skew_s``.

    With the defaults it is the system clock. ``monotonic`` runs at the same speed (only its differences
    mean anything)."""

    __slots__ = ("_real0", "_sim0", "skew_s", "speed")

    def __init__(
        self,
        *,
        speed: float = 1.0,
        start: datetime | None = None,
        real_origin: float | None = None,
        skew_s: float = 0.0,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._real0 = _time.time() if real_origin is None else real_origin
        self._sim0 = start.timestamp() if start is not None else self._real0
        self.skew_s = skew_s

    @property
    def simulated(self) -> bool:
        return self.speed != 1.0 or self.skew_s != 0.0 or self._sim0 != self._real0

    def time(self) -> float:
        """Simulated epoch seconds."""
        return self._sim0 + (_time.time() - self._real0) * self.speed + self.skew_s

    def of_real(self, real_epoch_s: float) -> float:
        """The simulated epoch seconds of a real instant (a Redis stream id, a file's mtime)."""
        return self._sim0 + (real_epoch_s - self._real0) * self.speed + self.skew_s

    def monotonic(self) -> float:
        return _time.monotonic() * self.speed

    def real_s(self, sim_s: float) -> float:
        """Real seconds that ``sim_s`` simulated seconds take."""
        return max(0.0, sim_s) / self.speed

    def to_real(self, sim: datetime) -> datetime:
        """The real instant at which the simulated instant ``sim`` comes (for a real-time timer)."""
        real = self._real0 + (sim.timestamp() - self._sim0 - self.skew_s) / self.speed
        return datetime.fromtimestamp(real, UTC)


_installed = Clock()


def installed() -> Clock:
    return _installed


def install(clock: Clock) -> Clock:
    """Make ``clock`` the process's clock; returns the one it replaces."""
    global _installed
    previous, _installed = _installed, clock
    return previous


@contextmanager
def using(clock: Clock) -> Iterator[Clock]:
    """``clock`` for the duration of the block (tests)."""
    previous = install(clock)
    try:
        yield clock
    finally:
        install(previous)


def time() -> float:
    """Now, in (simulated) epoch seconds."""
    return _installed.time()


def time_ms() -> int:
    return int(_installed.time() * 1000)


def now() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.fromtimestamp(_installed.time(), UTC)


def monotonic() -> float:
    return _installed.monotonic()


def of_real(real_epoch_s: float) -> float:
    return _installed.of_real(real_epoch_s)


def real_s(sim_s: float) -> float:
    return _installed.real_s(sim_s)


def real_ms(sim_s: float) -> int:
    """A Redis TTL (PX) for ``sim_s`` simulated seconds: at least 1 ms."""
    return max(1, round(_installed.real_s(sim_s) * 1000))


def to_real(sim: datetime) -> datetime:
    return _installed.to_real(sim)


async def sleep(sim_s: float) -> None:
    await asyncio.sleep(_installed.real_s(sim_s))


def timeout(sim_s: float) -> asyncio.Timeout:
    """``asyncio.timeout`` of ``sim_s`` simulated seconds."""
    return asyncio.timeout(_installed.real_s(sim_s))
