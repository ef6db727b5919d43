"""The schedule function: windows, time zones, DST days, blackouts, merging -- tables and properties."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator.scheduling import schedules as schedules_module
from orchestrator.scheduling.schedules import (
    AlwaysWindow,
    CronError,
    CronWindow,
    OnceWindow,
    Schedule,
    evaluate,
    outlook,
    parse_cron,
)

SH = ZoneInfo("Asia/Shanghai")
NY = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(tz: ZoneInfo, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=tz, fold=fold).astimezone(UTC)


@pytest.mark.parametrize(
    ("expr", "minutes", "hours", "weekdays"),
    [
        ("0 20 * * *", {0}, {20}, set(range(7))),
        ("*/15 9-10 * * mon-fri", {0, 15, 30, 45}, {9, 10}, {1, 2, 3, 4, 5}),
        ("5,35 8 * * 0,7", {5, 35}, {8}, {0}),
        ("0 0-23/6 * * *", {0}, {0, 6, 12, 18}, set(range(7))),
    ],
)
def test_cron_parsing(expr: str, minutes: set[int], hours: set[int], weekdays: set[int]) -> None:
    cron = parse_cron(expr)
    assert (set(cron.minutes), set(cron.hours), set(cron.weekdays)) == (minutes, hours, weekdays)


@pytest.mark.parametrize(
    "expr", ["* * * *", "60 * * * *", "* 24 * * *", "a * * * *", "5-1 * * * *", "*/0 * * * *", "² * * * *"]
)
def test_bad_cron(expr: str) -> None:
    with pytest.raises(CronError):
        parse_cron(expr)


def test_day_of_month_or_weekday_when_both_restricted() -> None:
    cron = parse_cron("0 0 1 * mon")  # the 1st, or any Monday
    assert (
        cron.day_matches(date(2026, 6, 1))
        and cron.day_matches(date(2026, 6, 8))
        and not cron.day_matches(date(2026, 6, 9))
    )


def test_daily_evening_window_in_shanghai() -> None:
    sched = Schedule(
        timezone="Asia/Shanghai", windows=(CronWindow(start="0 20 * * *", duration=timedelta(hours=3)),)
    )
    before = evaluate(sched, local(SH, 2026, 11, 21, 19, 59))
    assert not before.live and before.next_boundary == local(SH, 2026, 11, 21, 20, 0)
    during = evaluate(sched, local(SH, 2026, 11, 21, 22, 30))
    assert during.live and during.next_boundary == local(SH, 2026, 11, 21, 23, 0)
    assert during.window_id == "live:2026-11-21T12:00:00Z"
    after = evaluate(sched, local(SH, 2026, 11, 21, 23, 0))
    assert not after.live and after.next_boundary == local(SH, 2026, 11, 22, 20, 0)


def test_window_crossing_midnight_with_stop_cron() -> None:
    sched = Schedule(timezone="Asia/Shanghai", windows=(CronWindow(start="0 22 * * *", stop="0 2 * * *"),))
    assert evaluate(sched, local(SH, 2026, 11, 22, 1, 0)).live
    assert evaluate(sched, local(SH, 2026, 11, 22, 1, 0)).next_boundary == local(SH, 2026, 11, 22, 2, 0)
    assert not evaluate(sched, local(SH, 2026, 11, 22, 2, 0)).live


def test_spring_forward_day() -> None:
    # 2026-03-08 in New York: 02:00 EST jumps to 03:00 EDT. "30 2" does not exist that day.
    sched = Schedule(
        timezone="America/New_York", windows=(CronWindow(start="30 2 * * *", duration=timedelta(hours=2)),)
    )
    d = evaluate(sched, local(NY, 2026, 3, 8, 1, 0))
    assert d.next_boundary == local(NY, 2026, 3, 8, 3, 30)  # the instant after the gap, once
    live = evaluate(sched, local(NY, 2026, 3, 8, 4, 0))
    assert live.live and live.next_boundary == local(NY, 2026, 3, 8, 5, 30)  # 2 absolute hours
    assert evaluate(sched, local(NY, 2026, 3, 9, 2, 30)).live  # the next day, back to 02:30 local


def test_fall_back_day() -> None:
    # 2026-11-01 in New York: 01:00-02:00 happens twice. "30 1" starts once, at the first 01:30.
    sched = Schedule(
        timezone="America/New_York", windows=(CronWindow(start="30 1 * * *", duration=timedelta(minutes=45)),)
    )
    first = local(NY, 2026, 11, 1, 1, 30, fold=0)
    d = evaluate(sched, first - timedelta(minutes=1))
    assert d.next_boundary == first
    during = evaluate(sched, first + timedelta(minutes=10))
    assert during.live and during.next_boundary == first + timedelta(minutes=45)
    second = local(NY, 2026, 11, 1, 1, 30, fold=1)  # the repeated 01:30, an hour later
    assert not evaluate(sched, second).live
    assert evaluate(sched, second).next_boundary == local(NY, 2026, 11, 2, 1, 30)


def test_once_always_blackout_and_merge() -> None:
    sched = Schedule(
        timezone="Asia/Shanghai",
        windows=(
            OnceWindow(start=datetime(2026, 12, 1, 10), end=datetime(2026, 12, 1, 12)),  # naive: local
            OnceWindow(start=datetime(2026, 12, 1, 11), end=datetime(2026, 12, 1, 14)),  # overlaps: merged
        ),
    )
    d = evaluate(sched, local(SH, 2026, 12, 1, 11, 30))
    assert d.live and d.period == (local(SH, 2026, 12, 1, 10), local(SH, 2026, 12, 1, 14))
    always = Schedule(
        timezone="Asia/Shanghai", windows=(AlwaysWindow(),), blackout_dates=(date(2026, 12, 25),)
    )
    assert evaluate(always, local(SH, 2026, 12, 24, 12)).live
    assert evaluate(always, local(SH, 2026, 12, 24, 12)).next_boundary == local(SH, 2026, 12, 25, 0)
    off = evaluate(always, local(SH, 2026, 12, 25, 12))
    assert not off.live and off.next_boundary == local(SH, 2026, 12, 26, 0)
    assert evaluate(Schedule(windows=(AlwaysWindow(),)), utc(2026, 1, 1)).next_boundary is None


def test_validation() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        Schedule(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="exactly one"):
        CronWindow(start="0 20 * * *")
    with pytest.raises(ValidationError, match="duration"):
        CronWindow(start="0 20 * * *", duration=timedelta(days=8))
    with pytest.raises(ValidationError, match="start"):
        CronWindow(start="0 25 * * *", duration=timedelta(hours=1))
    with pytest.raises(ValidationError, match="end must be after"):
        OnceWindow(start=utc(2026, 1, 2), end=utc(2026, 1, 1))
    with pytest.raises(ValueError, match="aware"):
        evaluate(Schedule(), datetime(2026, 1, 1))


ZONES = ["UTC", "Asia/Shanghai", "America/New_York", "Europe/London", "Australia/Lord_Howe"]
crons = st.builds(
    lambda m, h, dow: f"{m} {h} * * {dow}",
    st.integers(0, 59),
    st.integers(0, 23),
    st.sampled_from(["*", "mon-fri", "sat,sun", "3"]),
)
windows = st.one_of(
    st.builds(CronWindow, start=crons, duration=st.timedeltas(timedelta(minutes=1), timedelta(days=2))),
    st.builds(CronWindow, start=crons, stop=crons),
    st.builds(
        lambda s, h: OnceWindow(start=s, end=s + timedelta(hours=h)),
        st.datetimes(datetime(2026, 1, 1), datetime(2027, 1, 1), timezones=st.just(UTC)),
        st.integers(1, 72),
    ),
)
schedules = st.builds(
    Schedule,
    timezone=st.sampled_from(ZONES),
    windows=st.lists(windows, max_size=3).map(tuple),
    blackout_dates=st.lists(st.dates(date(2026, 1, 1), date(2027, 1, 1)), max_size=3).map(tuple),
)
instants = st.datetimes(datetime(2026, 1, 1), datetime(2027, 1, 1), timezones=st.just(UTC))


@settings(max_examples=200, deadline=None)
@given(sched=schedules, at=instants)
def test_property_answer_holds_until_the_boundary_then_flips(sched: Schedule, at: datetime) -> None:
    d = evaluate(sched, at)
    if d.next_boundary is None:
        return
    assert d.next_boundary > at
    for fraction in (0.0, 0.25, 0.5, 0.99):
        # (timedelta rounds to microseconds: keep the probe strictly before the boundary)
        probe = min(at + (d.next_boundary - at) * fraction, d.next_boundary - timedelta(microseconds=1))
        assert evaluate(sched, max(probe, at)).live == d.live
    assert evaluate(sched, d.next_boundary).live != d.live


@settings(max_examples=200, deadline=None)
@given(sched=schedules, at=instants)
def test_property_live_means_inside_a_window_not_on_a_blackout(sched: Schedule, at: datetime) -> None:
    d = evaluate(sched, at)
    local_day = at.astimezone(ZoneInfo(sched.timezone)).date()
    if local_day in sched.blackout_dates:
        assert not d.live
    if d.live:
        assert d.period is not None and d.period[0] <= at and (d.period[1] is None or at < d.period[1])
    if not sched.windows:
        assert not d.live and d.next_boundary is None


@settings(max_examples=200, deadline=None)
@given(
    sched=schedules,
    at=instants,
    steps=st.lists(st.timedeltas(timedelta(seconds=-600), timedelta(days=3)), min_size=1, max_size=8),
)
def test_property_outlook_is_evaluate_at_every_instant(
    sched: Schedule, at: datetime, steps: list[timedelta]
) -> None:
    """The remembered read-out (room metrics, console tiles) answers exactly what a fresh evaluation
    does -- forwards, backwards, across boundaries, and with equal schedules in separate objects."""
    twin = Schedule.model_validate(sched.model_dump())
    probes = [at]
    for step in steps:
        probes.append(probes[-1] + step)
    for probe in probes:
        fresh = evaluate(sched, probe)
        for which in (sched, twin):
            assert outlook(which, probe) == (fresh.live, fresh.next_boundary)
        if fresh.next_boundary is not None:  # just before and at the boundary
            before = fresh.next_boundary - timedelta(microseconds=1)
            assert outlook(sched, before) == (evaluate(sched, before).live, fresh.next_boundary)
            after = evaluate(sched, fresh.next_boundary)
            assert outlook(sched, fresh.next_boundary) == (after.live, after.next_boundary)


def test_outlook_remembers_each_schedule_until_its_boundary() -> None:
    """A thousand rooms read every few seconds cost one evaluation per schedule and boundary."""
    sched = Schedule(
        timezone="Asia/Shanghai", windows=(CronWindow(start="0 20 * * *", duration=timedelta(hours=3)),)
    )
    at = local(SH, 2026, 3, 2, 21, 0)
    assert outlook(sched, at) == (True, local(SH, 2026, 3, 2, 23, 0))
    remembered = schedules_module._OUTLOOKS[id(sched)]
    assert outlook(sched, at + timedelta(minutes=90)) == (True, local(SH, 2026, 3, 2, 23, 0))
    assert schedules_module._OUTLOOKS[id(sched)] is remembered  # no new evaluation
    assert outlook(sched, local(SH, 2026, 3, 2, 23, 0)) == (False, local(SH, 2026, 3, 3, 20, 0))
    assert schedules_module._OUTLOOKS[id(sched)] is not remembered  # the boundary passed: evaluated
    always = Schedule(windows=(AlwaysWindow(),))
    assert outlook(always, at) == (True, None)
    assert id(always) not in schedules_module._OUTLOOKS  # no boundary: the horizon moves, not kept
