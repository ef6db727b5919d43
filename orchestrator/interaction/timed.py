"""One room's timed and idle lines: when each comes due. Pure -- the times are given.

* **Timed messages** (the policy's ``timed``): at every match of a cron expression in the room's time zone
  (a DST change follows the schedules' rules: an ambiguous local time is its first instant, one in the gap
  the instant after it), or every N minutes give or take a jitter. A message's timetable starts when the
  room goes live (or the message is added or changed): the first of an ``every_min`` message is one
  interval later, not at once. A room that was not paced for a while (a replica's stall) says a message it
  missed once, not once per missed time.
* **Idle lines** (the policy's ``idle``, else ``interaction.idle_after_s`` / ``idle_lines``): after a quiet
  stretch drawn once per stretch between ``after_s`` and ``max_after_s``, and only while at most
  ``max_waiting`` replies wait.

Lines are said in turn per message. The pacer asks what is due (:meth:`Timetable.due`,
:meth:`Timetable.idle_due`), and how long until the next (its wake-up).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from orchestrator.interaction.policy import IdleLines, TimedMessage
from orchestrator.scheduling.schedules import next_cron


@dataclass
class _Planned:
    key: tuple[object, ...]  # what the timetable was planned from: a change plans it afresh
    at: datetime | None  # None: never again (a cron without a match in a year)
    cursor: int = 0


class Timetable:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()  # noqa: S311 -- variety, not secrecy
        self._planned: dict[str, _Planned] = {}
        self._quiet: tuple[float, float] | None = None  # (the quiet stretch's start, its drawn length)
        self._idle_cursor = 0

    # --- timed messages ---

    def plan(self, timed: list[TimedMessage], tz: ZoneInfo, now: datetime) -> bool:
        """Bring the timetable in line with the policy's messages; True if anything changed."""
        changed = False
        names = {m.name for m in timed}
        for gone in set(self._planned) - names:
            del self._planned[gone]
            changed = True
        for message in timed:
            key = (tz.key, message.cron, message.every_min, message.jitter_s, tuple(message.lines))
            planned = self._planned.get(message.name)
            if planned is None or planned.key != key:
                self._planned[message.name] = _Planned(key, self._after(message, tz, now))
                changed = True
        return changed

    def due(self, timed: list[TimedMessage], tz: ZoneInfo, now: datetime) -> list[tuple[str, str]]:
        """The (name, line) of every message due at ``now``, each planned again from now."""
        self.plan(timed, tz, now)
        said: list[tuple[str, str]] = []
        for message in timed:
            planned = self._planned[message.name]
            if planned.at is not None and planned.at <= now:
                said.append((message.name, message.lines[planned.cursor % len(message.lines)]))
                planned.cursor += 1
                planned.at = self._after(message, tz, now)
        return said

    def next_due(self) -> list[tuple[str, datetime]]:
        """Every message's next time, soonest first (messages that will not come again left out)."""
        return sorted(
            ((name, p.at) for name, p in self._planned.items() if p.at is not None), key=lambda x: x[1]
        )

    def seconds_until_next(self, now: datetime) -> float | None:
        upcoming = self.next_due()
        return None if not upcoming else max(0.0, (upcoming[0][1] - now).total_seconds())

    def _after(self, message: TimedMessage, tz: ZoneInfo, now: datetime) -> datetime | None:
        if message.cron is not None:
            return next_cron(message.cron, tz, now)
        assert message.every_min is not None
        jitter = self._rng.uniform(-message.jitter_s, message.jitter_s) if message.jitter_s else 0.0
        return now + timedelta(seconds=message.every_min * 60 + jitter)

    # --- idle lines ---

    def idle_wait(self, idle: IdleLines, quiet_since: float) -> float:
        """How long the quiet stretch that began at ``quiet_since`` lasts before an idle line (drawn once
        per stretch)."""
        if self._quiet is None or self._quiet[0] != quiet_since:
            top = idle.max_after_s if idle.max_after_s is not None else idle.after_s
            self._quiet = (quiet_since, self._rng.uniform(idle.after_s, top))
        return self._quiet[1]

    def idle_due(self, idle: IdleLines, quiet_since: float, now: float, waiting: int) -> str | None:
        """The idle line to say now, if the quiet stretch is long enough and few enough replies wait."""
        if now - quiet_since < self.idle_wait(idle, quiet_since) or waiting > idle.max_waiting:
            return None
        line = idle.lines[self._idle_cursor % len(idle.lines)]
        self._idle_cursor += 1
        return line
