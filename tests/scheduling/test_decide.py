"""The reconciler's decision, as a table: desired state × actual state → one action."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from orchestrator.scheduling.reconciler import Actual, decide
from orchestrator.scheduling.rooms import ManagedRoom, RoomsFileError, load_rooms_file
from orchestrator.scheduling.schedules import evaluate

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
T = NOW.timestamp()


def room(**over: Any) -> ManagedRoom:
    data = {
        "room_id": "r1",
        "template": {"output_urls": ["rtmp://a/live"]},
        "schedule": {
            "timezone": "UTC",
            "windows": [{"kind": "cron", "start": "0 10 * * *", "duration": "PT4H"}],
        },
        "restart": {
            "backoff_initial_s": 10,
            "backoff_max_s": 300,
            "max_restarts_per_hour": 3,
            "rtmp_grace_s": 30,
            "refresh_wait_s": 20,
        },
        **over,
    }
    return ManagedRoom.model_validate(data)


def actual(
    job_state: str | None = "PROCESSING",
    rtmp: dict[str, Any] | None = None,
    restarts: list[float] | None = None,
    refreshed: dict[str, int] | None = None,
) -> Actual:
    return Actual("job-1" if job_state else None, job_state, rtmp or {}, restarts or [], refreshed or {})


def link(state: str, down_s: float) -> dict[str, Any]:
    return {"state": state, "since_ms": int((T - down_s) * 1000)}


LIVE = room()  # 10:00-14:00 UTC: live at NOW (12:00)
OFF = room(
    schedule={"timezone": "UTC", "windows": [{"kind": "cron", "start": "0 20 * * *", "duration": "PT1H"}]}
)


@pytest.mark.parametrize(
    ("r", "a", "kind"),
    [
        (LIVE, actual(None), "start"),
        (LIVE, actual("PROCESSING"), None),
        (LIVE, actual("WAITING"), None),
        (LIVE, actual("FAILED"), "restart"),
        (LIVE, actual("BLOCKED"), "restart"),
        (LIVE, actual("SUCCEED"), "restart"),
        # END comes by callback (MSS_A does not sign the body): the harmless repair first, then restart
        (LIVE, actual("PROCESSING", {"rtmp://a/live": link("END", 1)}), "refresh"),
        (LIVE, actual("CANCELED"), "restart"),
        (LIVE, actual("PROCESSING", {"rtmp://a/live": link("DISCONNECTED", 5)}), None),  # within the grace
        (LIVE, actual("PROCESSING", {"rtmp://a/live": link("RECONNECTING", 31)}), "refresh"),
        (
            LIVE,
            actual(
                "PROCESSING",
                {"rtmp://a/live": link("DISCONNECTED", 60)},
                refreshed={"rtmp://a/live": int((T - 25) * 1000)},
            ),
            "restart",
        ),
        (
            LIVE,
            actual(
                "PROCESSING",
                {"rtmp://a/live": link("DISCONNECTED", 60)},
                refreshed={"rtmp://a/live": int((T - 5) * 1000)},
            ),
            None,
        ),  # give the refresh a chance
        (LIVE, actual("PROCESSING", {"rtmp://a/live": link("CONNECTED", 600)}), None),
        (OFF, actual("PROCESSING"), "stop"),
        (OFF, actual("WAITING"), "stop"),
        (OFF, actual("FAILED"), None),
        (OFF, actual(None), None),
        (room(paused=True), actual(None), None),
        (room(paused=True, schedule=OFF.schedule), actual("PROCESSING"), None),
    ],
)
def test_decide_table(r: ManagedRoom, a: Actual, kind: str | None) -> None:
    action = decide(r, evaluate(r.schedule, NOW), a, T)
    assert (action.kind if action else None) == kind, action


def test_finished_job_of_an_earlier_window_means_start_not_restart() -> None:
    d = evaluate(LIVE.schedule, NOW)  # window 10:00-14:00
    yesterday = Actual("job-0", "SUCCEED", {}, [T - 100], {}, int((T - 86_400) * 1000))
    action = decide(LIVE, d, yesterday, T)
    assert action is not None and action.kind == "start" and action.fence.startswith("live:2026-11-21T10:00")
    today = Actual(
        "job-1", "SUCCEED", {}, [], {}, int((T - 60) * 1000)
    )  # started in this window, ended early
    assert decide(LIVE, d, today, T).kind == "restart"  # type: ignore[union-attr]


def test_a_job_ended_in_overlapping_windows_is_a_repair_of_the_live_period() -> None:
    """Soak finding (soak-095): windows 00:00 for 23 h and 20:13 for 5 h 41 min overlap into one live
    period. The job started in the first was BLOCKED in the second: a restart that pages, not "the window
    began"."""
    overlapping = room(
        schedule={
            "timezone": "Europe/Berlin",
            "windows": [
                {"kind": "cron", "start": "13 20 * * *", "duration": "PT5H41M"},
                {"kind": "cron", "start": "0 0 * * *", "duration": "PT23H"},
            ],
        }
    )
    at = datetime(2026, 3, 28, 19, 21, tzinfo=UTC)  # 20:21 in Berlin: both windows
    d = evaluate(overlapping.schedule, at)
    started = int(datetime(2026, 3, 28, 8, 0, tzinfo=UTC).timestamp() * 1000)  # in the 00:00 window
    blocked = Actual("job-1", "BLOCKED", {}, [], {}, started)
    action = decide(overlapping, d, blocked, at.timestamp())
    assert action is not None and (action.kind, action.alert) == ("restart", "room_blocked")
    # These windows chain day after day: the room has not been off since, and any job of it is a repair.
    yesterday = Actual("job-0", "FAILED", {}, [], {}, started - 86_400_000)
    assert decide(overlapping, d, yesterday, at.timestamp()).kind == "restart"  # type: ignore[union-attr]


def test_a_job_blocked_as_its_window_ends_pages_once() -> None:
    """Soak finding (soak-075): blocked 37 s before its window ended, the job was seen BLOCKED after the end:
    no restart, so no page -- and the next window would start into the same content review."""
    d = evaluate(OFF.schedule, NOW)  # the room is off now
    blocked = actual("BLOCKED")
    action = decide(OFF, d, blocked, T)
    assert action is not None and (action.kind, action.alert) == ("wait", "room_blocked")
    paged = Actual("job-1", "BLOCKED", {}, [], {}, None, ("room_blocked",))
    assert decide(OFF, d, paged, T) is None  # once: the page is open until the room is live again
    assert decide(OFF, d, actual("FAILED"), T) is None  # a failure outside the window needs nobody


def test_backoff_doubles_then_circuit_opens() -> None:
    failed = actual("FAILED")
    d = evaluate(LIVE.schedule, NOW)
    first = decide(LIVE, d, failed, T)
    assert first is not None and first.kind == "restart" and first.fence.endswith("attempt0")
    one = actual("FAILED", restarts=[T - 5])
    assert decide(LIVE, d, one, T).kind == "wait"  # type: ignore[union-attr]  # 10 s backoff
    assert decide(LIVE, d, actual("FAILED", restarts=[T - 11]), T).kind == "restart"  # type: ignore[union-attr]
    two = actual("FAILED", restarts=[T - 100, T - 15])
    assert decide(LIVE, d, two, T).kind == "wait"  # type: ignore[union-attr]  # 20 s now
    three = actual("FAILED", restarts=[T - 3000, T - 200, T - 100])
    opened = decide(LIVE, d, three, T)
    assert opened is not None and opened.kind == "circuit_open"
    old = actual("FAILED", restarts=[T - 4000, T - 3700, T - 3601])  # older than an hour: forgotten
    assert decide(LIVE, d, old, T).kind == "restart"  # type: ignore[union-attr]


def test_fences_name_window_and_cause() -> None:
    d = evaluate(LIVE.schedule, NOW)
    start = decide(LIVE, d, actual(None), T)
    assert start is not None and start.fence == "live:2026-11-21T10:00:00Z"
    restart = decide(LIVE, d, actual("FAILED"), T)
    assert restart is not None and restart.fence == "live:2026-11-21T10:00:00Z:job-1:attempt0"
    stop = decide(OFF, evaluate(OFF.schedule, NOW), actual("PROCESSING"), T)
    assert stop is not None and stop.fence == "off:2026-11-21T20:00:00Z"


def test_alerts_for_blocked_and_rtmp_end() -> None:
    d = evaluate(LIVE.schedule, NOW)
    assert decide(LIVE, d, actual("BLOCKED"), T).alert == "room_blocked"  # type: ignore[union-attr]
    end = actual("PROCESSING", {"rtmp://a/live": link("END", 1)})
    assert decide(LIVE, d, end, T).alert == "rtmp_end"  # type: ignore[union-attr]


def test_example_rooms_file_is_valid() -> None:
    rooms = load_rooms_file(ROOT / "config" / "rooms.example.yaml")
    assert [r.room_id for r in rooms] == [
        "26f065244f754b3aa853b649a21aaf66",
        "0a0b0c0d0e0f40aa8bb9ccddeeff0011",
    ]
    assert rooms[0].schedule.windows[0].duration == timedelta(hours=4)  # type: ignore[union-attr]
    assert "replace-with-the-platform-stream-key" not in str(rooms[0].public())
    assert "replace-with-the-platform-stream-key" in rooms[0].secrets()


def test_rooms_file_errors_name_each_field(tmp_path: Path) -> None:
    bad = tmp_path / "rooms.yaml"
    bad.write_text(
        "rooms:\n"
        "  - room_id: ok-room\n    template: {output_urls: []}\n    schedule: {timezone: Nowhere/City}\n"
        "  - room_id: 'bad room'\n    template: {output_urls: [rtmp://x]}\n"
        "    schedule: {windows: [{kind: cron, start: '0 25 * * *', duration: PT1H}]}\n"
    )
    with pytest.raises(RoomsFileError) as info:
        load_rooms_file(bad)
    locations = [loc for loc, _ in info.value.problems]
    assert "rooms[0].template.output_urls" in locations
    assert "rooms[0].schedule.timezone" in locations
    assert "rooms[1].room_id" in locations
    assert any(loc.startswith("rooms[1].schedule.windows.0") for loc in locations)


def test_operator_text_names_the_rooms_time_zone_and_never_none() -> None:
    from datetime import UTC, datetime

    from orchestrator.scheduling.schedules import describe_instant, local_iso

    instant = datetime(2026, 12, 2, 11, 0, tzinfo=UTC)
    assert describe_instant(instant, "Asia/Shanghai") == "2026-12-02 19:00 Asia/Shanghai (11:00 UTC)"
    late = datetime(2026, 12, 2, 20, 30, tzinfo=UTC)
    assert describe_instant(late, "Asia/Shanghai") == "2026-12-03 04:30 Asia/Shanghai (2026-12-02 20:30 UTC)"
    assert describe_instant(None, "UTC") == "none scheduled"
    assert local_iso(instant, "Asia/Shanghai") == "2026-12-02T19:00:00+08:00"
    # a room that should be off with no next window: the stop's reason has no Python None in it
    room = LIVE.model_copy(update={"schedule": LIVE.schedule.model_copy(update={"windows": []})})
    stop = decide(room, evaluate(room.schedule, NOW), actual("PROCESSING"), T)
    assert stop is not None and stop.kind == "stop"
    assert "None" not in stop.reason and "none scheduled" in stop.reason


def test_replicas_with_skewed_clocks_never_flap_a_boundary() -> None:
    """Soak finding: at a window's end the replica whose clock was ahead stopped the job while one behind
    still saw the window and restarted it (a job started after its window). With a boundary tolerance
    larger than the skew, every stop comes after every restart, and every start after every stop."""
    from orchestrator.scheduling.reconciler import settled

    start, end = datetime(2026, 3, 29, 0, 0, tzinfo=UTC), datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    room = ManagedRoom.model_validate(
        {
            "room_id": "r",
            "template": {"output_urls": ["rtmp://x/y"]},
            "schedule": {
                "timezone": "UTC",
                "windows": [{"kind": "once", "start": start.isoformat(), "end": end.isoformat()}],
            },
        }
    )
    skews, tolerance = (-1.5, 0.0, 1.5), 4.0
    for boundary in (start, end):
        wants_live, wants_off = [], []  # true instants at which some replica would start / stop
        t = boundary.timestamp() - 20
        while t < boundary.timestamp() + 20:
            for skew in skews:
                now = t + skew
                desired = evaluate(room.schedule, datetime.fromtimestamp(now, UTC))
                if settled(room, desired, now, tolerance):
                    (wants_live if desired.live else wants_off).append(t)
            t += 0.25
        assert all(a < b for a in wants_live for b in wants_off) or all(
            b < a for a in wants_live for b in wants_off
        )
        # without the tolerance they overlap: one replica stops while another starts
    now = end.timestamp() - 1
    assert not settled(room, evaluate(room.schedule, datetime.fromtimestamp(now, UTC)), now, tolerance)
    assert settled(room, evaluate(room.schedule, datetime.fromtimestamp(now, UTC)), now, 0.0)
