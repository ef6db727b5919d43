"""Secrets never reach the logs: the redactor's rules, then every log path of a running daemon."""

from __future__ import annotations

import io
import json
import logging
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.app import create_app
from orchestrator.appkeys import ROOM_STORE
from orchestrator.logging import MASK, Redactor, configure_logging
from orchestrator.settings import LogFormat, LoggingSettings, secret_values
from orchestrator.web.server import start_public
from tests.callbacks.conftest import settings_for
from tests.support.daemon import Daemon
from tests.support.redis_server import free_port
from tests.support.server import serving

SK = "sk-9f8e7d6c5b4a-TOPSECRET"
ADMIN = "admin-token-0123456789"
CB_KEY = "cbkey-ABCDEFGH12345678"
SECRETS = (SK, ADMIN, CB_KEY)


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"hwSecret": "abc"}, {"hwSecret": MASK}),
        ({"x-hw-mss-secret": "abc"}, {"x-hw-mss-secret": MASK}),
        ({"Authorization": "SDK-HMAC-SHA256 Access=AK"}, {"Authorization": MASK}),
        ({"X-Auth-Token": "t"}, {"X-Auth-Token": MASK}),
        (
            {"headers": {"X-Security-Token": "t", "Host": "h"}},
            {"headers": {"X-Security-Token": MASK, "Host": "h"}},
        ),
        (
            {"config": {"stream_keys": ["a", "b"], "url": "rtmp://x"}},
            {"config": {"stream_keys": MASK, "url": "rtmp://x"}},
        ),
        (
            {"url": "https://h/cb?hwSecret=deadbeef&hwTime=1a"},
            {"url": f"https://h/cb?hwSecret={MASK}&hwTime=1a"},
        ),
        ({"msg": "got secret=abc123 and time_stamp=9"}, {"msg": f"got secret={MASK} and time_stamp=9"}),
        ({"msg": 'body {"key": "k-123456"}'}, {"msg": f'body {{"key": "{MASK}"}}'}),
        ({"msg": f"sk is {SK}!"}, {"msg": f"sk is {MASK}!"}),
        ({"items": (SK, 1)}, {"items": (MASK, 1)}),
        ({"raw": SK.encode()}, {"raw": MASK}),
        ({"monkey": "keys are fine, keyboard too"}, {"monkey": "keys are fine, keyboard too"}),
    ],
)
def test_redactor_table(event: dict[str, Any], expected: dict[str, Any]) -> None:
    redactor = Redactor(values=[SK])
    assert redactor(None, "info", dict(event)) == expected


def test_redactor_values_added_later_and_longest_first() -> None:
    redactor = Redactor()
    redactor.add_values(["streamkey-1", "streamkey-12", "abc"])  # "abc" is too short to search for
    assert redactor.scrub("a streamkey-12 b") == f"a {MASK} b"
    assert redactor.scrub("abc") == "abc"


@given(
    secret=st.text(min_size=4, max_size=40).filter(str.strip),
    left=st.text(max_size=30),
    right=st.text(max_size=30),
)
def test_any_registered_secret_is_masked_anywhere_in_text(secret: str, left: str, right: str) -> None:
    redactor = Redactor(values=[secret])
    assert secret not in redactor.scrub(left + secret + right)


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    redactor = Redactor(values=SECRETS)
    configure_logging(LoggingSettings(format=LogFormat.JSON, level="DEBUG"), redactor, stream=stream)
    yield stream
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)


async def test_no_secret_in_any_log_path(make_settings: Any, log_stream: io.StringIO) -> None:
    settings = make_settings(
        metastudio={
            "sk": SK,
            "ak": "AK-PUBLICISH-1",
            "callback_profiles": {"default": {"public_url": "https://x/cb", "keys": [CB_KEY]}},
        },
        admin={"token": ADMIN},
    )
    assert set(SECRETS) <= secret_values(settings)
    app = create_app(settings, Redactor(values=secret_values(settings)))

    async def leak(request: web.Request) -> web.Response:
        structlog.get_logger("test").info("structlog kw", sk=SK, note=f"inline {ADMIN}")
        logging.getLogger("thirdparty").warning("stdlib positional %s %s", SK, CB_KEY)
        try:
            raise ValueError(f"failure carrying {CB_KEY}")
        except ValueError:
            structlog.get_logger("test").exception("handled exception")
        raise RuntimeError(f"unhandled with {SK}")  # → the error middleware logs the traceback

    app.router.add_get("/test/leak", leak)
    async with serving(app, settings) as url, aiohttp.ClientSession() as http:
        query = {"hwSecret": "f" * 64, "hwTime": "18c", "token": ADMIN}
        headers = {"Authorization": f"Bearer {ADMIN}", "x-hw-mss-secret": "e" * 64}
        async with http.get(f"{url}/test/leak", params=query, headers=headers) as resp:
            assert resp.status == 500
            assert SK not in await resp.text()
        async with http.get(f"{url}/healthz", params=query) as resp:
            assert resp.status == 200
    output = log_stream.getvalue()
    lines = [json.loads(line) for line in output.splitlines()]
    events = {line["event"] for line in lines}
    # The paths really ran (otherwise "no secret" would prove nothing), each with its secret masked.
    assert {"structlog kw", "handled exception", "unhandled error", "request"} <= events
    assert f"stdlib positional {MASK} {MASK}" in events
    assert any("unhandled with" in line.get("exception", "") for line in lines)
    access = [line for line in lines if line["event"] == "request"]
    assert len(access) == 2 and all(line["query"]["hwSecret"] == MASK for line in access)
    for secret in (*SECRETS, "f" * 64, "e" * 64):
        assert secret not in output


def test_no_secret_in_daemon_process_logs(redis_url: str) -> None:
    env = {
        "ORCH_REDIS__URL": redis_url,
        "ORCH_METASTUDIO__SK": SK,
        "ORCH_ADMIN__TOKEN": ADMIN,
        "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__PUBLIC_URL": "https://example.test/cb",
        "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__KEYS": json.dumps([CB_KEY]),
        "ORCH_LOGGING__LEVEL": "DEBUG",
    }
    with Daemon(env) as daemon:
        url = f"{daemon.base_url}/nowhere?hwSecret={SK}&hwTime=18c&token={ADMIN}"
        request = urllib.request.Request(url, headers={"x-hw-mss-secret": CB_KEY, "Authorization": ADMIN})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        assert info.value.code == 404
        daemon.terminate()
        assert daemon.wait() == 0
        output = daemon.output()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(line.get("path") == "/nowhere" for line in lines)  # the access log line was written ...
    for secret in SECRETS:
        assert secret not in output  # ... without any secret


def test_json_when_not_a_tty_console_when_asked(log_stream: io.StringIO) -> None:
    for fmt, is_json in ((LogFormat.AUTO, True), (LogFormat.JSON, True), (LogFormat.CONSOLE, False)):
        stream = io.StringIO()  # not a TTY
        configure_logging(LoggingSettings(format=fmt), Redactor(), stream=stream)
        with structlog.contextvars.bound_contextvars(request_id="rid-1"):
            structlog.get_logger("t").info("hello", room_id="r1")
        line = stream.getvalue().strip()
        if is_json:
            assert json.loads(line) | {"timestamp": None} == {
                "event": "hello",
                "room_id": "r1",
                "request_id": "rid-1",
                "level": "info",
                "logger": "t",
                "timestamp": None,
            }
        else:
            assert "hello" in line and "room_id=r1" in line and "request_id=rid-1" in line
            with pytest.raises(json.JSONDecodeError):
                json.loads(line)


async def test_log_context_does_not_leak_between_keepalive_requests(
    make_settings: Any, log_stream: io.StringIO
) -> None:
    settings = make_settings()
    app = create_app(settings, Redactor())

    async def bind_room(request: web.Request) -> web.Response:
        structlog.contextvars.bind_contextvars(room_id=request.match_info["room"])
        return web.json_response({})

    app.router.add_get("/test/room/{room}", bind_room)
    async with serving(app, settings) as url, aiohttp.ClientSession() as http:  # one keep-alive connection
        async with http.get(f"{url}/test/room/r1") as resp:
            assert resp.status == 200
        async with http.get(f"{url}/healthz") as resp:
            assert resp.status == 200
    access = [json.loads(line) for line in log_stream.getvalue().splitlines() if '"request"' in line]
    assert [line.get("room_id") for line in access] == ["r1", None]
    assert access[0]["request_id"] != access[1]["request_id"]


async def test_interaction_callback_token_in_the_path_is_masked(make_settings: Any) -> None:
    """The vendor CALLBACK-mode URL carries its token in the path: the access line never shows it (logging
    set up as `orchestrator run` does, with every secret of the settings)."""
    token = "interaction-token-secret-42"
    settings = make_settings(
        metastudio={"interaction_token": token}, interaction={"chat_api_key": "sk-chat-secret-43"}
    )
    assert {token, "sk-chat-secret-43"} <= secret_values(settings)
    redactor = Redactor(values=secret_values(settings))
    stream = io.StringIO()
    configure_logging(LoggingSettings(format=LogFormat.JSON, level="DEBUG"), redactor, stream=stream)
    try:
        app = create_app(settings, redactor)
        async with serving(app, settings) as url, aiohttp.ClientSession() as http:
            path = f"/callbacks/metastudio/interaction/{token}"
            async with http.post(f"{url}{path}", data=b"{") as resp:
                assert resp.status == 400  # the token was accepted; the body was not
                assert token not in await resp.text()
    finally:
        structlog.reset_defaults()
        for handler in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(handler)
    output = stream.getvalue()
    access = [json.loads(line) for line in output.splitlines() if '"request"' in line]
    assert access and access[-1]["path"] == f"/callbacks/metastudio/interaction/{MASK}"
    assert token not in output


@pytest.mark.parametrize("listener", ["main", "public"])
@pytest.mark.parametrize("log_accepted", [False, True])
async def test_accepted_callbacks_leave_no_access_line_unless_asked(
    make_settings: Any, log_stream: io.StringIO, tmp_path: Any, listener: str, log_accepted: bool
) -> None:
    """An accepted callback is recorded in its room's event stream; its access line is opt-in
    (logging.access_log_accepted_callbacks). A refused one is always logged, on either listener."""
    port, public_port = free_port(), free_port()
    callbacks_port = public_port if listener == "public" else port
    settings = settings_for(make_settings, callbacks_port, tmp_path / "journal.jsonl")
    settings = settings.model_copy(
        update={
            "server": settings.server.model_copy(
                update={"public_port": public_port if listener == "public" else None}
            ),
            "logging": settings.logging.model_copy(update={"access_log_accepted_callbacks": log_accepted}),
        }
    )
    app = create_app(settings, Redactor())
    async with serving(app, settings, port=port), aiohttp.ClientSession() as http:
        public = await start_public(app, settings) if listener == "public" else None
        try:
            base = f"http://127.0.0.1:{callbacks_port}/callbacks/metastudio/live-events/none"
            await app[ROOM_STORE].register_room("room-log")
            await app[ROOM_STORE].set_current_job("room-log", "job-log")
            message = {"room_id": "room-log", "job_id": "job-log", "shoot_script_sequence_no": "1"}
            good = json.dumps({"event_type": "SHOOT_SCRIPT_SWITCH", "message": message})
            async with http.post(base, data=good) as resp:
                assert resp.status == 200
            async with http.post(base, data=b"{broken") as resp:
                assert resp.status == 400
        finally:
            if public is not None:
                await public.cleanup()
    access = [json.loads(line) for line in log_stream.getvalue().splitlines() if '"request"' in line]
    statuses = [line["status"] for line in access if line["path"].startswith("/callbacks/")]
    assert statuses == ([200, 400] if log_accepted else [400])


async def test_public_listener_access_line_masks_the_signature(
    make_settings: Any, log_stream: io.StringIO, tmp_path: Any
) -> None:
    """A refused callback on the public listener is logged -- with ``hwSecret`` masked, as on the main port."""
    port, public_port = free_port(), free_port()
    settings = settings_for(make_settings, public_port, tmp_path / "journal.jsonl")
    settings = settings.model_copy(
        update={"server": settings.server.model_copy(update={"public_port": public_port})}
    )
    app = create_app(settings, Redactor(values=secret_values(settings)))
    signature = "c" * 64
    async with serving(app, settings, port=port), aiohttp.ClientSession() as http:
        public = await start_public(app, settings)
        try:
            url = f"http://127.0.0.1:{public_port}/callbacks/metastudio/live-events"
            async with http.post(url, params={"hwSecret": signature, "hwTime": "18c"}, data=b"{}") as resp:
                body = await resp.json()
                assert resp.status == 401 and body["error_code"] == "CALLBACK_TOO_OLD"
                assert signature not in json.dumps(body)
        finally:
            await public.cleanup()
    output = log_stream.getvalue()
    access = [json.loads(line) for line in output.splitlines() if '"request"' in line]
    assert [line["status"] for line in access] == [401]
    assert access[0]["query"]["hwSecret"] == MASK and access[0]["request_id"] == body["request_id"]
    assert signature not in output
