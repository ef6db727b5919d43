"""A slow-client flood on the public listener: the daemon keeps its file descriptors and keeps serving.

Before: ~1,100 clients trickling a byte every few seconds held all 1,024 file descriptors; every legitimate
callback failed and the daemon's own Redis connections hit "Too many open files". Now each listener caps
its connections (in total, below the fd limit with room for Redis and the vendor, and per client address)
and closes a connection that has not sent its headers within ``server.header_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from orchestrator.providers.metastudio.callbacks import mss_a_url
from orchestrator.store.rooms import RoomStore
from tests.support.daemon import Daemon
from tests.support.redis_server import free_port

pytestmark = pytest.mark.slow

KEY = "flood-key"
ROOM, JOB = "flood-room", "flood-job"
NOFILE = 1024
SLOW_CLIENTS = 1100
SOURCES = [f"127.0.0.{i}" for i in range(10, 32)]  # 22 addresses, 50 slow clients each
FLOOD_S = 8.0


async def _slow_client(source: str, port: int, until: float, stats: dict[str, int]) -> None:
    """Open, send part of a request line, then a byte every 1.5 s; reconnect when closed."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except OSError:
            stats["connect_failed"] += 1
            await asyncio.sleep(0.5)
            continue
        stats["opened"] += 1
        try:
            writer.write(b"POST /callbacks/metastudio/live-events HTTP/1.1\r\nHost: x\r\n")
            while time.monotonic() < until:
                await writer.drain()
                await asyncio.sleep(1.5)
                if reader.at_eof():
                    break
                writer.write(b"X")
        except (ConnectionError, OSError):
            pass
        finally:
            stats["closed"] += 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_signed_callbacks_succeed_during_a_slow_client_flood(redis_url: str, tmp_path: Path) -> None:
    public_port = free_port()
    public_url = f"http://127.0.0.1:{public_port}/callbacks/metastudio/live-events"
    daemon = Daemon(
        env={
            "ORCH_REDIS__URL": redis_url,
            "ORCH_SERVER__PUBLIC_PORT": str(public_port),
            "ORCH_SERVER__HEADER_TIMEOUT_S": "2",
            "ORCH_CALLBACKS__JOURNAL_PATH": str(tmp_path / "journal.jsonl"),
            "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__PUBLIC_URL": public_url,
            "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__KEYS": json.dumps([KEY]),
            "ORCH_SCHEDULING__ENABLED": "false",
        },
        nofile=NOFILE,
    )
    redis = aioredis.Redis.from_url(redis_url)
    store = RoomStore(redis)
    await store.register_room(ROOM)
    await store.set_current_job(ROOM, JOB)
    with daemon:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        stats = {"opened": 0, "closed": 0, "connect_failed": 0}
        latencies: list[float] = []
        statuses: list[int] = []
        fds: list[int] = []
        connector = aiohttp.TCPConnector(limit=2)  # a vendor's keep-alive pool
        async with aiohttp.ClientSession(connector=connector) as http:

            async def callback(seq: int) -> None:
                body = {
                    "event_type": "SHOOT_SCRIPT_SWITCH",
                    "message": json.dumps(
                        {"room_id": ROOM, "job_id": JOB, "shoot_script_sequence_no": str(seq)}
                    ),
                }
                started = time.monotonic()
                url = mss_a_url(
                    public_url, KEY, int(time.time() * 1000) + seq
                )  # distinct ms: distinct signatures
                try:
                    async with http.post(url, json=body, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                        statuses.append(resp.status)
                except (aiohttp.ClientError, TimeoutError):
                    statuses.append(0)
                latencies.append(time.monotonic() - started)

            await callback(0)  # the pool's connection exists before the flood, as a vendor's would
            until = time.monotonic() + FLOOD_S
            flood = [
                asyncio.create_task(_slow_client(SOURCES[i % len(SOURCES)], public_port, until, stats))
                for i in range(SLOW_CLIENTS)
            ]
            await asyncio.sleep(1.0)  # let the flood fill the listener
            seq = 1
            while time.monotonic() < until - 0.5:
                await callback(seq)
                fds.append(_fds(pid))
                seq += 1
                await asyncio.sleep(0.02)
            await asyncio.gather(*flood)
        output = daemon.output()
    await redis.aclose()
    during = sorted(latencies[1:])
    p99 = during[int(len(during) * 0.99) - 1]
    print(
        f"{len(during)} signed callbacks during a flood of {SLOW_CLIENTS} slow clients "
        f"({stats['opened']} connections opened): all {set(statuses)}; latency p50 "
        f"{statistics.median(during) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; daemon fds max {max(fds)} of {NOFILE}"
    )
    assert statuses and set(statuses) == {200}, statuses
    assert max(fds) < NOFILE - 100, max(fds)  # headroom for Redis and the vendor, always
    assert stats["opened"] > SLOW_CLIENTS  # the flood ran: connections were closed and reopened
    assert "Too many open files" not in output
