"""/metrics for a room-level view: per managed room (and only those), the reconciler's actions, vendor calls
and errors by provider/operation/code, HTTP requests by route -- read from a daemon driving a real room on
the MetaStudio sandbox, over a real Redis."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from orchestrator.appkeys import REDIS
from orchestrator.metrics import (
    MAX_CODES,
    ROOM_READING_MAX_AGE_S,
    Metrics,
    RoomMetrics,
    RoomReading,
    observe_all,
)
from orchestrator.providers.metastudio.client import operation
from orchestrator.sandbox.metastudio.app import Fault
from tests.scheduling.conftest import ROOM, Daemon, daemon_for, managed_room, until

SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")


async def _metrics(daemon: Daemon) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with daemon.http.get(f"{daemon.url}/metrics") as resp:
        text = await resp.text()
    found = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            found[(match.group(1), labels)] = float(match.group(3))
    return found


def _value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_a_live_room_its_actions_and_its_vendor_calls_are_in_the_metrics(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    box, url = sandbox
    async with daemon_for(make_settings, tmp_path, url) as daemon:
        await daemon.configs.put(managed_room([{"kind": "always"}]))

        async def live() -> bool:
            samples = await _metrics(daemon)
            return _value(samples, "orch_room_live", room=ROOM, provider="metastudio") == 1.0

        await until(live, 20)
        samples = await _metrics(daemon)
        assert _value(samples, "orch_room_desired_live", room=ROOM, provider="metastudio") == 1.0
        assert _value(samples, "orch_room_paused", room=ROOM, provider="metastudio") == 0.0
        assert _value(samples, "orch_room_reply_queue_depth", room=ROOM, provider="metastudio") == 0.0
        assert (
            _value(samples, "orch_reconciler_actions_total", room=ROOM, action="start", outcome="done") == 1.0
        )
        start = "POST /smart-live-rooms/{}/smart-live-jobs"
        assert (
            _value(samples, "orch_vendor_calls_total", provider="metastudio", operation=start, code="ok")
            == 1.0
        )
        # The vendor refusing: counted under its code.
        box.faults.append(Fault("error", count=1, status=400, code="MSS.00000003", method="GET"))
        status, _ = await daemon.api("POST", f"/api/rooms/{ROOM}/pause")
        assert status == 200

        async def refused() -> bool:
            return any(
                name == "orch_vendor_calls_total" and ("code", "MSS.00000003") in labels
                for (name, labels) in await _metrics(daemon)
            )

        await until(refused, 10)
        # HTTP by route: the registered path, never the room id; anything unrouted is one series.
        for junk in ("/nope", "/api/nothing/here", "/x" * 5):
            async with daemon.http.get(f"{daemon.url}{junk}") as resp:
                assert resp.status == 404
        samples = await _metrics(daemon)
        assert (
            _value(
                samples,
                "orch_http_requests_total",
                route="/api/rooms/{room_id}/pause",
                method="POST",
                status="200",
            )
            == 1.0
        )
        assert (
            _value(samples, "orch_http_requests_total", route="unmatched", method="GET", status="404") == 3.0
        )
        routes = {dict(labels).get("route") for name, labels in samples if name == "orch_http_requests_total"}
        assert not any(ROOM in (r or "") for r in routes)
        # Only managed rooms: one that is not never gets a series.
        status, _ = await daemon.api("GET", "/api/rooms/not-managed-here")
        assert status == 404
        rooms = {dict(labels).get("room") for name, labels in samples if name.startswith("orch_room_")}
        assert rooms <= {ROOM, None}
        # A deleted room's state series go with it at the next reading.
        status, _ = await daemon.api("DELETE", f"/api/rooms/{ROOM}")
        assert status == 200

        async def gone() -> bool:
            return _value(await _metrics(daemon), "orch_room_live", room=ROOM, provider="metastudio") is None

        await until(gone, 15)
        assert _value(await _metrics(daemon), "orch_redis_up") == 1.0  # the watcher's check, this while


async def test_the_rooms_are_read_when_scraped_and_one_reading_serves_the_scrapes_of_a_few_seconds(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    """A thousand rooms' reading is ~40 ms of the loop: paid per scrape (at most every 5 s), not on a
    timer in a daemon nobody scrapes. (ZCOUNT, the restarts of the last hour, is asked by the reading
    alone.)"""
    _, url = sandbox
    async with daemon_for(make_settings, tmp_path, url) as daemon:
        redis = daemon.app[REDIS]
        await redis.config_resetstat()
        await daemon.configs.put(managed_room([{"kind": "always"}]))
        await asyncio.sleep(ROOM_READING_MAX_AGE_S + 0.5)  # a timer would have read the room by now
        assert "cmdstat_zcount" not in await redis.info("commandstats")
        samples = await _metrics(daemon)  # read now: the room is there at once
        assert _value(samples, "orch_room_desired_live", room=ROOM, provider="metastudio") == 1.0
        assert _value(samples, "orch_room_metrics_age_seconds") < 1.0
        reads = (await redis.info("commandstats"))["cmdstat_zcount"]["calls"]
        await asyncio.gather(*(_metrics(daemon) for _ in range(5)))
        assert (await redis.info("commandstats"))["cmdstat_zcount"]["calls"] == reads


async def test_the_event_loops_lag_is_measured(make_settings: Any, tmp_path: Path, sandbox: Any) -> None:
    """Work holding the loop shows as lag (``orch_event_loop_lag_seconds``), once per hold."""
    _, url = sandbox

    def held_long(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float:
        count = _value(samples, "orch_event_loop_lag_seconds_count")
        within = _value(samples, "orch_event_loop_lag_seconds_bucket", le="0.25")
        assert count is not None and within is not None
        return count - within

    async with daemon_for(make_settings, tmp_path, url) as daemon:
        await asyncio.sleep(0.5)
        before = await _metrics(daemon)
        assert (_value(before, "orch_event_loop_lag_seconds_count") or 0) >= 3  # every 0.1 s
        time.sleep(0.4)  # a handler holding the loop
        await asyncio.sleep(0.25)
        assert held_long(await _metrics(daemon)) == held_long(before) + 1


@given(
    st.lists(st.one_of(st.sampled_from([0.0, 0.05, 0.1, 0.3, 30.0, 31.0]), st.floats(0, 100)), max_size=50)
)
def test_property_observing_all_at_once_is_observing_each(amounts: list[float]) -> None:
    """A report's latencies observed in one go (``observe_all``) expose exactly what observing them one by
    one does -- at the bucket bounds too."""
    each, together = CollectorRegistry(), CollectorRegistry()
    for registry in (each, together):
        Histogram("h_seconds", "h", buckets=(0.05, 0.1, 0.3, 30), registry=registry)
    one = each._names_to_collectors["h_seconds"]
    for amount in amounts:
        one.observe(amount)  # type: ignore[attr-defined]
    observe_all(together._names_to_collectors["h_seconds"], amounts)  # type: ignore[arg-type]

    def exposed(registry: CollectorRegistry) -> list[bytes]:
        return [line for line in generate_latest(registry).splitlines() if b"_created" not in line]

    assert exposed(together) == exposed(each)


def test_vendor_codes_and_operations_are_bounded() -> None:
    metrics = Metrics()
    for i in range(MAX_CODES + 50):
        metrics.vendor_call("metastudio", "GET /x", f"CODE.{i}", 0.01)
    codes = {
        line.split('code="')[1].split('"')[0]
        for line in metrics.exposition().decode().splitlines()
        if line.startswith("orch_vendor_calls_total{")
    }
    assert len(codes) == MAX_CODES + 1 and "other" in codes
    assert operation("POST", "/v1/0123456789abcdef/smart-live-rooms/room-1/smart-live-jobs/9f8e/command") == (
        "POST /smart-live-rooms/{}/smart-live-jobs/{}/command"
    )
    assert operation("GET", "/v1/p/smart-live-jobs") == "GET /smart-live-jobs"
    assert operation("POST", "/report/a1b2c3/live-events") == "POST /report/{}/live-events"


def _readings(count: int) -> dict[str, RoomReading]:
    odd = 'we\\ird "room"\nid'  # label escaping: backslash, quote, newline
    rooms = {
        f"room-{i:04d}": RoomReading(
            provider="softsugar" if i % 2 else "metastudio",
            live=bool(i % 3),
            desired_live=True,
            paused=i % 7 == 0,
            viewers=None if i % 5 == 0 else i * 10,
            reply_queue=i % 4,
            restarts_last_hour=i % 2,
            report_lag_s=i / 3,
            open_alerts=["room_down", "circuit_open"] if i % 11 == 0 else [],
            audience={"comment": i, "like": 2 * i} if i % 2 else {},
            replies_inserted=i,
        )
        for i in range(count)
    }
    rooms[odd] = RoomReading("metastudio", True, False, False, open_alerts=[odd], audience={odd: 1})
    return rooms


def test_the_rooms_fast_rendering_is_prometheus_clients_byte_for_byte() -> None:
    """``RoomMetrics.render`` (what /metrics serves) equals prometheus_client's rendering of the same
    families (``collect``): names, HELP/TYPE, label order and escaping, numbers -- and is several times
    faster (a thousand rooms' scrape held the event loop ~45 ms)."""
    rooms = RoomMetrics()
    rooms.update(_readings(1000))
    rooms.read_at = 0.0  # age NaN in both: the clock does not move between the two renderings
    registry = CollectorRegistry()
    registry.register(rooms)
    assert rooms.render().encode() == generate_latest(registry)
    started = time.perf_counter()
    generate_latest(registry)
    reference_s = time.perf_counter() - started
    started = time.perf_counter()
    rooms.render()
    assert time.perf_counter() - started < reference_s / 2
    empty = RoomMetrics()
    empty_registry = CollectorRegistry()
    empty_registry.register(empty)
    assert empty.render().encode() == generate_latest(empty_registry)
