"""Scheduler and reconciler costs: 10,000 schedules, boundary lateness, reconciling 1,000 rooms.

1. **Startup**: 10,000 managed rooms in Redis (8,000 daily cron windows in assorted zones, 2,000 one-off
   windows whose boundaries fall in the next seconds); time for the scheduler to build its in-memory
   APScheduler jobs from Redis, and the process's RSS before and after.
2. **Boundary lateness**: how late the 2,000 boundary wake-ups run (p50/p99), against a baseline measured
   in the same run and the same loop: plain ``loop.call_at`` timers due at the same instants.
3. **Reconcile CPU**: 1,000 rooms (300 live with a running job to poll, 700 off), one pass every 15 s
   (the default) against the MetaStudio sandbox in its own process; our process's CPU time per pass as a
   share of one core at that pace.

Targets (issue 5): boundary lateness p99 ≤ 50 ms; reconcile CPU ≤ 5 % of one core.

    python benchmarks/scheduler/bench.py [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from orchestrator.providers.registry import ProviderDeps, Providers  # noqa: E402
from orchestrator.scheduling.reconciler import Reconciler  # noqa: E402
from orchestrator.scheduling.rooms import ManagedRoom, RoomConfigs  # noqa: E402
from orchestrator.scheduling.scheduler import BoundaryScheduler  # noqa: E402
from orchestrator.settings import load_settings  # noqa: E402
from orchestrator.store.rooms import RoomStore  # noqa: E402
from tests.support.redis_server import RedisServer, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
ZONES = ["Asia/Shanghai", "UTC", "America/New_York", "Europe/Berlin"]


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def room(i: int, schedule: dict[str, Any], paused: bool = False) -> ManagedRoom:
    return ManagedRoom.model_validate(
        {
            "room_id": f"bench-{i:05d}",
            "template": {"output_urls": [f"rtmp://push.example/live/{i}"]},
            "schedule": schedule,
            "paused": paused,
        }
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 2)


async def put_all(redis: aioredis.Redis, rooms: list[ManagedRoom]) -> None:
    from orchestrator.store import keys

    async with redis.pipeline(transaction=False) as pipe:
        for r in rooms:
            pipe.set(keys.room_config(r.room_id), r.stored())
            pipe.hset(keys.room_state(r.room_id), "managed", "1")
            pipe.sadd(keys.rooms_index(), r.room_id)
        await pipe.execute()


class _NoVendor:
    """Paused rooms never reach the vendor; the lateness phase measures wake-ups, not vendor calls."""


async def startup_and_lateness(redis_url: str, freeze: bool = True) -> dict[str, Any]:
    redis = aioredis.Redis.from_url(redis_url)
    await redis.flushall()
    settings = load_settings(None, redis={"url": redis_url})
    store = RoomStore(redis)
    configs = RoomConfigs(redis, store)
    now = datetime.now(UTC)
    # Due after start-up has finished (it takes seconds for 10,000 schedules), 8 s apart in all.
    soon = [now + timedelta(seconds=15 + 8 * i / 2000) for i in range(2000)]
    rooms = [
        room(
            i,
            {
                "timezone": ZONES[i % 4],
                "windows": [{"kind": "cron", "start": f"{i % 60} {i % 24} * * *", "duration": "PT2H"}],
            },
            paused=True,
        )
        for i in range(8000)
    ]
    rooms += [
        room(
            8000 + i,
            {
                "timezone": "UTC",
                "windows": [
                    {"kind": "once", "start": s.isoformat(), "end": (s + timedelta(hours=1)).isoformat()}
                ],
            },
            paused=True,
        )
        for i, s in enumerate(soon)
    ]
    await put_all(redis, rooms)

    async def no_alert(*_: Any) -> None:
        return None

    class NoVendor:
        """A paused room's provider: looked up, never called (paused rooms make no vendor calls)."""

        def __getattr__(self, name: str) -> Any:
            raise RuntimeError(f"paused rooms make no vendor calls ({name})")

    def no_client(_: ManagedRoom) -> Any:
        return NoVendor()

    reconciler = Reconciler(redis, configs, store, no_client, no_alert, settings)
    scheduler = BoundaryScheduler(reconciler, configs, None, interval_s=15)
    rss_before = rss_mb()
    started = time.perf_counter()
    await scheduler.start(periodic=False)
    if freeze:
        gc.freeze()  # what the daemon does after start-up (orchestrator/app.py)
    startup_s = time.perf_counter() - started
    rss_after = rss_mb()

    assert (soon[0] - datetime.now(UTC)).total_seconds() > 1, "start-up ran into the measured boundaries"
    loop = asyncio.get_running_loop()
    baseline: list[float] = []
    for instant in soon:  # the same instants, as bare loop timers: the loop's own lateness
        due = instant.timestamp()
        loop.call_at(
            loop.time() + (due - time.time()), lambda d=due: baseline.append((time.time() - d) * 1000)
        )
    await asyncio.sleep((soon[-1] - datetime.now(UTC)).total_seconds() + 1.5)
    lateness = [x for x in scheduler.lateness_ms]
    await scheduler.aclose()
    await redis.aclose()
    return {
        "schedules": len(rooms),
        "startup_s": round(startup_s, 2),
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_after": round(rss_after, 1),
        "boundaries_fired": len(lateness),
        "lateness_ms": {
            "p50": pct(lateness, 0.5),
            "p99": pct(lateness, 0.99),
            "max": round(max(lateness), 2),
        },
        "baseline_loop_timer_lateness_ms": {"p50": pct(baseline, 0.5), "p99": pct(baseline, 0.99)},
    }


async def reconcile_cpu(redis_url: str, passes: int) -> dict[str, Any]:
    port = free_port()
    sandbox = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "sandbox",
            "metastudio",
            "--port",
            str(port),
            "--ak",
            "BAK",
            "--sk",
            "bsk",
            "--project-id",
            "bproj",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    assert sandbox.stdout is not None
    sandbox.stdout.readline()
    redis = aioredis.Redis.from_url(redis_url)
    await redis.flushall()
    settings = load_settings(
        None,
        redis={"url": redis_url},
        metastudio={
            "endpoint": f"http://127.0.0.1:{port}",
            "ak": "BAK",
            "sk": "bsk",
            "project_id": "bproj",
            "callback_profiles": {
                "default": {"public_url": f"http://127.0.0.1:{free_port()}/cb", "auth_type": "NONE"}
            },
        },
    )
    store = RoomStore(redis)
    configs = RoomConfigs(redis, store)
    async with aiohttp.ClientSession() as http:
        # The sandbox has one seeded room ("demo-room"); live rooms reuse it under their own ids via its API.
        for i in range(300):
            async with http.post(
                f"http://127.0.0.1:{port}/_sandbox/rooms",
                json={
                    "room_id": f"bench-{i:05d}",
                    "scene_scripts": [
                        {
                            "script_name": "s",
                            "shoot_scripts": [{"sequence_no": 1, "text_config": {"text": "x" * 400}}],
                        }
                    ],
                },
            ) as resp:
                assert resp.status == 200
        live = [room(i, {"timezone": "UTC", "windows": [{"kind": "always"}]}) for i in range(300)]
        off = [
            room(
                300 + i,
                {
                    "timezone": ZONES[i % 4],
                    "windows": [{"kind": "cron", "start": "0 3 * * *", "duration": "PT1M"}],
                },
            )
            for i in range(700)
        ]
        await put_all(redis, live + off)

        async def no_alert(*_: Any) -> None:
            return None

        # The daemon's own composition (orchestrator/app.py): the room's provider's live jobs.
        providers = Providers(ProviderDeps(http, settings, redis, no_alert))
        reconciler = Reconciler(
            redis, configs, store, lambda room: providers.for_room(room).jobs, no_alert, settings
        )
        await reconciler.reconcile_all()  # first pass: starts the 300 live rooms
        await reconciler.reconcile_all()
        cpu: list[float] = []
        wall: list[float] = []
        for _ in range(passes):
            c0, w0 = time.process_time(), time.perf_counter()
            await reconciler.reconcile_all()
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
    sandbox.terminate()
    sandbox.wait(timeout=30)
    await redis.aclose()
    per_pass = statistics.median(cpu)
    return {
        "rooms": 1000,
        "live_rooms_polled": 300,
        "passes_measured": passes,
        "cpu_s_per_pass_median": round(per_pass, 4),
        "wall_s_per_pass_median": round(statistics.median(wall), 3),
        "interval_s": 15,
        "share_of_one_core_pct": round(100 * per_pass / 15, 2),
        "vendor_calls_per_pass": round(reconciler.vendor_calls / (passes + 2)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    server = RedisServer()
    server.start()
    try:
        first = asyncio.run(startup_and_lateness(server.url))
        second = asyncio.run(reconcile_cpu(server.url, args.passes))
    finally:
        server.close()
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "startup_and_lateness": first,
        "reconcile": second,
        "targets": {
            "lateness_p99<=50ms": first["lateness_ms"]["p99"] <= 50,
            "reconcile_cpu<=5pct": second["share_of_one_core_pct"] <= 5,
        },
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
