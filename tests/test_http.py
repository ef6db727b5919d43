"""The HTTP server's contract: probes, one JSON error shape for every error, body limits, request ids."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from orchestrator.app import create_app
from orchestrator.web.errors import ApiError
from tests.support.server import serving


def _app_with_test_routes(settings: Any) -> web.Application:
    app = create_app(settings)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("kaboom: internal detail that must not leak")

    async def unauthorized(request: web.Request) -> web.Response:
        raise web.HTTPUnauthorized()

    async def api_error(request: web.Request) -> web.Response:
        raise ApiError(422, "ROOM_INVALID", "room_id must not be empty")

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"size": len(await request.read())})

    app.router.add_get("/test/boom", boom)
    app.router.add_get("/test/unauthorized", unauthorized)
    app.router.add_get("/test/api-error", api_error)
    app.router.add_post("/test/echo", echo)
    return app


@pytest.fixture
async def base_url(make_settings: Any) -> Any:
    settings = make_settings(server={"max_body_bytes": 4096, "read_timeout_s": 0.5})
    async with serving(_app_with_test_routes(settings), settings) as url:
        yield url


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_healthz_and_readyz(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{base_url}/healthz") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"
    async with http.get(f"{base_url}/readyz") as resp:
        body = await resp.json()
        assert resp.status == 200, body
        assert body == {"ready": True, "draining": False, "checks": {"redis": {"ok": True}}}


def _check_error(body: dict[str, Any], code: str) -> None:
    assert body["error_code"] == code
    assert isinstance(body["error_msg"], str) and body["error_msg"]
    assert set(body) == {"error_code", "error_msg", "request_id"}


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nowhere", 404, "NOT_FOUND"),
        ("POST", "/healthz", 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/test/unauthorized", 401, "UNAUTHORIZED"),
        ("GET", "/test/api-error", 422, "ROOM_INVALID"),
        ("GET", "/test/boom", 500, "INTERNAL_ERROR"),
    ],
)
async def test_errors_are_json(
    base_url: str, http: aiohttp.ClientSession, method: str, path: str, status: int, code: str
) -> None:
    async with http.request(method, f"{base_url}{path}", headers={"Accept": "text/html"}) as resp:
        assert resp.status == status
        assert resp.content_type == "application/json"
        text = await resp.text()
        body = await resp.json()
    _check_error(body, code)
    assert body["request_id"] == resp.headers["X-Request-Id"]
    assert "Traceback" not in text and "kaboom" not in text
    if status == 405:
        assert resp.headers["Allow"] == "GET,HEAD" or "GET" in resp.headers["Allow"]


async def test_body_over_limit_is_413(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{base_url}/test/echo", data=b"x" * 4097) as resp:
        assert resp.status == 413
        _check_error(await resp.json(), "PAYLOAD_TOO_LARGE")
    async with http.post(f"{base_url}/test/echo", data=b"x" * 4096) as resp:
        assert resp.status == 200
        assert (await resp.json()) == {"size": 4096}


async def test_chunked_body_over_limit_is_413(base_url: str, http: aiohttp.ClientSession) -> None:
    async def chunks() -> Any:
        for _ in range(10):
            yield b"y" * 1000

    async with http.post(f"{base_url}/test/echo", data=chunks()) as resp:
        assert resp.status == 413
        _check_error(await resp.json(), "PAYLOAD_TOO_LARGE")


async def _raw(base_url: str, payload: bytes, *, then: bytes = b"", pause_s: float = 0.0) -> bytes:
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(payload)
    await writer.drain()
    if pause_s:
        await asyncio.sleep(pause_s)
        if then:
            writer.write(then)
    # One response: headers, then Content-Length bytes (the server may linger before closing).
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    body = await asyncio.wait_for(reader.readexactly(length), timeout=5)
    writer.close()
    return head + body


async def test_slow_body_is_408_and_frees_the_handler(base_url: str) -> None:
    request = b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"z" * 10
    loop = asyncio.get_running_loop()
    started = loop.time()
    data = await _raw(base_url, request)  # never sends the other 90 bytes
    elapsed = loop.time() - started
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data
    assert b'"error_code": "REQUEST_TIMEOUT"' in body
    assert elapsed < 4  # the read timeout is 0.5 s; the connection was closed by the server


async def test_malformed_request_gets_json_400(base_url: str) -> None:
    data = await _raw(base_url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400", data
    assert b"application/json" in head
    assert b'"error_code": "BAD_REQUEST"' in body
    assert b"<html" not in body.lower()


async def test_request_id_is_echoed_or_generated(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{base_url}/healthz", headers={"X-Request-Id": "abc-123"}) as resp:
        assert resp.headers["X-Request-Id"] == "abc-123"
    async with http.get(f"{base_url}/healthz") as resp:
        generated = resp.headers["X-Request-Id"]
        assert len(generated) == 32
    # A hostile id (log injection, absurd length) is replaced, not echoed.
    async with http.get(f"{base_url}/nowhere", headers={"X-Request-Id": "x" * 500}) as resp:
        assert resp.headers["X-Request-Id"] != "x" * 500
        assert (await resp.json())["request_id"] == resp.headers["X-Request-Id"]


async def test_startup_heap_is_frozen_out_of_the_gc(make_settings: Any) -> None:
    import gc

    gc.unfreeze()
    settings = make_settings()
    async with serving(create_app(settings), settings):
        assert gc.get_freeze_count() > 0
    gc.unfreeze()
