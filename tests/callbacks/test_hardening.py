"""What a hostile sender must not be able to grow or flood: metric series, per-room sets and counters, logs."""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit

import pytest
import structlog

from orchestrator.store import keys
from orchestrator.store.rooms import MAX_REPLIES_DONE
from tests.callbacks.conftest import Daemon

ROOM, JOB = "room-h", "job-h"


async def _managed(daemon: Daemon) -> None:
    await daemon.store.register_room(ROOM)
    await daemon.store.set_current_job(ROOM, JOB)


async def _metrics(daemon: Daemon) -> str:
    async with daemon.http.get(f"{daemon.admin}/metrics") as resp:
        return await resp.text()


async def test_junk_event_types_make_one_series_and_one_counter(daemon: Daemon) -> None:
    await _managed(daemon)
    base = int(time.time() * 1000)
    for i in range(300):
        status, body = await daemon.send(f"JUNK_{i}", {"room_id": ROOM, "job_id": JOB}, time_ms=base + i)
        assert (status, body["outcome"]) == (200, "recorded")
    series = [
        line
        for line in (await _metrics(daemon)).splitlines()
        if line.startswith("orch_callbacks_received_total{")
    ]
    assert len(series) == 1 and 'event_type="other"' in series[0] and series[0].endswith(" 300.0")
    counters = (await daemon.room(ROOM))["counters"]
    assert counters == {"other": 300}


async def test_unknown_reply_ids_do_not_grow_the_done_set(daemon: Daemon) -> None:
    await _managed(daemon)
    base = int(time.time() * 1000)
    sent = MAX_REPLIES_DONE + 200
    results = await asyncio.gather(
        *(
            daemon.send(
                "REPLY_COMMAND_FINISH",
                {"room_id": ROOM, "job_id": JOB, "reply_id": f"junk-{i}"},
                time_ms=base + i,
            )
            for i in range(sent)
        )
    )
    assert all(status == 200 for status, _ in results)
    redis = daemon.store._redis
    assert await redis.scard(keys.room_replies_done(ROOM)) == MAX_REPLIES_DONE


MALFORMED = [
    b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # TLS to a plain port
    b"POST /callbacks/metastudio/live-events HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Secret: \x00marker-secret-value\r\n\r\n",
]


async def _raw(url: str, payload: bytes) -> bytes:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(payload)
    await writer.drain()
    try:
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


async def test_malformed_requests_are_rate_limited_warnings_never_tracebacks(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    from orchestrator.web import server

    server.MALFORMED = server.MalformedRequestLog(per_minute=10)
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    with structlog.testing.capture_logs() as logs:
        answers = [await _raw(daemon.url, MALFORMED[i % len(MALFORMED)]) for i in range(200)]
    statuses = {a.split(b" ")[1] for a in answers if a}
    assert statuses <= {b"400", b"413", b"431"}, statuses
    assert all(b"marker-secret-value" not in a for a in answers)
    warnings = [e for e in logs if e["event"] == "malformed request refused"]
    assert 1 <= len(warnings) <= 10  # rate-limited: 200 requests, at most 10 lines this minute
    assert all(e["log_level"] == "warning" and "exc_info" not in e for e in warnings)
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
