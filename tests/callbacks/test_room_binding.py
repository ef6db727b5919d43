"""Callback URLs bound to their room: an MSS_A signature verifies for one room only.

MSS_A signs the callback URL and the time, not the body. With one URL for every room, a used
``hwSecret``/``hwTime`` with another room's body was applied (a forged RTMP END stopped a live job). Every
job the daemon starts is given the profile URL plus ``room_id=<room>``; the receiver verifies that URL,
refuses a body naming another room, and remembers used signatures per signed URL.
"""

from __future__ import annotations

import json
import time
from typing import Any

from orchestrator.providers.metastudio.callbacks import mss_a_head_headers, mss_a_url
from orchestrator.providers.metastudio.profiles import room_callback_url
from tests.callbacks.conftest import KEY, PATH, Daemon, rtmp, switch

A, B, JOB_A, JOB_B = "room-a", "room-b", "job-a", "job-b"


async def _two_rooms(daemon: Daemon) -> None:
    for room, job in ((A, JOB_A), (B, JOB_B)):
        await daemon.store.register_room(room)
        await daemon.store.set_current_job(room, job)


def _body(event_type: str, message: dict[str, Any]) -> bytes:
    return json.dumps({"event_type": event_type, "message": json.dumps(message)}).encode()


def _configured(daemon: Daemon, room: str, profile: str = "default") -> str:
    """The URL the daemon gives MetaStudio for ``room`` (what MetaStudio signs)."""
    return room_callback_url(daemon.profile_url(profile), room)


async def _post(
    daemon: Daemon, url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with daemon.http.post(
        url, data=body, headers={"Content-Type": "application/json", **(headers or {})}
    ) as resp:
        return resp.status, await resp.json()


async def test_a_signature_for_one_room_never_applies_to_another(daemon: Daemon) -> None:
    await _two_rooms(daemon)
    now = int(time.time() * 1000)
    signed_for_a = mss_a_url(_configured(daemon, A), KEY, now)
    # A's signed URL with B's body (a forged END for B's live job): refused, nothing applied.
    status, error = await _post(
        daemon, signed_for_a, _body("RTMP_STREAM_STATE_CHANGE", rtmp(B, JOB_B, "END"))
    )
    assert status == 401 and error["error_code"] == "CALLBACK_ROOM_MISMATCH"
    # A's signature moved to B's URL: it does not verify (the room is in what was signed).
    moved = signed_for_a.replace(f"room_id={A}", f"room_id={B}")
    status, error = await _post(daemon, moved, _body("RTMP_STREAM_STATE_CHANGE", rtmp(B, JOB_B, "END")))
    assert status == 401 and error["error_code"] == "CALLBACK_BAD_SIGNATURE"
    assert (await daemon.room(B))["rtmp"] == {}
    # The genuine one for A is applied.
    status, body = await _post(
        daemon, signed_for_a, _body("RTMP_STREAM_STATE_CHANGE", rtmp(A, JOB_A, "CONNECTED"))
    )
    assert (status, body["outcome"]) == (200, "applied")


async def test_two_rooms_in_the_same_millisecond_do_not_collide(daemon: Daemon) -> None:
    await _two_rooms(daemon)
    now = int(time.time() * 1000)
    for room, job, seq in ((A, JOB_A, 3), (B, JOB_B, 4)):
        status, body = await _post(
            daemon,
            mss_a_url(_configured(daemon, room), KEY, now),
            _body("SHOOT_SCRIPT_SWITCH", switch(room, job, seq)),
        )
        assert (status, body["outcome"]) == (200, "applied"), body
    assert (await daemon.room(A))["paragraph_seq"] == "3"
    assert (await daemon.room(B))["paragraph_seq"] == "4"


async def test_headers_and_unsigned_profiles_check_the_room_too(daemon: Daemon) -> None:
    await _two_rooms(daemon)
    now = int(time.time() * 1000)
    url = _configured(daemon, A, "head")
    forged = _body("SHOOT_SCRIPT_SWITCH", switch(B, JOB_B, 9))
    status, error = await _post(daemon, url, forged, mss_a_head_headers(url, KEY, now))
    assert status == 401 and error["error_code"] == "CALLBACK_ROOM_MISMATCH"
    status, error = await _post(daemon, _configured(daemon, A, "none"), forged)
    assert status == 401 and error["error_code"] == "CALLBACK_ROOM_MISMATCH"
    status, error = await _post(daemon, f"{daemon.url}{PATH}/none?room_id=bad%20id", forged)
    assert status == 404 and error["error_code"] == "CALLBACK_NOT_MANAGED"


async def test_jobs_started_with_the_bare_profile_url_keep_working(daemon: Daemon) -> None:
    await _two_rooms(daemon)
    status, body = await daemon.send("SHOOT_SCRIPT_SWITCH", switch(A, JOB_A, 2))  # no room in the URL
    assert (status, body["outcome"]) == (200, "applied")
