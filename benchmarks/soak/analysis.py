"""What a soak run means: interval arithmetic over what the sandbox saw, against what the schedules wanted.

Pure functions over plain data (the sandbox's job and link history, the schedules the harness generated, the
faults it injected, the alerts and events it recorded), so the invariants are tested on their own and the
result of a run can be recomputed from its recording.

Times are simulated epoch seconds throughout.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Interval = tuple[float, float]


# --- intervals ---


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, merged (touching ones too), empty ones dropped."""
    merged: list[list[float]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def subtract(base: list[Interval], cut: list[Interval]) -> list[Interval]:
    """``base`` minus ``cut`` (both unions)."""
    out: list[Interval] = []
    cut = union(cut)
    for start, end in base:
        pos = start
        for c_start, c_end in cut:
            if c_end <= pos or c_start >= end:
                continue
            if c_start > pos:
                out.append((pos, c_start))
            pos = max(pos, c_end)
            if pos >= end:
                break
        if pos < end:
            out.append((pos, end))
    return out


def intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    return subtract(a, subtract(a, b))


def total(intervals: Iterable[Interval]) -> float:
    return sum(end - start for start, end in intervals)


def covers(intervals: list[Interval], t: float) -> bool:
    return any(start <= t < end for start, end in intervals)


# --- what the sandbox saw ---


@dataclass
class JobLife:
    job_id: str
    room_id: str
    created: float
    active: list[Interval] = field(default_factory=list)  # WAITING or PROCESSING
    end_state: str | None = None


def lives(
    history: list[tuple[float, str, str, str, str]], until: float
) -> tuple[dict[str, list[Interval]], dict[str, list[JobLife]]]:
    """From the sandbox's history: per room, when it was live (a PROCESSING job whose every output link is
    CONNECTED), and its jobs with when each was active."""
    live: dict[str, list[Interval]] = defaultdict(list)
    jobs: dict[str, JobLife] = {}
    job_state: dict[str, str] = {}
    links: dict[str, dict[str, str]] = defaultdict(dict)
    room_live_since: dict[str, float | None] = {}
    active_since: dict[str, float] = {}

    def is_live(job_id: str) -> bool:
        job_links = links[job_id]
        return (
            job_state.get(job_id) == "PROCESSING"
            and bool(job_links)
            and all(s == "CONNECTED" for s in job_links.values())
        )

    live_jobs: dict[str, set[str]] = defaultdict(set)
    for at, room_id, job_id, what, state in history:
        if job_id not in jobs:
            jobs[job_id] = JobLife(job_id, room_id, at)
        if what == "job":
            was_active = job_state.get(job_id) in ("WAITING", "PROCESSING")
            job_state[job_id] = state
            now_active = state in ("WAITING", "PROCESSING")
            if now_active and not was_active:
                active_since[job_id] = at
            elif was_active and not now_active:
                jobs[job_id].active.append((active_since.pop(job_id), at))
                jobs[job_id].end_state = state
            if state == "GONE":
                links[job_id].clear()
        else:
            links[job_id][what] = state
        before = bool(live_jobs[room_id])
        if is_live(job_id):
            live_jobs[room_id].add(job_id)
        else:
            live_jobs[room_id].discard(job_id)
        after = bool(live_jobs[room_id])
        if after and not before:
            room_live_since[room_id] = at
        elif before and not after:
            since = room_live_since.pop(room_id, None)
            if since is not None:
                live[room_id].append((since, at))
    for room_id, since in room_live_since.items():
        if since is not None:
            live[room_id].append((since, until))
    for job_id, since in active_since.items():
        jobs[job_id].active.append((since, until))
    by_room: dict[str, list[JobLife]] = defaultdict(list)
    for job in jobs.values():
        by_room[job.room_id].append(job)
    return {r: union(v) for r, v in live.items()}, dict(by_room)


# --- faults and their budgets ---


@dataclass(frozen=True)
class Fault:
    at: float
    kind: str
    room_id: str | None  # None: every room
    budget_s: float  # the documented recovery budget: downtime within [at, at + budget_s] is excused
    needs_human: bool = False
    detail: str = ""
    restarts: int = 0  # the restarts the fault justifies (it ends the room's job: 1; True counts as 1)

    @property
    def window(self) -> Interval:
        return (self.at, self.at + self.budget_s)


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Verdict:
    name: str
    value: Any
    target: str
    ok: bool
    detail: list[str] = field(default_factory=list)


def analyse(
    *,
    should: dict[str, list[Interval]],
    live: dict[str, list[Interval]],
    jobs: dict[str, list[JobLife]],
    faults: list[Fault],
    start_budget_s: float,
    stop_budget_s: float,
    span: Interval,
) -> dict[str, Any]:
    """Availability per room and overall, time to recover per fault kind, starts per window, jobs outside
    windows."""
    per_room: dict[str, dict[str, Any]] = {}
    sum_required = sum_down = 0.0
    global_excused = union(f.window for f in faults if f.room_id is None)
    extra_starts: list[str] = []
    outside: list[str] = []
    for room_id, wanted_all in should.items():
        wanted_all = union(wanted_all)  # windows (whole): starts and jobs outside them are counted on these
        wanted = intersect(wanted_all, [span])  # availability is measured within the span
        # A window is wanted live from its start plus the start budget (the vendor's start, one pass).
        required = union((s + start_budget_s, e) for s, e in wanted)
        excused = union([*global_excused, *(f.window for f in faults if f.room_id == room_id)])
        down = subtract(subtract(required, live.get(room_id, [])), excused)
        required_s, down_s = total(required), total(down)
        sum_required += required_s
        sum_down += down_s
        # Starts per window: exactly one, plus one per fault that ended the job.
        room_jobs = jobs.get(room_id, [])
        windows = [(s - stop_budget_s, e) for s, e in wanted_all]
        starts = Counter()
        for job in room_jobs:
            index = next((i for i, (s, e) in enumerate(windows) if s <= job.created < e), None)
            starts[index] += 1
        justified = Counter()
        for f in faults:
            if f.room_id == room_id and f.restarts:
                index = next((i for i, (s, e) in enumerate(windows) if s <= f.at < e), None)
                justified[index] += int(f.restarts)
            elif f.room_id is None and f.restarts:  # every room's fault: a restart in each window it meets
                for index, (s, e) in enumerate(windows):
                    if f.at < e and s < f.at + f.budget_s:
                        justified[index] += 1
        for index, count in starts.items():
            if index is None:
                extra_starts.append(f"{room_id}: {count} job(s) started outside every window")
            elif count > 1 + justified[index]:
                extra_starts.append(
                    f"{room_id}: window {index} had {count} starts for {justified[index]} restart fault(s)"
                )
        # Jobs active outside the windows (beyond the stop budget, and outside the global faults' budgets).
        allowed = union([*((s - stop_budget_s, e + stop_budget_s) for s, e in wanted_all), *global_excused])
        for job in room_jobs:
            excess = total(subtract(union(job.active), allowed))
            if excess > 0:
                outside.append(f"{room_id}: job {job.job_id[:8]} active {excess:.0f}s outside its windows")
        per_room[room_id] = {
            "required_s": round(required_s, 1),
            "down_s": round(down_s, 1),
            "availability": 1.0 if required_s == 0 else round(1 - down_s / required_s, 6),
            "jobs": len(room_jobs),
            "down": [(round(a, 1), round(b, 1)) for a, b in down][:20],
        }
    recovery = recovery_times(faults, should, live, start_budget_s)
    availability = 1.0 if sum_required == 0 else 1 - sum_down / sum_required
    return {
        "availability": availability,
        "required_s": sum_required,
        "down_s": sum_down,
        "per_room": per_room,
        "recovery": recovery,
        "extra_starts": extra_starts,
        "outside_windows": outside,
    }


def recovery_times(
    faults: list[Fault],
    should: dict[str, list[Interval]],
    live: dict[str, list[Interval]],
    start_budget_s: float,
) -> dict[str, dict[str, Any]]:
    """Per fault kind: how long until every room it touched that should be live was live again."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    over: dict[str, int] = Counter()
    for f in faults:
        rooms = [f.room_id] if f.room_id is not None else list(should)
        worst = 0.0
        for room_id in rooms:
            wanted = union((s + start_budget_s, e) for s, e in should.get(room_id, []))
            if not covers(wanted, f.at):
                continue
            end = next(e for s, e in wanted if s <= f.at < e)
            back = _live_again(live.get(room_id, []), f.at)
            worst = max(worst, min(back, end) - f.at)
        by_kind[f.kind].append(worst)
        if worst > f.budget_s:
            over[f.kind] += 1
    return {
        kind: {
            "count": len(values),
            "p50_s": round(statistics.median(values), 1),
            "p99_s": round(percentile(values, 99) or 0.0, 1),
            "max_s": round(max(values), 1),
            "over_budget": over[kind],
        }
        for kind, values in sorted(by_kind.items())
    }


def _live_again(live: list[Interval], at: float) -> float:
    """When the room is live at or after ``at`` (for good: the first live interval still open after ``at``
    that starts at or after the last outage following it)."""
    for start, end in live:
        if start <= at < end:
            # Still live at the fault (it did not bring the room down): recovered at once, unless the room
            # went down later within this interval's end -- the next interval covers that.
            return at
        if start > at:
            return start
    return float("inf")
