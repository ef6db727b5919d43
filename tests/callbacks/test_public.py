"""The public listener (``server.public_port``): vendor routes only, JSON errors, started and stopped by
``serve`` beside the main port. (Every receiver test also runs against it: see the ``daemon`` fixture.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.app import create_app
from orchestrator.appkeys import REACTIONS, ROOM_STORE
from orchestrator.providers.metastudio import web as metastudio
from orchestrator.web.errors import ApiError
from orchestrator.web.public import route as public_route
from orchestrator.web.server import serve
from tests.callbacks.conftest import Daemon, settings_for, switch, with_public_port
from tests.support.redis_server import free_port

ROOM, JOB = "room-public", "job-public"


def route(method: str, path: str) -> Any:
    """The public listener's routing, with the routes the daemon installs (MetaStudio's)."""
    return public_route(method, path, metastudio.PUBLIC_ROUTES)


@pytest.mark.parametrize(
    ("method", "path", "handler", "params"),
    [
        ("POST", "/callbacks/metastudio/live-events", metastudio.live_events, {}),
        (
            "POST",
            "/callbacks/metastudio/live-events/tenant-b",
            metastudio.live_events,
            {"profile": "tenant-b"},
        ),
        ("POST", "/callbacks/metastudio/interaction/tok", metastudio.interaction_callback, {"token": "tok"}),
        ("POST", "/llm/metastudio", metastudio.llm, {}),
    ],
)
def test_route_table(method: str, path: str, handler: Any, params: dict[str, str]) -> None:
    assert route(method, path) == (handler, params)


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("POST", "/callbacks/metastudio/live-events/", 404, None),  # an empty profile segment
        ("POST", "/callbacks/metastudio/live-events/a/b", 404, None),
        ("POST", "/callbacks/metastudio/interaction/", 404, None),
        ("GET", "/api/rooms", 404, None),
        ("GET", "/metrics", 404, None),
        ("GET", "/readyz", 404, None),
        ("GET", "/callbacks/metastudio/live-events", 405, "POST"),
        ("PUT", "/llm/metastudio", 405, "POST"),
        ("POST", "/healthz", 405, "GET"),
    ],
)
def test_route_refusals(method: str, path: str, status: int, allow: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        route(method, path)
    assert caught.value.status == status
    assert caught.value.headers.get("Allow") == allow


@pytest.mark.parametrize("daemon", ["public"], indirect=True)
async def test_only_vendor_routes_are_served_with_json_errors(daemon: Daemon) -> None:
    assert daemon.admin_url is not None and daemon.admin_url != daemon.url
    # The admin API is on the main port only -- even with the right token.
    assert (await daemon.api("/api/rooms"))[0] == 200
    for path in ("/api/rooms", "/metrics", "/readyz", "/nowhere"):
        async with daemon.http.get(f"{daemon.url}{path}", headers={"Authorization": "Bearer x"}) as resp:
            error = await resp.json()
            assert resp.status == 404 and error["error_code"] == "NOT_FOUND", (path, error)
            assert error["request_id"] == resp.headers["X-Request-Id"]
    async with daemon.http.get(f"{daemon.url}/callbacks/metastudio/live-events") as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "POST"
        assert (await resp.json())["error_code"] == "METHOD_NOT_ALLOWED"
    async with daemon.http.get(f"{daemon.url}/healthz") as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "ok"
    # The other vendor routes reach their handlers (both are off in this configuration).
    async with daemon.http.post(f"{daemon.url}/callbacks/metastudio/interaction/t", json={}) as resp:
        assert (resp.status, (await resp.json())["error_code"]) == (404, "INTERACTION_CALLBACK_OFF")
    async with daemon.http.post(f"{daemon.url}/llm/metastudio", json={}) as resp:
        assert (resp.status, (await resp.json())["error_code"]) == (404, "LLM_ENDPOINT_OFF")


async def test_serve_runs_the_public_listener_and_stops_it(make_settings: Any, tmp_path: Path) -> None:
    port, public_port = free_port(), free_port()
    settings = with_public_port(
        settings_for(make_settings, public_port, tmp_path / "journal.jsonl"), public_port
    )
    settings = settings.model_copy(update={"server": settings.server.model_copy(update={"port": port})})
    app = create_app(settings)
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(app, settings, stop))
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(10):
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{public_port}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        daemon = Daemon(
            f"http://127.0.0.1:{public_port}",
            http,
            app[ROOM_STORE],
            app[REACTIONS],
            tmp_path,
            admin_url=f"http://127.0.0.1:{port}",
        )
        await daemon.store.register_room(ROOM)
        await daemon.store.set_current_job(ROOM, JOB)
        assert await daemon.send("SHOOT_SCRIPT_SWITCH", switch(ROOM, JOB, 3)) == (
            200,
            {"result": "ok", "outcome": "applied"},
        )
        assert (await daemon.room(ROOM))["paragraph_seq"] == "3"
        stop.set()
        await asyncio.wait_for(serving, 30)
        for listening in (port, public_port):
            with pytest.raises(aiohttp.ClientConnectionError):
                async with http.get(f"http://127.0.0.1:{listening}/healthz"):
                    pass
