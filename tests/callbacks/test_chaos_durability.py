"""What must keep holding: at 150 signed callbacks a second, through 3 SIGKILLs of the daemon and 2 SIGKILLs
and a SIGSTOP of Redis (AOF, fsync always), no acknowledged callback is lost and none is applied twice.

The sender behaves as a vendor does: it repeats a callback, with the same signed URL and body, until it
gets a 2xx. Each callback has its own event type (``CHAOS_<n>``), so the room's event stream tells exactly
which were applied and how often (a repeat the daemon already took is recorded as ``duplicate``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from orchestrator.providers.metastudio.callbacks import mss_a_url
from orchestrator.store import keys
from orchestrator.store.rooms import RoomStore
from tests.support.daemon import Daemon
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.slow

KEY = "chaos-key"
ROOM, JOB = "chaos-room", "chaos-job"
RATE, SECONDS = 150, 12


async def test_no_acknowledged_callback_lost_or_applied_twice(tmp_path: Path) -> None:
    redis_server = RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    redis_server.start()
    daemon = Daemon(
        env={
            "ORCH_REDIS__URL": redis_server.url,
            "ORCH_CALLBACKS__JOURNAL_PATH": str(tmp_path / "journal.jsonl"),
            "ORCH_CALLBACKS__WRITE_TIMEOUT_S": "0.3",
            "ORCH_SCHEDULING__ENABLED": "false",
        }
    )
    url = f"{daemon.base_url}/callbacks/metastudio/live-events"
    daemon._env["ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__PUBLIC_URL"] = url
    daemon._env["ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__KEYS"] = json.dumps([KEY])
    client = aioredis.Redis.from_url(redis_server.url)
    store = RoomStore(client)
    await store.register_room(ROOM)
    await store.set_current_job(ROOM, JOB)
    acknowledged: set[int] = set()
    base_ms = int(time.time() * 1000)
    daemon.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:

            async def send(n: int) -> None:
                signed = mss_a_url(url, KEY, base_ms + n)  # one millisecond each: one signature each
                body = {"event_type": f"CHAOS_{n}", "message": json.dumps({"room_id": ROOM, "job_id": JOB})}
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        async with http.post(
                            signed, json=body, timeout=aiohttp.ClientTimeout(total=3)
                        ) as resp:
                            if resp.status == 200:
                                acknowledged.add(n)
                                return
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    await asyncio.sleep(0.2)

            async def chaos() -> None:
                steps: list[tuple[float, str]] = [
                    (1.5, "kill daemon"),
                    (3.5, "kill redis"),
                    (5.0, "kill daemon"),
                    (6.5, "stop redis"),
                    (9.0, "kill redis"),
                    (10.5, "kill daemon"),
                ]
                started = time.monotonic()
                for at, what in steps:
                    await asyncio.sleep(max(0.0, started + at - time.monotonic()))
                    if what == "kill daemon":
                        assert daemon.proc is not None
                        daemon.proc.kill()
                        daemon.proc.wait()
                        await asyncio.sleep(0.3)
                        await asyncio.to_thread(daemon.start)
                    elif what == "kill redis":
                        os.kill(redis_server.pid, signal.SIGKILL)
                        await asyncio.sleep(0.8)
                        await asyncio.to_thread(redis_server.start)
                    else:
                        os.kill(redis_server.pid, signal.SIGSTOP)
                        await asyncio.sleep(1.5)
                        os.kill(redis_server.pid, signal.SIGCONT)

            senders = []
            chaos_task = asyncio.create_task(chaos())
            for n in range(RATE * SECONDS):
                senders.append(asyncio.create_task(send(n)))
                await asyncio.sleep(1 / RATE)
            await chaos_task
            await asyncio.gather(*senders)

        async def settled() -> Counter[str]:
            for _ in range(20):  # our own connection may have been closed by a Redis kill
                try:
                    entries = await client.xrange(keys.room_events(ROOM), count=100_000)
                    break
                except aioredis.ConnectionError:
                    await asyncio.sleep(0.2)
            return Counter(
                f"{e[b'event_type'].decode()}|{e[b'outcome'].decode()}"
                for _, e in entries
                if e.get(b"kind") == b"callback"
            )

        deadline = time.monotonic() + 30  # journaled callbacks are replayed once Redis answers
        while True:
            outcomes = await settled()
            applied = Counter(k.split("|")[0] for k in outcomes if not k.endswith("|duplicate"))
            if all(f"CHAOS_{n}" in applied for n in acknowledged) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
        await client.aclose()
        redis_server.close()
    counts: Counter[str] = Counter()
    for key, count in outcomes.items():
        event_type, outcome = key.split("|")
        if outcome != "duplicate":
            counts[event_type] += count
    lost = sorted(n for n in acknowledged if counts[f"CHAOS_{n}"] == 0)
    twice = sorted(t for t, c in counts.items() if c > 1)
    duplicates = sum(c for k, c in outcomes.items() if k.endswith("|duplicate"))
    print(
        f"{RATE * SECONDS} callbacks at {RATE}/s; acknowledged {len(acknowledged)}; applied {len(counts)}; "
        f"repeats recognised as duplicates {duplicates}; lost {len(lost)}; applied twice {len(twice)}"
    )
    assert len(acknowledged) == RATE * SECONDS  # the sender's retries got every one through
    assert lost == [] and twice == []
