"""The soak's rooms: a seeded mix of schedules, and -- computed independently of the daemon's own schedule
code, with ``zoneinfo`` -- when each should be live.

Kinds (shares of the rooms): always-on; daily cron windows in several zones, some across the European DST
change (spring forward, 2026-03-29 01:00 UTC) and one at a local time that does not exist that night; one-off
events; daily windows with a blackout day.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from benchmarks.soak.analysis import Interval, subtract, union

#: Europe springs forward at 01:00 UTC on this day: 02:00 CET becomes 03:00 CEST.
DST_CHANGE = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
ZONES = ["Asia/Shanghai", "Europe/Berlin", "America/New_York", "Australia/Sydney", "UTC"]


def make_rooms(count: int, start: datetime, end: datetime, rng: random.Random) -> list[dict[str, Any]]:
    """``count`` room schedules (the rooms file's ``schedule`` objects) with boundaries inside the span."""
    span_s = (end - start).total_seconds()
    rooms = []
    for index in range(count):
        kind = ["always", "daily", "daily", "dst", "once", "blackout"][index % 6]
        zone = "Europe/Berlin" if kind == "dst" else rng.choice(ZONES)
        tz = ZoneInfo(zone)
        if kind == "always":
            windows = [{"kind": "always"}]
            blackouts: list[str] = []
        elif kind == "once":
            first = start + timedelta(seconds=rng.uniform(0.05, 0.6) * span_s)
            last = first + timedelta(seconds=rng.uniform(0.15, 0.35) * span_s)
            windows = [
                {
                    "kind": "once",
                    "start": first.astimezone(tz).replace(tzinfo=None).isoformat(timespec="minutes"),
                    "end": last.astimezone(tz).replace(tzinfo=None).isoformat(timespec="minutes"),
                }
            ]
            blackouts = []
        else:
            if kind == "dst":  # the window opens before the change and runs across it (absolute duration)
                at = DST_CHANGE - timedelta(seconds=rng.uniform(0.05, 0.3) * span_s)
                if index % 12 == 3:  # 02:30 local does not exist that night: opens at 03:30 CEST
                    at = datetime(2026, 3, 29, 2, 30, tzinfo=tz)
            else:
                at = start + timedelta(seconds=rng.uniform(0.02, 0.7) * span_s)
            local = at.astimezone(tz)
            duration_s = rng.uniform(0.1, 0.3) * span_s
            minutes = max(10, int(duration_s // 60))
            windows = [
                {
                    "kind": "cron",
                    "start": f"{local.minute} {local.hour} * * *",
                    "duration": f"PT{minutes // 60}H{minutes % 60}M",
                }
            ]
            blackouts = []
            if kind == "blackout":  # the window and a long daily one, and the second day blacked out
                windows.append({"kind": "cron", "start": "0 0 * * *", "duration": "PT23H"})
                day = (start + timedelta(seconds=span_s * 0.6)).astimezone(tz).date()
                blackouts = [day.isoformat()]
        rooms.append({"timezone": zone, "windows": windows, "blackout_dates": blackouts})
    return rooms


def should_be_live(schedule: dict[str, Any], start: datetime, end: datetime) -> list[Interval]:
    """When ``schedule`` wants the room live within [start, end] (simulated epoch seconds)."""
    tz = ZoneInfo(schedule["timezone"])
    intervals: list[Interval] = []
    first_day = (start - timedelta(days=1)).astimezone(tz).date()
    days = [first_day + timedelta(days=i) for i in range((end - start).days + 3)]
    for window in schedule["windows"]:
        if window["kind"] == "always":
            intervals.append((start.timestamp(), end.timestamp()))
        elif window["kind"] == "once":
            a = datetime.fromisoformat(window["start"]).replace(tzinfo=tz)
            b = datetime.fromisoformat(window["end"]).replace(tzinfo=tz)
            intervals.append((_instant(a), _instant(b)))
        else:
            minute, hour = (int(x) for x in window["start"].split()[:2])
            duration = _duration_s(window["duration"])
            for day in days:
                opens = _instant(datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz))
                intervals.append((opens, opens + duration))
    blocked = []
    for text in schedule.get("blackout_dates", []):
        day = date.fromisoformat(text)
        midnight = datetime(day.year, day.month, day.day, tzinfo=tz)
        blocked.append((_instant(midnight), _instant(midnight + timedelta(days=1))))
    return subtract(union(intervals), union(blocked))


def _instant(local: datetime) -> float:
    """A local time as an instant: a time in a spring-forward gap is read with the offset before the gap
    (02:30 CET → 01:30 UTC = 03:30 CEST); an ambiguous one as its first occurrence (fold=0)."""
    return local.replace(fold=0).timestamp()


def _duration_s(text: str) -> float:
    hours, _, rest = text[2:].partition("H")
    return int(hours or 0) * 3600 + int(rest.rstrip("M") or 0) * 60
