"""The console's way in and its read-outs, over HTTP against an in-process daemon on a real Redis: sessions
(cookie attributes, expiry, logout, one-time links, operators), CSRF and origin checks, the login limit,
live streams, tiles, windows, activity, alerts, the daemon page's data, and a single reply's cancel."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from yarl import URL

from orchestrator.appkeys import AUDIENCE, REDIS, SETTINGS
from orchestrator.scheduling.rooms import ManagedRoom
from orchestrator.scheduling.schedules import Schedule, upcoming_windows
from orchestrator.store import keys
from orchestrator.store.events import RoomEvents
from orchestrator.store.replies import Reply
from orchestrator.web.console import COOKIE, tile
from orchestrator.web.server import start_public
from tests.scheduling.conftest import ADMIN, ROOM, Daemon, daemon_for, managed_room, until
from tests.support.redis_server import free_port

OPERATOR_TOKEN = "operator-alice-token-0001"


def _daemon(make_settings: Any, tmp_path: Path, sandbox_url: str, **kw: Any) -> Any:
    return daemon_for(
        make_settings,
        tmp_path,
        sandbox_url,
        admin={"operators": [{"name": "alice", "token": OPERATOR_TOKEN}], **kw.pop("admin", {})},
        **kw,
    )


async def _login(daemon: Daemon, token: str = ADMIN) -> tuple[aiohttp.ClientSession, dict[str, Any]]:
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
    browser = aiohttp.ClientSession(cookie_jar=jar)
    async with browser.post(f"{daemon.url}/console/login", json={"token": token}) as resp:
        assert resp.status == 200, await resp.text()
        return browser, await resp.json()


async def test_login_sets_a_strict_httponly_cookie_that_lasts_the_session(
    make_settings: Any, tmp_path: Path, sandbox: Any, redis_client: aioredis.Redis
) -> None:
    async with _daemon(make_settings, tmp_path, sandbox[1]) as daemon:
        async with daemon.http.post(f"{daemon.url}/console/login", json={"token": ADMIN}) as resp:
            assert resp.status == 200
            cookie = resp.headers["Set-Cookie"]
            body = await resp.json()
        assert cookie.startswith(f"{COOKIE}=")
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "samesite", "max-age", "path"} <= attributes
        assert "SameSite=Strict" in cookie and "Max-Age=28800" in cookie
        assert "secure" not in attributes  # admin.console.secure_cookie is off by default (plain HTTP)
        assert body["operator"] == "admin" and len(body["csrf"]) >= 24
        # Stored under a digest, with the session's expiry as its TTL; the cookie value is not in Redis.
        sid = cookie.split(";")[0].split("=", 1)[1]
        found = [k async for k in redis_client.scan_iter(match="orch:console:session:*")]
        assert len(found) == 1 and sid.encode() not in found[0]
        assert 28700 < await redis_client.ttl(found[0]) <= 28800


async def test_a_session_reads_and_with_its_csrf_token_changes(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    async with _daemon(make_settings, tmp_path, sandbox[1]) as daemon:
        await daemon.configs.put(managed_room([{"kind": "always"}], paused=True))
        browser, session = await _login(daemon)
        async with browser:
            async with browser.get(f"{daemon.url}/api/rooms") as resp:
                assert resp.status == 200
            # A change without the token: refused, and nothing changed.
            async with browser.post(f"{daemon.url}/api/rooms/{ROOM}/resume") as resp:
                assert resp.status == 403
                assert (await resp.json())["error_code"] == "CSRF_FAILED"
            assert (await daemon.configs.get(ROOM)).paused  # type: ignore[union-attr]
            async with browser.post(
                f"{daemon.url}/api/rooms/{ROOM}/resume", headers={"X-CSRF-Token": "wrong" * 8}
            ) as resp:
                assert resp.status == 403
            async with browser.post(
                f"{daemon.url}/api/rooms/{ROOM}/resume", headers={"X-CSRF-Token": session["csrf"]}
            ) as resp:
                assert resp.status == 200, await resp.text()
            assert not (await daemon.configs.get(ROOM)).paused  # type: ignore[union-attr]
            # Another origin is refused whatever it carries (a cross-site request, a WebSocket hijack).
            async with browser.get(
                f"{daemon.url}/api/rooms", headers={"Origin": "http://evil.example"}
            ) as resp:
                assert resp.status == 403
                assert (await resp.json())["error_code"] == "CROSS_ORIGIN"
            async with browser.get(f"{daemon.url}/api/rooms", headers={"Origin": daemon.url}) as resp:
                assert resp.status == 200


async def test_logout_ends_the_session_everywhere(make_settings: Any, tmp_path: Path, sandbox: Any) -> None:
    async with _daemon(make_settings, tmp_path, sandbox[1]) as daemon:
        browser, session = await _login(daemon)
        async with browser:
            cookie = {COOKIE: browser.cookie_jar.filter_cookies(URL(daemon.url))[COOKIE].value}
            async with browser.post(
                f"{daemon.url}/console/logout", headers={"X-CSRF-Token": session["csrf"]}
            ) as resp:
                assert resp.status == 200
                assert (
                    f'{COOKIE}=""' in resp.headers["Set-Cookie"] or "Max-Age=0" in resp.headers["Set-Cookie"]
                )
            # The old cookie, replayed by someone who kept it: dead.
            async with daemon.http.get(f"{daemon.url}/api/rooms", cookies=cookie) as resp:
                assert resp.status == 401
            async with daemon.http.get(f"{daemon.url}/console/session", cookies=cookie) as resp:
                assert resp.status == 401


async def test_an_operator_logs_in_under_their_name_and_bad_tokens_are_limited(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    async with _daemon(
        make_settings, tmp_path, sandbox[1], admin={"console": {"login_attempts_per_minute": 3}}
    ) as daemon:
        browser, session = await _login(daemon, OPERATOR_TOKEN)
        await browser.close()
        assert session["operator"] == "alice"
        status, _ = await daemon.api("GET", "/api/rooms", token=OPERATOR_TOKEN)  # as a bearer token too
        assert status == 200
        answers = []
        for _ in range(5):
            async with daemon.http.post(f"{daemon.url}/console/login", json={"token": "guess-" * 4}) as resp:
                answers.append((resp.status, (await resp.json())["error_code"]))
        assert answers[:3] == [(401, "LOGIN_FAILED")] * 3
        assert answers[3:] == [(429, "TOO_MANY_LOGINS")] * 2
        async with daemon.http.post(f"{daemon.url}/console/login", data=b"{") as resp:
            assert resp.status == 429  # still limited: a malformed body is not a way around it


async def test_a_one_time_link_logs_in_once(make_settings: Any, tmp_path: Path, sandbox: Any) -> None:
    async with _daemon(make_settings, tmp_path, sandbox[1]) as daemon:
        status, link = await daemon.api("POST", "/api/console/links", json={"operator": "alice"})
        assert status == 201 and link["operator"] == "alice"
        assert link["url"].startswith(f"{daemon.url}/console/login?once=")
        async with daemon.http.get(link["url"], allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/console/"
            assert "HttpOnly" in resp.headers["Set-Cookie"]
        async with daemon.http.get(link["url"], allow_redirects=False) as resp:
            assert resp.status == 302 and "expired=1" in resp.headers["Location"]
            assert "Set-Cookie" not in resp.headers
        status, body = await daemon.api("POST", "/api/console/links", json={"operator": "mallory"})
        assert status == 422 and body["error_code"] == "LINK_INVALID"


async def test_the_console_is_served_with_its_own_rules_and_only_its_files(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    async with _daemon(make_settings, tmp_path, sandbox[1]) as daemon:
        async with daemon.http.get(f"{daemon.url}/", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/console/"
        async with daemon.http.get(f"{daemon.url}/console/") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            assert "script-src" not in resp.headers["Content-Security-Policy"]  # default-src 'self' covers it
            assert resp.headers["X-Frame-Options"] == "DENY"
        for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
            async with daemon.http.get(f"{daemon.url}/console/assets/{name}") as resp:
                assert resp.status == 200 and resp.content_type == kind
        for bad in ("../app.py", "..%2Fapp.py", ".hidden.js", "nothing.js", "console.py"):
            async with daemon.http.get(f"{daemon.url}/console/assets/{bad}") as resp:
                assert resp.status == 404, bad
                assert (await resp.json())["error_code"] == "NOT_FOUND"


async def test_the_console_is_not_on_the_public_listener(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    public = free_port()
    async with _daemon(make_settings, tmp_path, sandbox[1], admin={}) as daemon:
        settings = daemon.app[SETTINGS]
        server = settings.server.model_copy(update={"public_port": public})
        runner = await start_public(daemon.app, settings.model_copy(update={"server": server}))
        try:
            for path in ("/", "/console/", "/console/assets/console.js", "/console/session", "/api/overview"):
                async with daemon.http.get(f"http://127.0.0.1:{public}{path}", allow_redirects=False) as resp:
                    assert resp.status == 404, path
            async with daemon.http.post(
                f"http://127.0.0.1:{public}/console/login", json={"token": ADMIN}
            ) as resp:
                assert resp.status == 404
        finally:
            await runner.cleanup()


def test_tiles_say_what_a_room_is_doing() -> None:
    now = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)  # 18:00 in Shanghai
    room = ManagedRoom.model_validate(
        {
            "room_id": "r1",
            "name": "Shoes",
            "template": {"output_urls": ["rtmp://a/live"], "stream_keys": ["k"]},
            "schedule": {
                "timezone": "Asia/Shanghai",
                "windows": [{"kind": "cron", "start": "0 20 * * *", "duration": "PT2H"}],
            },
        }
    )
    off = tile("r1", {}, room, now)
    assert off["status"] == "off" and off["desired"] == "off"
    assert off["next_boundary_local"] == "2026-12-07T20:00:00+08:00"  # the room's own zone
    live = tile(
        "r1",
        {
            "job_state": "PROCESSING",
            "paragraph_title": "Intro",
            "product_title": "Sneaker",
            "viewers": "42",
            "rtmp": {"rtmp://a/live": {"state": "CONNECTED"}},
        },
        room,
        now,
    )
    assert (live["status"], live["paragraph"], live["product"], live["viewers"]) == (
        "live",
        "Intro",
        "Sneaker",
        42,
    )
    assert live["links"] == {"rtmp://a/live": "CONNECTED"} and live["vendor"] == "metastudio"
    assert tile("r1", {"job_state": "WAITING"}, room, now)["status"] == "starting"
    assert tile("r1", {"open_alerts": ["start_failed"]}, room, now)["status"] == "failing"
    paused = room.model_copy(update={"paused": True})
    assert tile("r1", {}, paused, now)["status"] == "paused"
    assert tile("r1", {"job_state": "PROCESSING"}, paused, now)["status"] == "live"  # still plays
    in_window = datetime(2026, 12, 7, 12, 30, tzinfo=UTC)  # 20:30 in Shanghai: wanted, not yet running
    assert tile("r1", {}, room, in_window)["status"] == "starting"


def test_upcoming_windows_follow_the_schedule() -> None:
    schedule = Schedule.model_validate(
        {
            "timezone": "America/New_York",
            "windows": [{"kind": "cron", "start": "0 9 * * 1-5", "duration": "PT8H"}],
            "blackout_dates": ["2026-12-09"],
        }
    )
    at = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)  # Monday 10:00 in New York: inside today's window
    found = upcoming_windows(schedule, at, 3)
    assert [(s.isoformat() if s else None, e.isoformat() if e else None) for s, e in found] == [
        ("2026-12-07T14:00:00+00:00", "2026-12-07T22:00:00+00:00"),
        ("2026-12-08T14:00:00+00:00", "2026-12-08T22:00:00+00:00"),
        ("2026-12-10T14:00:00+00:00", "2026-12-10T22:00:00+00:00"),  # Wednesday is blacked out
    ]
    always = Schedule.model_validate({"timezone": "UTC", "windows": [{"kind": "always"}]})
    assert upcoming_windows(always, at, 3) == [(None, None)]


async def _sse(
    http: aiohttp.ClientSession, url: str, wanted: int, timeout_s: float = 10, **kw: Any
) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    async with asyncio.timeout(timeout_s), http.get(url, **kw) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        name = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
                if len(events) >= wanted:
                    return events
    return events


async def test_live_streams_send_what_is_written_and_are_capped(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    async with _daemon(make_settings, tmp_path, sandbox[1], admin={"console": {"max_streams": 2}}) as daemon:
        await daemon.configs.put(managed_room([], paused=True))
        headers = {"Authorization": f"Bearer {ADMIN}"}
        await daemon.app[AUDIENCE].events.add(ROOM, "action", action="start", reason="before", outcome="done")
        url = f"{daemon.url}/api/rooms/{ROOM}/events/stream?backlog=5"
        reading = asyncio.create_task(_sse(daemon.http, url, 2, headers=headers))
        tiles = asyncio.create_task(_sse(daemon.http, f"{daemon.url}/api/stream/rooms", 2, headers=headers))
        await asyncio.sleep(0.5)
        # Both slots taken: a third stream is refused, clearly.
        async with daemon.http.get(url, headers=headers) as resp:
            assert resp.status == 503 and (await resp.json())["error_code"] == "TOO_MANY_STREAMS"
        status, _ = await daemon.api("POST", f"/api/rooms/{ROOM}/resume")
        assert status == 200
        await RoomEvents(daemon.app[REDIS]).add(ROOM, "action", action="stop", reason="after", outcome="done")
        entries = await reading
        assert [e["reason"] for _, e in entries] == ["before", "after"]
        assert entries[0][1]["id"] < entries[1][1]["id"]
        (first, all_tiles), (_, changed) = await tiles
        assert first == "tiles" and [t["room_id"] for t in all_tiles] == [ROOM]
        assert changed[0]["room_id"] == ROOM and changed[0]["paused"] is False  # the resume, live


async def test_a_waiting_reply_is_cancelled_once(make_settings: Any, tmp_path: Path, sandbox: Any) -> None:
    async with _daemon(make_settings, tmp_path, sandbox[1]) as daemon:
        await daemon.configs.put(managed_room([], paused=True))
        audience = daemon.app[AUDIENCE]
        _, reply_id, _ = await audience.enqueue(ROOM, Reply("hello", "operator", "INSERT"), source="test")
        status, body = await daemon.api("DELETE", f"/api/rooms/{ROOM}/replies/{reply_id}")
        assert (status, body) == (200, {"reply_id": reply_id, "cancelled": True})
        assert await audience.queue.pending(ROOM) == []
        status, body = await daemon.api("DELETE", f"/api/rooms/{ROOM}/replies/{reply_id}")
        assert status == 404 and body["error_code"] == "REPLY_NOT_WAITING"
        cancelled = [e for e in await daemon.store.events(ROOM, limit=100) if e["kind"] == "reply_cancelled"]
        assert [(e["reply_id"], e["by"]) for e in cancelled] == [(reply_id, "admin")]


async def test_activity_alerts_windows_and_the_daemon_page(
    make_settings: Any, tmp_path: Path, sandbox: Any, redis_client: aioredis.Redis
) -> None:
    async with _daemon(
        make_settings, tmp_path, sandbox[1], admin={"console": {"activity_interval_s": 1}}
    ) as daemon:
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
        await daemon.configs.put(
            managed_room(
                [
                    {
                        "kind": "once",
                        "start": tomorrow.isoformat(),
                        "end": (tomorrow + timedelta(hours=1)).isoformat(),
                    }
                ],
                paused=True,
            )
        )
        state = keys.room_state(ROOM)
        await redis_client.hset(
            state, mapping={"viewers": 10, "audience:comment": 5, "events:reply_inserted": 1}
        )
        await asyncio.sleep(1.2)
        await redis_client.hset(
            state, mapping={"viewers": 30, "audience:comment": 65, "events:reply_inserted": 4}
        )

        async def two_points() -> bool:
            status, body = await daemon.api("GET", f"/api/rooms/{ROOM}/activity?minutes=5")
            return status == 200 and len(body["points"]) >= 2

        await until(two_points, 10)
        _, body = await daemon.api("GET", f"/api/rooms/{ROOM}/activity?minutes=5")
        rising = [p for p in body["points"] if p["viewers"] == 30]
        assert rising and rising[0]["comments_per_min"] == pytest.approx(3600, rel=0.35)  # 60 in ~1 s
        status, body = await daemon.api("GET", f"/api/rooms/{ROOM}/activity?minutes=0")
        assert status == 400 and body["error_code"] == "BAD_QUERY"

        status, body = await daemon.api("GET", f"/api/rooms/{ROOM}/windows?count=3")
        assert status == 200 and len(body["windows"]) == 1
        assert body["windows"][0]["start"] == tomorrow.isoformat()

        await redis_client.hset(state, "alert_open:start_failed", 1796600000)
        await daemon.app[AUDIENCE].events.alert(
            ROOM, "start_failed", "critical", "sent", "the vendor refused"
        )
        status, body = await daemon.api("GET", "/api/alerts")
        assert status == 200
        assert body["open"] == [{"room_id": ROOM, "alert": "start_failed", "since_s": 1796600000}]
        assert body["recent"][0]["text"] == "the vendor refused" and body["recent"][0]["room_id"] == ROOM
        status, tiles = await daemon.api("GET", "/api/overview?status=failing")
        assert [t["room_id"] for t in tiles["rooms"]] == [ROOM] and tiles["counts"] == {"failing": 1}
        status, tiles = await daemon.api("GET", "/api/overview?q=no-such-room")
        assert tiles["rooms"] == [] and tiles["total"] == 1

        async def announced() -> bool:
            _, body = await daemon.api("GET", "/api/daemon")
            return any(r["alive"] for r in body["replicas"])

        await until(announced, 10)
        _, body = await daemon.api("GET", "/api/daemon")
        me = next(r for r in body["replicas"] if r["replica_id"] == body["replica_id"])
        assert me["alive"] and me["pid"] > 0 and "rooms_owned" in me
        assert body["checks"]["redis"]["ok"] and body["redis"]["redis_version"]
        assert body["vendors"]["metastudio"] == {"configured": True, "detail": "credentials set"}
        assert ADMIN not in json.dumps(body)
