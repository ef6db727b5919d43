"""Timed and idle messages (issue 16, point 3): as tables over the pure timetable -- cron in the room's time
zone across DST, every N minutes with jitter, missed times said once, lines in turn, idle waits drawn at
random and held back while replies wait -- then end to end through a daemon, with the next ones due shown
to operators."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from orchestrator.appkeys import AUDIENCE
from orchestrator.interaction.policy import IdleLines, PolicyConfig, TimedMessage
from orchestrator.interaction.timed import Timetable
from tests.interaction.test_room_policies import _said
from tests.scheduling.conftest import until
from tests.softsugar.test_e2e import _true, softsugar_daemon, softsugar_room

NY = ZoneInfo("America/New_York")
SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("cron", "tz", "after", "first", "second"),
    [
        # 20:00 in Shanghai is 12:00 UTC, every day.
        ("0 20 * * *", SHANGHAI, "2026-12-07T12:00", "2026-12-08T12:00", "2026-12-09T12:00"),
        # New York, spring forward (2026-03-08): 02:30 does not exist -- said after the gap, once.
        ("30 2 * * *", NY, "2026-03-07T12:00", "2026-03-08T07:30", "2026-03-09T06:30"),
        # Fall back (2026-11-01): 01:30 happens twice -- said at the first, once.
        ("30 1 * * *", NY, "2026-10-31T12:00", "2026-11-01T05:30", "2026-11-02T06:30"),
        # Every hour on the hour, local, during the fall-back night: 01:00 came at 05:00 UTC (EDT); its
        # repeat (01:00 EST) is not said again -- next is 02:00 EST, then 03:00 EST.
        ("0 * * * *", NY, "2026-11-01T05:30", "2026-11-01T07:00", "2026-11-01T08:00"),
    ],
)
def test_cron_messages_in_the_rooms_time_zone_across_dst(
    cron: str, tz: ZoneInfo, after: str, first: str, second: str
) -> None:
    message = TimedMessage(name="promo", lines=["A", "B"], cron=cron)
    table = Timetable()
    table.plan([message], tz, at(after))
    assert table.next_due() == [("promo", at(first))]
    assert table.due([message], tz, at(first) - timedelta(seconds=1)) == []
    assert table.due([message], tz, at(first)) == [("promo", "A")]
    assert table.next_due() == [("promo", at(second))]
    assert table.due([message], tz, at(second)) == [("promo", "B")]  # lines in turn


def test_every_n_minutes_with_jitter_starts_one_interval_after_going_live() -> None:
    message = TimedMessage(name="follow", lines=["关注主播"], every_min=10, jitter_s=60)
    table = Timetable(random.Random(3))
    start = at("2026-12-07T12:00")
    table.plan([message], SHANGHAI, start)
    now, gaps = start, []
    for _ in range(200):
        ((_, when),) = table.next_due()
        gaps.append((when - now).total_seconds())
        now = when
        assert table.due([message], SHANGHAI, now) == [("follow", "关注主播")]
    assert all(540 <= g <= 660 for g in gaps)  # 10 min +/- 60 s
    assert max(gaps) - min(gaps) > 60  # and really drawn


def test_a_missed_time_is_said_once_and_a_changed_message_is_planned_afresh() -> None:
    message = TimedMessage(name="m", lines=["x"], every_min=1)
    table = Timetable()
    start = at("2026-12-07T12:00")
    table.plan([message], NY, start)
    late = start + timedelta(minutes=30)  # the room was not paced for half an hour
    assert table.due([message], NY, late) == [("m", "x")]
    assert table.next_due() == [("m", late + timedelta(minutes=1))]
    changed = TimedMessage(name="m", lines=["y"], every_min=5)
    assert table.plan([changed], NY, late) is True
    assert table.next_due() == [("m", late + timedelta(minutes=5))]
    assert table.plan([], NY, late) is True and table.next_due() == []


def test_idle_waits_are_drawn_per_quiet_stretch_and_held_back_while_replies_wait() -> None:
    idle = IdleLines(lines=["L1", "L2"], after_s=30, max_after_s=90, max_waiting=1)
    table = Timetable(random.Random(5))
    waits = {table.idle_wait(idle, float(quiet)) for quiet in range(100)}
    assert all(30 <= w <= 90 for w in waits) and len(waits) == 100
    wait = table.idle_wait(idle, 1000.0)
    assert table.idle_wait(idle, 1000.0) == wait  # the same stretch: the same draw
    assert table.idle_due(idle, 1000.0, 1000.0 + wait - 0.1, waiting=0) is None
    later = 1000.0 + wait + 0.01
    assert table.idle_due(idle, 1000.0, later, waiting=2) is None  # replies wait
    assert table.idle_due(idle, 1000.0, later, waiting=1) == "L1"
    assert table.idle_due(idle, 1000.0, later, waiting=0) == "L2"


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ({"timed": [{"name": "a", "lines": ["x"]}]}, "exactly one of cron or every_min"),
        ({"timed": [{"name": "a", "lines": ["x"], "cron": "0 * * * *", "every_min": 5}]}, "exactly one"),
        ({"timed": [{"name": "a", "lines": ["x"], "cron": "61 * * * *"}]}, "minute"),
        ({"timed": [{"name": "a", "lines": ["x"], "every_min": 1, "jitter_s": 30}]}, "under half"),
        ({"timed": [{"name": "a", "lines": ["x"], "cron": "0 * * * *", "jitter_s": 5}]}, "every_min"),
        ({"timed": [{"name": "a", "lines": ["x"], "every_min": 1}] * 2}, "distinct names"),
        ({"timed": [{"name": "a", "lines": [], "every_min": 1}]}, "lines"),
        ({"idle": {"lines": ["x"], "after_s": 60, "max_after_s": 30}}, "max_after_s"),
    ],
)
def test_invalid_timed_and_idle_lines_are_refused(document: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        PolicyConfig.model_validate(document)


async def test_timed_and_idle_lines_end_to_end_with_the_next_ones_shown(
    make_settings: Any, tmp_path: Path
) -> None:
    policy = {
        "timed": [
            {"name": "follow", "lines": ["点个关注不迷路", "喜欢主播点关注"], "every_min": 0.02},  # 1.2 s
            {"name": "nightly", "lines": ["晚八点上新"], "cron": "0 20 * * *"},
        ],
        "idle": {"lines": ["有问题随时问我"], "after_s": 1, "max_after_s": 1.5},
        "forbidden_words": ["最便宜"],
    }
    rude = {**policy, "timed": [{"name": "rude", "lines": ["全网最便宜"], "every_min": 1}]}
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        status, refused = await daemon.api("PUT", "/api/policies/shop", rude)  # a line it would never say
        assert (status, refused["error_code"]) == (422, "POLICY_INVALID") and "timed.0.lines" in refused[
            "error_msg"
        ]
        assert (await daemon.api("PUT", "/api/policies/shop", policy))[0] == 200
        room = softsugar_room([{"kind": "always"}], room_id="r1", policy="shop")
        room = room.model_copy(
            update={"schedule": room.schedule.model_copy(update={"timezone": "Asia/Shanghai"})}
        )
        await daemon.configs.put(room)
        await until(lambda: _true("r1" in daemon.app[AUDIENCE].workers), 20)

        async def said(text: str) -> bool:
            return any(text in line for line in await _said(daemon, box, "r1"))

        await until(lambda: said("点个关注不迷路"), 10)
        await until(lambda: said("喜欢主播点关注"), 10)  # in turn
        status, body = await daemon.api("GET", "/api/rooms/r1/timed")
        assert status == 200
        assert {entry["name"] for entry in body["next"]} == {"follow", "nightly"}
        nightly = next(e for e in body["next"] if e["name"] == "nightly")
        assert nightly["local"].endswith("T20:00:00+08:00")  # the room's time zone
        # While a line plays every 1.2 s the room is never quiet: no idle line. Edited live without the
        # frequent message, the room falls quiet and the idle line comes; the timetable follows the edit.
        assert not await said("有问题随时问我")
        quiet = {**policy, "timed": [policy["timed"][1]]}
        assert (await daemon.api("PUT", "/api/policies/shop", quiet))[0] == 200
        await until(lambda: said("有问题随时问我"), 10)

        async def only_nightly() -> bool:
            return [e["name"] for e in (await daemon.api("GET", "/api/rooms/r1/timed"))[1]["next"]] == [
                "nightly"
            ]

        await until(only_nightly, 10)
