"""The daemon's one clock: simulated time, its conversions, and processes that agree on it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator import clock
from orchestrator.cli import install_simulated_clock
from orchestrator.settings import ConfigError, load_settings

START = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)


def test_default_clock_is_the_system_clock() -> None:
    assert abs(clock.time() - time.time()) < 0.01
    assert not clock.installed().simulated
    assert clock.real_s(3.0) == 3.0
    assert clock.real_ms(0.0001) == 1  # a Redis TTL is never 0


def test_compressed_clock_maps_both_ways() -> None:
    origin = time.time()
    sim = clock.Clock(speed=100, start=START, real_origin=origin)
    assert abs(sim.time() - START.timestamp()) < 5  # 100x: a few ms of real time since origin
    assert sim.real_s(100) == pytest.approx(1.0)
    later = START + timedelta(hours=1)
    assert sim.to_real(later).timestamp() == pytest.approx(origin + 36.0)
    assert sim.of_real(origin + 36.0) == pytest.approx(later.timestamp())


def test_two_processes_with_the_same_origin_agree_and_skew_shifts_one() -> None:
    origin = time.time() - 10
    a = clock.Clock(speed=144, start=START, real_origin=origin)
    b = clock.Clock(speed=144, start=START, real_origin=origin, skew_s=-30)
    assert a.time() - b.time() == pytest.approx(30, abs=1)
    assert a.time() == pytest.approx(START.timestamp() + 1440, abs=5)


async def test_sleep_and_timeout_are_in_simulated_seconds() -> None:
    with clock.using(clock.Clock(speed=200)):
        started = time.monotonic()
        await clock.sleep(20)  # 0.1 s real
        assert 0.08 < time.monotonic() - started < 0.5
        with pytest.raises(TimeoutError):
            async with clock.timeout(10):  # 0.05 s real
                await asyncio.sleep(1)
    assert not clock.installed().simulated  # put back


def test_simulation_settings_are_validated_and_installed() -> None:
    with pytest.raises(ConfigError, match="start and real_origin go together"):
        load_settings(None, simulation={"start": "2026-03-28T12:00:00Z"})
    with pytest.raises(ConfigError, match=r"simulation\.speed"):
        load_settings(None, simulation={"speed": 0.5})
    settings = load_settings(
        None, simulation={"speed": 60, "start": START.isoformat(), "real_origin": time.time()}
    )
    previous = clock.installed()
    try:
        install_simulated_clock(settings)
        assert clock.installed().speed == 60
        assert abs(clock.now() - START) < timedelta(minutes=1)
    finally:
        clock.install(previous)


async def test_a_lease_is_trusted_half_a_real_second_less_than_its_ttl_under_any_clock(
    redis_client: object,
) -> None:
    """Soak finding: a holder trusted its lease for 0.8 of the TTL -- at 150x a few real milliseconds short of
    its expiry, less than a stalled event loop, and two replicas reported the same room. The margin is now
    at least half a real second (a stall is the machine's, not the policy's)."""
    from orchestrator.store.leases import RoomLeases

    with clock.using(clock.Clock(speed=150)):
        leases = RoomLeases(redis_client, ttl_s=180.0, replica_id="me")  # type: ignore[arg-type]
        assert await leases.acquire(["room-a"]) == {"room-a"}
        started = time.monotonic()
        while leases.valid("room-a"):
            await asyncio.sleep(0.01)
        trusted = time.monotonic() - started  # TTL 1.2 s real; a fifth of it would be 0.24 s
        assert 0.6 < trusted < 0.75
    with pytest.raises(ConfigError, match=r"interaction\.lease_ttl_s"):
        load_settings(None, interaction={"lease_ttl_s": 0.5})
