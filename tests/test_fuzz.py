"""Fuzzing every route (hypothesis, bounded): no input from outside gets a 5xx, every error is a JSON body
with ``error_code`` and ``error_msg``, and no error echoes what the request carried (a header value with
the admin token once came back in ``error_msg``).

The daemon (main port and public listener, a real Redis, the MetaStudio sandbox) runs on its own event loop
in a thread; hypothesis drives it with raw HTTP/1.1 over a socket, so header bytes that are not UTF-8 get
through as sent.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.app import create_app
from orchestrator.providers.metastudio.callbacks import mss_a_url
from orchestrator.sandbox.metastudio.app import SandboxConfig, demo_room, running_sandbox
from orchestrator.web.server import start_public
from tests.support.redis_server import free_port
from tests.support.server import serving

ADMIN = "fuzz-admin-token-0123456789"
KEY = "fuzz-callback-key"
TOKEN = "fuzz-interaction-token"
MARKER = "marker-secret-value-7f3a"  # sent in headers; must never come back


@dataclass
class Target:
    port: int
    public_port: int


@pytest.fixture(scope="module")
def target(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    import redis as sync_redis

    from orchestrator.settings import load_settings

    redis_server.start()
    with sync_redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    port, public_port = free_port(), free_port()
    tmp = tmp_path_factory.mktemp("fuzz")
    ready, stop = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    async def main() -> None:
        async with running_sandbox(SandboxConfig("FUZZAK", "fuzz-sk", "fuzz-project", speed=50)) as (
            box,
            url,
        ):
            box.world.add_room(demo_room())
            settings = load_settings(
                None,
                redis={"url": redis_server.url},
                admin={"token": ADMIN},
                server={"public_port": public_port},
                metastudio={
                    "endpoint": url,
                    "ak": "FUZZAK",
                    "sk": "fuzz-sk",
                    "project_id": "fuzz-project",
                    "interaction_token": TOKEN,
                    "callback_profiles": {
                        "default": {
                            "public_url": f"http://127.0.0.1:{public_port}/callbacks/metastudio/live-events",
                            "auth_type": "MSS_A",
                            "keys": [KEY],
                        },
                        "none": {
                            "public_url": f"http://127.0.0.1:{public_port}/callbacks/metastudio/live-events/none",
                            "auth_type": "NONE",
                        },
                    },
                },
                callbacks={"journal_path": str(tmp / "journal.jsonl")},
                scheduling={"reconcile_interval_s": 3600},
            )
            app = create_app(settings)
            async with serving(app, settings, port=port):
                public = await start_public(app, settings)
                from orchestrator.appkeys import ROOM_STORE

                await app[ROOM_STORE].register_room("demo-room")
                await app[ROOM_STORE].set_current_job("demo-room", "job-1")
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.05)
                await public.cleanup()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by the fixture
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30), "daemon did not start"
    if errors:
        raise errors[0]
    yield Target(port, public_port)
    stop.set()
    thread.join(30)


# --- the requests ------------------------------------------------------------------------------------------

ROOM_IDS = st.sampled_from(["demo-room", "a b", "", "ünï", "x" * 300, "..", "%00", "room{1}", "r/../s", "-"])
JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["²", "١٢", "1e400", "NaN", "-0", "\u0000", "𝟘", "9" * 30]),
)
JSON = st.recursive(
    JSON_LEAF,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _message_strategies() -> st.SearchStrategy[Any]:
    """Shapes close to what each route reads, with fuzzed fields: where the bugs hide."""
    event = st.fixed_dictionaries(
        {
            "type": st.one_of(st.sampled_from(["comment", "gift", "join", "like", "viewers"]), JSON),
            "text": st.one_of(st.text(max_size=30), JSON),
            "user": st.one_of(st.fixed_dictionaries({"userId": st.text(max_size=8)}), JSON),
            "gift": st.one_of(
                st.fixed_dictionaries({"giftName": st.text(max_size=5), "giftNum": JSON}), JSON
            ),
            "viewers": JSON,
            "timestamp": JSON,
        }
    )
    callback_message = st.fixed_dictionaries(
        {
            "room_id": st.one_of(ROOM_IDS, JSON),
            "job_id": st.one_of(st.just("job-1"), JSON),
            "state": st.one_of(st.sampled_from(["END", "CONNECTED"]), JSON),
            "output_url": st.one_of(st.just("rtmp://x/y"), JSON),
            "shoot_script_sequence_no": st.one_of(st.just("2"), JSON, st.just(str(2**80))),
            "reply_id": st.one_of(st.text(max_size=10), JSON),
        }
    )
    envelope = st.fixed_dictionaries(
        {
            "event_type": st.one_of(
                st.sampled_from(["SHOOT_SCRIPT_SWITCH", "RTMP_STREAM_STATE_CHANGE", "REPLY_COMMAND_FINISH"]),
                st.text(max_size=12),
                JSON,
            ),
            "message": st.one_of(callback_message.map(json.dumps), callback_message, JSON),
        }
    )
    interaction = st.fixed_dictionaries(
        {
            "room_id": st.one_of(ROOM_IDS, JSON),
            "job_id": st.one_of(st.just("job-1"), JSON),
            "rule_index": JSON,
            "event": st.one_of(
                st.fixed_dictionaries({"type": JSON, "timestamp": JSON, "content": st.one_of(JSON, event)}),
                JSON,
            ),
        }
    )
    room = st.fixed_dictionaries(
        {
            "room_id": st.one_of(ROOM_IDS, JSON),
            "template": st.one_of(
                st.fixed_dictionaries({"output_urls": st.one_of(st.just(["rtmp://x/y"]), JSON)}), JSON
            ),
            "schedule": st.one_of(
                st.fixed_dictionaries({"timezone": st.one_of(st.just("UTC"), JSON), "windows": JSON}), JSON
            ),
            "callback_profile": JSON,
        }
    )
    return st.one_of(
        JSON,
        event,
        st.lists(event, max_size=3),
        st.fixed_dictionaries({"events": st.lists(event, max_size=3)}),
        envelope,
        interaction,
        room,
    )


ROUTES = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/api/rooms"),
    ("POST", "/api/rooms"),
    ("GET", "/api/rooms/{room}"),
    ("PUT", "/api/rooms/{room}"),
    ("DELETE", "/api/rooms/{room}"),
    ("GET", "/api/rooms/{room}/config"),
    ("GET", "/api/rooms/{room}/schedule"),
    ("PUT", "/api/rooms/{room}/schedule"),
    ("POST", "/api/rooms/{room}/pause"),
    ("POST", "/api/rooms/{room}/resume"),
    ("POST", "/api/rooms/{room}/start"),
    ("POST", "/api/rooms/{room}/stop"),
    ("GET", "/api/rooms/{room}/events"),
    ("POST", "/api/rooms/{room}/events"),
    ("GET", "/api/rooms/{room}/replies"),
    ("POST", "/api/rooms/{room}/replies"),
    ("POST", "/callbacks/metastudio/live-events"),
    ("POST", "/callbacks/metastudio/live-events/{profile}"),
    ("POST", "/callbacks/metastudio/interaction/{token}"),
    ("POST", "/llm/metastudio"),
    ("PATCH", "/api/rooms/{room}"),
    ("GET", "/nowhere/{room}"),
]


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    public: bool


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method, template = draw(st.sampled_from(ROUTES))
    room = draw(ROOM_IDS)
    path = (
        template.replace("{room}", _quote(room))
        .replace("{profile}", draw(st.sampled_from(["none", "default", "nope", "a b"])))
        .replace("{token}", draw(st.sampled_from([TOKEN, "wrong", MARKER])))
    )
    auth = draw(
        st.sampled_from(
            [
                f"Bearer {ADMIN}".encode(),
                b"Bearer wrong",
                f"Bearer {MARKER}".encode(),
                b"Bearer \xff\xfe\x80",  # not UTF-8
                b"Basic " + MARKER.encode(),
                b"",
            ]
        )
    )
    headers = [(b"Authorization", auth)] if auth else []
    headers.append((b"Content-Type", draw(st.sampled_from([b"application/json", b"text/plain", b"x/\xff"]))))
    if draw(st.booleans()):
        headers.append((b"x-hw-mss-secret", draw(st.sampled_from([MARKER.encode(), b"\xc3\x28", b"00"]))))
    query_parts = draw(
        st.lists(
            st.sampled_from(
                [
                    "hwSecret=" + MARKER,
                    "hwTime=ffffffffffffffffffff",
                    "hwTime=19ae5b3c000",
                    f"room_id={_quote(room)}",
                    "limit=%C2%B2",
                    "limit=999999999999999999999",
                    "since=garbage",
                    "secret=" + MARKER,
                    "time_stamp=１２",
                    "%ff=%fe",
                ]
            ),
            max_size=3,
        )
    )
    kind = draw(st.sampled_from(["json", "json", "json", "deep", "bytes", "empty"]))
    if kind == "json":
        body = json.dumps(draw(_message_strategies()), ensure_ascii=draw(st.booleans())).encode()
    elif kind == "deep":
        body = _deep(draw(st.integers(min_value=100, max_value=100_000))).encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=64))
    else:
        body = b""
    public = template.startswith(("/callbacks", "/llm", "/healthz")) and draw(st.booleans())
    return Request(method, path, "&".join(query_parts), headers, body, public)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def send(port: int, request: Request) -> tuple[int, bytes]:
    target = request.path + (f"?{request.query}" if request.query else "")
    head = [f"{request.method} {target} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    head += [name + b": " + value for name, value in request.headers]
    head.append(b"Content-Length: " + str(len(request.body)).encode())
    raw = b"\r\n".join(head) + b"\r\n\r\n" + request.body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    status_line, _, rest = response.partition(b"\r\n")
    status = int(status_line.split(b" ")[1])
    body = rest.partition(b"\r\n\r\n")[2]
    return status, body


def check(status: int, body: bytes, request: Request) -> None:
    assert status < 500, (status, body[:300], request)
    if status >= 400:
        error = json.loads(body)  # a JSON body, whatever went wrong
        assert isinstance(error.get("error_code"), str) and isinstance(error.get("error_msg"), str), error
        assert MARKER not in body.decode("utf-8", "replace"), (body[:300], request)
        assert ADMIN not in body.decode("utf-8", "replace")


@settings(
    max_examples=2500,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    database=None,
)
@given(request=requests())
def test_no_input_gets_a_5xx_or_a_non_json_error(target: Target, request: Request) -> None:
    port = target.public_port if request.public else target.port
    if request.path == "/readyz":
        return  # 503 there means "not ready", by design
    status, body = send(port, request)
    check(status, body, request)


def test_the_six_inputs_that_gave_500(target: Target) -> None:
    """The cases the first fuzz run found, kept as a table."""
    import time

    now = int(time.time() * 1000)
    signed = mss_a_url(f"http://127.0.0.1:{target.public_port}/callbacks/metastudio/live-events", KEY, now)
    huge = {
        "event_type": "SHOOT_SCRIPT_SWITCH",
        "message": json.dumps({"room_id": "demo-room", "job_id": "job-1", "shoot_script_sequence_no": 2**80}),
    }
    cases = [
        Request(
            "POST",
            f"/callbacks/metastudio/interaction/{TOKEN}",
            "",
            [],
            json.dumps({"room_id": "a b", "job_id": "j", "event": {"type": 1, "content": "hi?"}}).encode(),
            True,
        ),
        Request(
            "POST",
            "/api/rooms/demo-room/events",
            "",
            [(b"Authorization", f"Bearer {ADMIN}".encode())],
            json.dumps([{"type": "gift", "gift": {"giftName": "rose", "giftNum": "²"}}]).encode(),
            False,
        ),
        Request(
            "POST",
            "/api/rooms/demo-room/events",
            "",
            [(b"Authorization", f"Bearer {ADMIN}".encode())],
            json.dumps(
                [
                    {"type": ["comment"]},
                    {"type": {"a": 1}},
                    {"type": "comment", "text": "ok", "user": {"userId": "u1"}},
                ]
            ).encode(),
            False,
        ),
        Request("GET", "/api/rooms", "", [(b"Authorization", b"Bearer \xff\xfe\x80")], b"", False),
        Request(
            "POST",
            signed.split("127.0.0.1:" + str(target.public_port))[1].split("?")[0],
            signed.split("?", 1)[1],
            [],
            json.dumps(huge).encode(),
            True,
        ),
        Request(
            "PUT",
            "/api/rooms/demo-room",
            "",
            [(b"Authorization", f"Bearer {ADMIN}".encode())],
            _deep(50_000).encode(),
            False,
        ),
        Request("GET", "/api/rooms", "", [(b"Authorization", f"Bearer {MARKER}".encode())], b"", False),
    ]
    for case in cases:
        status, body = send(target.public_port if case.public else target.port, case)
        check(status, body, case)
    # the ingest batch with two bad types keeps its good event: a per-event error
    status, body = send(target.port, cases[2])
    answer = json.loads(body)
    assert status == 200 and answer["accepted"] == 1 and [e["index"] for e in answer["rejected"]] == [0, 1], (
        answer
    )
