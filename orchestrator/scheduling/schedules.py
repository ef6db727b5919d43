"""When should a room be live? Schedules, and the pure function that answers at any instant.

A schedule has an IANA time zone and windows of three kinds, plus blackout dates:

* ``cron``: starts at every match of a 5-field cron expression (minute hour day-of-month month
  day-of-week, in the schedule's zone) and lasts ``duration`` (absolute time: 4 h is 4 h even across a
  DST change) or until the next match of ``stop``;
* ``once``: from ``start`` to ``end`` (a naive datetime is read in the schedule's zone);
* ``always``: live around the clock.

``blackout_dates`` are whole local days when the room is off whatever the windows say. Overlapping or
touching windows merge into one live period.

:func:`evaluate` answers "live at t, and when does that next change?" from local wall-clock arithmetic
and ``zoneinfo``, not from a scheduler: a local time that does not exist (spring forward) maps to the
instant after the gap (02:30 → 03:30), an ambiguous one (fall back) to its first occurrence, so each
window starts exactly once a day. Windows longer than :data:`MAX_WINDOW` are not supported (the search
looks back that far).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Annotated, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_WINDOW = timedelta(days=7)
HORIZON = timedelta(days=8)

_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
_NAMES = {
    3: {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)},  # noqa: SIM905
    4: {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}


class CronError(ValueError):
    """A cron expression we cannot read; the message names the field."""


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    def day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        weekday = (day.weekday() + 1) % 7
        if self.any_day or self.any_weekday:  # standard cron: restricted fields must both match ...
            return day.day in self.days and weekday in self.weekdays
        return day.day in self.days or weekday in self.weekdays  # ... unless both are restricted: either

    def times(self) -> list[time]:
        return [time(h, m) for h in sorted(self.hours) for m in sorted(self.minutes)]


@lru_cache(maxsize=4096)
def parse_cron(expression: str) -> Cron:
    """Raises CronError."""
    parts = expression.split()
    if len(parts) != 5:
        raise CronError(
            f"cron needs 5 fields (minute hour day month weekday), got {len(parts)}: {expression!r}"
        )
    values = [_parse_field(part, index) for index, part in enumerate(parts)]
    weekdays = frozenset(d % 7 for d in values[4])  # 7 is Sunday too
    return Cron(values[0], values[1], values[2], values[3], weekdays, parts[2] == "*", parts[4] == "*")


def _parse_field(text: str, index: int) -> frozenset[int]:
    name, low, high = _FIELDS[index]
    found: set[int] = set()
    for item in text.lower().split(","):
        base, _, step_text = item.partition("/")
        step = _number(step_text, name) if step_text else 1
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, b = base.split("-", 1)
            start, end = _value(a, index), _value(b, index)
        else:
            start = _value(base, index)
            end = high if step_text else start
        if not (low <= start <= high and low <= end <= high and start <= end and step >= 1):
            raise CronError(f"{name} {item!r} is outside {low}-{high}")
        found.update(range(start, end + 1, step))
    return frozenset(found)


def _value(text: str, index: int) -> int:
    names = _NAMES.get(index, {})
    return names[text] if text in names else _number(text, _FIELDS[index][0])


def _number(text: str, name: str) -> int:
    if not (text.isascii() and text.isdigit()):  # "²".isdigit() is true, and int("²") raises
        raise CronError(f"{name}: {text!r} is not a number")
    return int(text)


def zone(name: str) -> ZoneInfo:
    """Raises ValueError for an unknown IANA zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (use an IANA name like Asia/Shanghai)") from exc


def local_instant(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of local ``day at`` in ``tz``: the first if ambiguous, after the gap if absent."""
    # fold=0: the first of two ambiguous instants; inside a gap, the pre-transition offset, which lands
    # after the gap (02:30 EST == 03:30 EDT).
    return datetime.combine(day, at).replace(tzinfo=tz, fold=0).astimezone(UTC)


# --- the model ---------------------------------------------------------------------------------------------


def _valid_cron(value: str) -> str:
    parse_cron(value)
    return value


#: A 5-field cron expression, checked where it is given (CronError names the field).
CronExpression = Annotated[str, AfterValidator(_valid_cron)]


class _Window(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CronWindow(_Window):
    kind: Literal["cron"] = "cron"
    start: CronExpression = Field(..., description="5-field cron: when the window starts (local time)")
    duration: timedelta | None = Field(None, description="how long each window lasts (absolute time)")
    stop: CronExpression | None = Field(
        None, description="5-field cron: when the window ends (instead of duration)"
    )

    @model_validator(mode="after")
    def _one_end(self) -> CronWindow:
        if (self.duration is None) == (self.stop is None):
            raise ValueError("give exactly one of duration or stop")
        if self.duration is not None and not timedelta(0) < self.duration <= MAX_WINDOW:
            raise ValueError(f"duration must be positive and at most {MAX_WINDOW.days} days")
        return self


class OnceWindow(_Window):
    kind: Literal["once"] = "once"
    start: datetime
    end: datetime

    @model_validator(mode="after")
    def _order(self) -> OnceWindow:
        if self.start.tzinfo is not None and self.end.tzinfo is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class AlwaysWindow(_Window):
    kind: Literal["always"] = "always"


Window = Annotated[CronWindow | OnceWindow | AlwaysWindow, Field(discriminator="kind")]


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str = "UTC"
    windows: tuple[Window, ...] = ()
    blackout_dates: tuple[date, ...] = ()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone(value)
        return value


# --- evaluation --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Desired:
    """What the schedule wants at ``at``: live or not; the live period containing ``at``; the start of the
    window instance that makes it live (its identity, for fencing: one start per window); and the next
    instant this answer changes (None: no change within :data:`HORIZON`)."""

    at: datetime
    live: bool
    period: tuple[datetime, datetime | None] | None
    next_boundary: datetime | None
    window_start: datetime | None = None

    @property
    def window_id(self) -> str:
        """Names the desired state's stretch: the live window's start, or the off stretch's end."""
        if self.window_start is not None:
            return "live:" + _iso(self.window_start)
        return "off:" + (_iso(self.next_boundary) if self.next_boundary else "forever")


def _iso(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def evaluate(schedule: Schedule, at: datetime) -> Desired:
    """Should the room be live at ``at`` (aware), and when does that next change?

    Pure: the same schedule and instant always give the same answer.
    """
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    at = at.astimezone(UTC)
    start, end = at - MAX_WINDOW - timedelta(days=1), at + HORIZON
    tz = zone(schedule.timezone)
    raw = [p for window in schedule.windows for p in _window_periods(window, tz, start, end)]
    periods = _cut_blackouts(_merge(raw), schedule.blackout_dates, tz, start, end)
    for period_start, period_end in periods:
        if period_start <= at and (period_end is None or at < period_end):
            if period_end is not None and period_end >= end:
                period_end = None  # a chain of windows reaching past the horizon: its end is not known
            starts = [s for s, e in raw if s <= at and (e is None or at < e)]
            window_start = max([period_start, *starts])
            return Desired(at, True, (period_start, period_end), period_end, window_start)
        if period_start > at:
            # Beyond the horizon nothing is known for sure (blackouts there were not consulted).
            return Desired(at, False, None, period_start if period_start < end else None)
    return Desired(at, False, None, None)


class Outlook(NamedTuple):
    """What a read-out of many rooms needs of a schedule at an instant: live or not, and the next boundary."""

    live: bool
    next_boundary: datetime | None


#: schedule's id → (the schedule, when evaluated, its outlook); see :func:`outlook`.
_OUTLOOKS: dict[int, tuple[Schedule, datetime, Outlook]] = {}
OUTLOOKS_MAX = 4096


def outlook(schedule: Schedule, at: datetime) -> Outlook:
    """:func:`evaluate`'s ``live`` and ``next_boundary`` at ``at``, remembered per schedule object until that
    boundary: between an evaluation and its next boundary neither can change (that is what a boundary is;
    what the look-back forgets has ended, what the horizon reveals comes after the boundary). An answer
    with no boundary within :data:`HORIZON` is not remembered (the horizon moves with ``at``).

    For the read-outs that ask about every room often -- the room metrics every 5 s, the console's tiles:
    a cron schedule's evaluation is ~0.16 ms, a thousand rooms' a sixth of a second of the loop each time.
    The reconciler, which fences on the window's identity, evaluates afresh."""
    at = at.astimezone(UTC)
    known = _OUTLOOKS.get(id(schedule))
    if known is not None:
        remembered, since, answer = known
        if remembered is schedule and answer.next_boundary is not None and since <= at < answer.next_boundary:
            return answer
    desired = evaluate(schedule, at)
    answer = Outlook(desired.live, desired.next_boundary)
    if answer.next_boundary is not None:
        if len(_OUTLOOKS) >= OUTLOOKS_MAX:
            _OUTLOOKS.clear()  # rooms' schedules change rarely: the working set comes back in one pass
        _OUTLOOKS[id(schedule)] = (schedule, at, answer)  # the entry holds the object: its id stays its own
    return answer


def upcoming_windows(
    schedule: Schedule, at: datetime, count: int
) -> list[tuple[datetime | None, datetime | None]]:
    """The live periods in effect at ``at`` or after it, the first ``count`` within :data:`HORIZON` (pure;
    a start of None: since before anything looked at (an "always" window), an end of None: not within the
    horizon). Overlapping windows are one period, blackouts cut them."""
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    at = at.astimezone(UTC)
    start, end = at - MAX_WINDOW - timedelta(days=1), at + HORIZON
    tz = zone(schedule.timezone)
    raw = [p for window in schedule.windows for p in _window_periods(window, tz, start, end)]
    found: list[tuple[datetime | None, datetime | None]] = []
    for period_start, period_end in _cut_blackouts(_merge(raw), schedule.blackout_dates, tz, start, end):
        if period_end is not None and period_end <= at:
            continue
        if period_start >= end:
            break
        found.append(
            (
                period_start if period_start >= start else None,
                None if period_end is None or period_end >= end else period_end,
            )
        )
        if len(found) >= count:
            break
    return found


def _window_periods(
    window: CronWindow | OnceWindow | AlwaysWindow, tz: ZoneInfo, start: datetime, end: datetime
) -> Iterator[tuple[datetime, datetime | None]]:
    if isinstance(window, AlwaysWindow):
        yield (datetime.min.replace(tzinfo=UTC), None)
    elif isinstance(window, OnceWindow):
        yield (_aware(window.start, tz), _aware(window.end, tz))
    else:
        starts = list(_cron_instants(parse_cron(window.start), tz, start, end))
        if window.duration is not None:
            for s in starts:
                yield (s, s + window.duration)
            return
        assert window.stop is not None
        stops = list(_cron_instants(parse_cron(window.stop), tz, start, end + MAX_WINDOW))
        for s in starts:
            stop = next((x for x in stops if x > s), None)
            yield (s, stop if stop is not None and stop - s <= MAX_WINDOW else s + MAX_WINDOW)


def _aware(value: datetime, tz: ZoneInfo) -> datetime:
    if value.tzinfo is None:
        return local_instant(value.date(), value.time(), tz)
    return value.astimezone(UTC)


def next_cron(expression: str, tz: ZoneInfo, after: datetime) -> datetime | None:
    """The first instant after ``after`` that the cron expression matches in local time ``tz`` (the
    windows' rules: an ambiguous local time is its first instant, one in a DST gap the instant after the
    gap); None within a year (Feb 29th only: a leap year may be further). Raises CronError."""
    cron = parse_cron(expression)
    for span in (timedelta(days=8), timedelta(days=400)):  # most expressions match within a week
        start = after + timedelta(microseconds=1)
        found = next(_cron_instants(cron, tz, start, start + span), None)
        if found is not None:
            return found
    return None


def _cron_instants(cron: Cron, tz: ZoneInfo, start: datetime, end: datetime) -> Iterator[datetime]:
    day = start.astimezone(tz).date() - timedelta(days=1)
    last = end.astimezone(tz).date() + timedelta(days=1)
    times = cron.times()
    seen: set[datetime] = set()
    while day <= last:
        if cron.day_matches(day):
            for at in times:
                instant = local_instant(day, at, tz)
                if start <= instant < end and instant not in seen:  # a gap can map two times to one
                    seen.add(instant)
                    yield instant
        day += timedelta(days=1)


def _merge(periods: list[tuple[datetime, datetime | None]]) -> list[tuple[datetime, datetime | None]]:
    merged: list[tuple[datetime, datetime | None]] = []
    for s, e in sorted(periods, key=lambda p: p[0]):
        if e is not None and e <= s:
            continue
        if merged and (merged[-1][1] is None or s <= merged[-1][1]):
            last_s, last_e = merged[-1]
            merged[-1] = (last_s, None if last_e is None or e is None else max(last_e, e))
        else:
            merged.append((s, e))
    return merged


def _cut_blackouts(
    periods: list[tuple[datetime, datetime | None]],
    blackouts: tuple[date, ...],
    tz: ZoneInfo,
    start: datetime,
    end: datetime,
) -> list[tuple[datetime, datetime | None]]:
    cuts = sorted(
        (local_instant(d, time(0), tz), local_instant(d + timedelta(days=1), time(0), tz))
        for d in blackouts
        if start - timedelta(days=2) <= local_instant(d, time(0), tz) <= end + timedelta(days=2)
    )
    result = periods
    for cut_start, cut_end in cuts:
        pieces: list[tuple[datetime, datetime | None]] = []
        for s, e in result:
            if (e is not None and e <= cut_start) or s >= cut_end:
                pieces.append((s, e))
                continue
            if s < cut_start:
                pieces.append((s, cut_start))
            if e is None or e > cut_end:
                pieces.append((cut_end, e))
        result = pieces
    return result


def describe_instant(instant: datetime | None, timezone: str) -> str:
    """An instant as an operator reads it: in the room's time zone, then UTC --
    ``2026-12-02 19:00 Asia/Shanghai (11:00 UTC)``; ``none scheduled`` for no instant (never ``None``)."""
    if instant is None:
        return "none scheduled"
    local = instant.astimezone(zone(timezone))
    utc = instant.astimezone(UTC)
    day = "" if local.date() == utc.date() else f"{utc:%Y-%m-%d} "
    return f"{local:%Y-%m-%d %H:%M} {timezone} ({day}{utc:%H:%M} UTC)"


def local_iso(instant: datetime | None, timezone: str) -> str | None:
    """``instant`` in the room's time zone, ISO 8601 with its offset (None stays None, for JSON)."""
    return None if instant is None else instant.astimezone(zone(timezone)).isoformat()
