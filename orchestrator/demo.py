"""``orchestrator demo``: the whole daemon on one machine, no credentials, no services to install.

It runs, in one process:

* a Redis-compatible store: an **embedded in-memory** one (fakeredis, served on a loopback port so the
  daemon uses it exactly like a real Redis, Lua scripts and streams included) unless ``--redis-url`` names a
  real Redis (then the demo writes its keys there -- use a database you can flush);
* a vendor sandbox: MetaStudio's (``orchestrator sandbox metastudio``, seeded with its demo room and rules;
  the default) or, with ``--vendor softsugar``, SoftSugar's (``orchestrator sandbox softsugar``, its status
  callbacks sent to the daemon);
* the daemon itself, configured to drive that sandbox, with a reply policy (and MetaStudio's CALLBACK
  mode);
* a simulated audience that posts comments, likes, gifts and viewer counts to the ingest API;

and narrates what happens, from the room's event stream in Redis (the same record ``GET
/api/rooms/{room}/events`` serves): the schedule opening the window, the job going live, paragraph
switches, RTMP, event reports, replies queued, inserted and finished (MetaStudio); the session created,
started and live, the heartbeats its owner sends, replies queued in the takeover queue, playing and
finished (SoftSugar). The daemon's own log goes to stderr
at WARNING (``--log-level`` to see more).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, cast

import aiohttp
import redis.asyncio as aioredis
import yaml

from orchestrator.app import create_app
from orchestrator.logging import Redactor, configure_logging
from orchestrator.providers.softsugar.models import LiveScript
from orchestrator.sandbox.metastudio.app import SandboxConfig, demo_room, running_sandbox
from orchestrator.sandbox.softsugar import app as softsugar_app
from orchestrator.sandbox.softsugar.app import SoftSugarSandbox
from orchestrator.scheduling.rooms import ManagedRoom
from orchestrator.settings import Settings, load_settings, secret_values
from orchestrator.store import keys
from orchestrator.store.redis import create_redis
from orchestrator.web.server import make_runner

ROOM = "demo-room"
AK, SK, PROJECT = "DEMOACCESSKEY", "demo-secret-key", "demo-project"
#: SoftSugar's sandbox account (``--vendor softsugar``).
APP_ID, APP_KEY = "demo-app-id", "demo-app-key-0000000000000000"
VENDORS = ("metastudio", "softsugar")

#: SoftSugar's status callbacks, as the narration tells them.
SOFTSUGAR_STATUS = {
    "35": "the session is created (35): it is started",
    "5": "the session is closed (5)",
    "50": "the vendor closed the session (50)",
    "9": "the session failed (9)",
    "99": "the session failed to initialise (99)",
    "34": "a takeover is queued (34)",
    "36": "a reply starts playing (36)",
    "37": "a reply finished playing (37)",
    "39": "a reply failed (39)",
}

POLICY: dict[str, Any] = {
    "rules": [
        {"name": "shipping", "patterns": ["发货", "快递"], "replies": ["{user}，今天下单，明天就发货哦。"]},
        {"name": "size", "patterns": ["尺码", "大小"], "replies": ["{user}，尺码表在{product}的详情页里。"]},
    ],
    "faq": [
        {"question": "有优惠券吗", "aliases": ["优惠券"], "answer": "关注主播就能领优惠券。"},
        {"question": "质量怎么样", "answer": "{product}支持七天无理由退换，放心买。"},
    ],
    "gift_thanks": None,  # the demo room's own vendor rule thanks gifts (SYSTEM_REPLY)
    "per_user_interval_s": 5,
    "per_room_per_minute": 12,
    "dedup_window_s": 20,
    "forbidden_words": ["傻瓜"],
}

AUDIENCE_LINES = [
    "什么时候发货？",
    "有优惠券吗",
    "这个多少钱",  # the sandbox's own price rule answers this one (SYSTEM_REPLY)
    "尺码怎么选",
    "主播好！",
    "质量怎么样",
    "这个能用多久？",  # no rule of ours: the vendor's CALLBACK rule asks the daemon
    "快递是哪家",
]
NAMES = ["小王", "Lily", "阿杰", "Momo", "老张", "Kiki", "大熊", "Yuki"]


@contextlib.contextmanager
def embedded_redis() -> Iterator[str]:
    """An in-memory Redis-compatible server (fakeredis, with Lua) on a free loopback port."""
    from fakeredis import TcpFakeServer

    server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="embedded-redis", daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    """A TCP port free on loopback right now (the demo's servers, and the tests', listen on such ports),
    chosen below the kernel's ephemeral range: a server bound to port 0, or an outgoing connection, gets a
    port from that range and so never takes this one between its choice and its use (a test saw its
    daemon's port taken by the sandbox it started first)."""
    import socket

    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = random.randint(10_000, max(10_001, low - 1))  # noqa: S311 -- not a secret
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # that range is crowded: any free port
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found


class Narrator:
    """Readable lines from the room's event stream."""

    def __init__(self, out: TextIO, vendor: str = "metastudio") -> None:
        self.out = out
        self.vendor = vendor
        self.started = time.monotonic()
        self.ours: set[str] = set()

    def say(self, what: str, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f}s] {what:<10} {text}", file=self.out, flush=True)

    def entry(self, fields: dict[str, str]) -> None:
        kind = fields.get("kind", "")
        if kind == "action":
            self.say("schedule", f"{fields.get('action')} ({fields.get('reason')}) → {fields.get('outcome')}")
        elif kind == "job_started":
            self.say("job", f"started {fields.get('job_id', '')[:8]}…")
        elif kind == "job_state":
            state = fields.get("job_state", "")
            self.say("job", f"{state}{' — the room is live' if state == 'PROCESSING' else ''}")
        elif kind == "callback":
            self._callback(fields)
        elif kind == "reported":
            detail = f" ({fields['types']})" if fields.get("types") else ""
            self.say("reported", f"{fields.get('events')} audience events in one live-event report{detail}")
        elif kind.startswith("reply_") and kind != "reply_inserted":
            self.say("reply", f"{kind[6:]} [{fields.get('priority')}] {fields.get('text', '')}")
        elif kind == "reply_inserted" and self.vendor == "softsugar":
            self.say("reply", f"takeover queued (command/queue): {fields.get('text', '')}")
        elif kind == "reply_inserted":
            self.ours.add(fields.get("reply_id", ""))
            rule = f", rule {fields['rule_index']}" if fields.get("rule_index") else ""
            self.say(
                "reply", f"INSERT_PLAY_SCRIPT ({fields.get('play_type')}{rule}): {fields.get('text', '')}"
            )
        elif kind == "alert":
            self.say("alert", fields.get("message", ""))

    def _callback(self, fields: dict[str, str]) -> None:
        event_type = fields.get("event_type", "")
        try:
            message = json.loads(fields.get("message") or "{}")
        except ValueError:
            message = {}
        if event_type.startswith("status_"):  # SoftSugar
            status = event_type.removeprefix("status_")
            self.say("session", SOFTSUGAR_STATUS.get(status, f"status {status}"))
        elif event_type == "SHOOT_SCRIPT_SWITCH":
            product = f" — product: {message['product_title']}" if message.get("product_title") else ""
            self.say(
                "paragraph",
                f"{message.get('scene_script_name')} #{message.get('shoot_script_sequence_no')} "
                f'"{message.get("shoot_script_title")}"{product}',
            )
        elif event_type == "RTMP_STREAM_STATE_CHANGE":
            self.say("rtmp", f"{message.get('output_url')} {message.get('state')}")
        elif event_type == "REPLY_COMMAND_FINISH":
            reply_id = str(message.get("reply_id", ""))
            whose = "ours" if reply_id in self.ours else "a vendor rule's own reply"
            self.say("reply", f"finished playing ({whose})")
        else:
            self.say("callback", event_type)


def demo_settings(
    redis_url: str,
    sandbox_url: str,
    port: int,
    workdir: Path,
    log_level: str,
    *,
    vendor: str = "metastudio",
    callback_token: str = "",
) -> Settings:
    policy_file = workdir / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(POLICY, allow_unicode=True), encoding="utf-8")
    softsugar: dict[str, Any] = {}
    if vendor == "softsugar":
        softsugar = {
            "endpoint": sandbox_url,
            "app_id": APP_ID,
            "app_key": APP_KEY,
            "callback_token": callback_token,
            "heartbeat_interval_s": 5.0,
        }
    return load_settings(
        None,
        server={"host": "127.0.0.1", "port": port},
        redis={"url": redis_url},
        logging={"level": log_level, "format": "console"},
        admin={"token": secrets.token_urlsafe(24)},
        softsugar=softsugar,
        metastudio={
            "endpoint": sandbox_url if vendor == "metastudio" else "http://127.0.0.1:9",
            "ak": AK,
            "sk": SK,
            "project_id": PROJECT,
            "callback_profiles": {
                "default": {
                    "public_url": f"http://127.0.0.1:{port}/callbacks/metastudio/live-events",
                    "auth_type": "MSS_A",
                    "keys": [secrets.token_hex(16)],
                }
            },
            "interaction_token": secrets.token_urlsafe(24),
        },
        callbacks={"journal_path": str(workdir / "journal.jsonl")},
        scheduling={"reconcile_interval_s": 2.0, "boundary_tolerance_s": 0},  # one process, one clock
        interaction={
            "policy_file": str(policy_file),
            "lease_ttl_s": 3.0,
            "report_window_ms": 300,
            "idle_after_s": 25.0,
            "idle_lines": ["欢迎刚进来的朋友，喜欢的点个关注！", "有问题随时在评论区问我哦。"],
        },
    )


def demo_room_config(
    port: int, settings: Settings, live_in_s: float, vendor: str = "metastudio"
) -> dict[str, Any]:
    """The demo room as the admin API takes it: live once, ``live_in_s`` from now, for two hours."""
    start = datetime.now(UTC) + timedelta(seconds=live_in_s)
    token = settings.metastudio.interaction_token.get_secret_value()
    template: dict[str, Any] = {
        "output_urls": ["rtmp://push.example.com/live"],
        "stream_keys": [secrets.token_hex(8)],
        "interaction_callback_url": f"http://127.0.0.1:{port}/callbacks/metastudio/interaction/{token}",
    }
    if vendor == "softsugar":
        template = {
            "script": LiveScript.model_validate(softsugar_app.demo_script()).model_dump(exclude_none=True)
        }
    room = {
        "room_id": ROOM,
        "provider": vendor,
        "template": template,
        "schedule": {
            "timezone": "UTC",
            "windows": [
                {"kind": "once", "start": start.isoformat(), "end": (start + timedelta(hours=2)).isoformat()}
            ],
        },
    }
    ManagedRoom.model_validate(room)  # fail here, not at the API, if the demo's own room is wrong
    return room


async def simulated_audience(
    http: aiohttp.ClientSession, base_url: str, token: str, pace_s: float, narrator: Narrator | None = None
) -> None:
    """Comments, likes, gifts and viewer counts, as a platform bridge would post them."""
    rng = random.Random(7)  # noqa: S311 -- a simulated audience, not a secret
    viewers = 120
    url = f"{base_url}/api/rooms/{ROOM}/events"
    headers = {"Authorization": f"Bearer {token}"}
    while True:
        events: list[dict[str, Any]] = []
        user_id = rng.randrange(1000, 9999)
        user = {"userId": str(user_id), "name": rng.choice(NAMES), "level": rng.randrange(1, 30)}
        roll = rng.random()
        if roll < 0.6:
            text = rng.choice(AUDIENCE_LINES)
            events.append({"type": "comment", "user": user, "text": text})
            if narrator is not None:
                narrator.say("comment", f"{user['name']}: {text}")
        elif roll < 0.75:
            events.append(
                {"type": "gift", "user": user, "gift": {"giftName": "小心心", "giftNum": 1, "giftValue": 1}}
            )
        else:
            events.append({"type": "like", "user": user})
        viewers = max(50, viewers + rng.randrange(-5, 9))
        events.append({"type": "viewers", "viewers": viewers})
        with contextlib.suppress(aiohttp.ClientError):
            async with http.post(url, json={"events": events}, headers=headers) as resp:
                await resp.read()
        await asyncio.sleep(pace_s)


async def narrate(redis: aioredis.Redis, narrator: Narrator) -> None:
    last = "0-0"
    stream = keys.room_events(ROOM)
    while True:
        answer = await redis.xread({stream: last}, count=100, block=500)
        for _stream, entries in cast(
            list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], answer or []
        ):
            for entry_id, fields in entries:
                last = entry_id.decode()
                narrator.entry({k.decode(): v.decode() for k, v in fields.items()})


async def run_demo(
    *,
    redis_url: str | None,
    duration_s: float | None,
    live_in_s: float,
    speed: float,
    log_level: str,
    vendor: str = "metastudio",
) -> None:
    out = sys.stdout
    narrator = Narrator(out, vendor)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        if redis_url is None:
            redis_url = stack.enter_context(embedded_redis())
            narrator.say("demo", "store: embedded in-memory Redis (fakeredis); --redis-url uses a real one")
        else:
            narrator.say("demo", "store: the Redis at --redis-url")
        port = free_port()
        callback_token = secrets.token_urlsafe(24)
        softsugar: SoftSugarSandbox | None = None
        if vendor == "softsugar":
            softsugar, sandbox_url = await stack.enter_async_context(
                softsugar_app.running_sandbox(
                    softsugar_app.SandboxConfig(
                        APP_ID,
                        APP_KEY,
                        f"http://127.0.0.1:{port}/callbacks/softsugar/{callback_token}",
                        speed=speed,
                    )
                )
            )
            narrator.say("demo", f"SoftSugar sandbox on {sandbox_url} (simulated time x{speed:g})")
        else:
            box, sandbox_url = await stack.enter_async_context(
                running_sandbox(SandboxConfig(AK, SK, PROJECT, speed=speed))
            )
            box.world.add_room(demo_room())
            narrator.say("demo", f"MetaStudio sandbox on {sandbox_url} (simulated time x{speed:g})")
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="orchestrator-demo-")))
        settings = demo_settings(
            redis_url, sandbox_url, port, workdir, log_level, vendor=vendor, callback_token=callback_token
        )
        redactor = Redactor(settings.logging.redact_fields, secret_values(settings))
        configure_logging(settings.logging, redactor, stream=sys.stderr)
        client = create_redis(settings.redis, client_name="orchestrator-demo")  # any redis.url form
        stack.push_async_callback(client.aclose)
        await client.delete(*[keys.room_events(ROOM), keys.room_ingest(ROOM), keys.room_state(ROOM)])
        room = demo_room_config(port, settings, live_in_s, vendor)
        app = create_app(settings, redactor)
        runner = make_runner(app, settings)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        from aiohttp import web

        await web.TCPSite(runner, "127.0.0.1", port).start()
        base_url = f"http://127.0.0.1:{port}"
        http = await stack.enter_async_context(aiohttp.ClientSession())
        token = settings.admin.token.get_secret_value()
        async with http.put(
            f"{base_url}/api/rooms/{ROOM}",
            json=room,
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"cannot create the demo room: {resp.status} {await resp.text()}")
        narrator.say("demo", f"daemon on {base_url}; room {ROOM} is scheduled to go live in {live_in_s:g} s")
        # The admin token is a secret even here: it goes to a file only the user reads, not to the output.
        token_file = workdir / "admin-token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        narrator.say(
            "demo",
            f'try: curl -H "Authorization: Bearer $(cat {token_file})" {base_url}/api/rooms/{ROOM}',
        )
        async with http.post(
            f"{base_url}/api/console/links", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            link = (await resp.json())["url"]
        narrator.say("demo", f"console: {base_url}/console/ -- log in once with {link}")
        narrator.say(
            "demo", f"(that link works once, for ten minutes; then log in with the token in {token_file})"
        )
        tasks = [
            asyncio.create_task(narrate(client, narrator), name="demo-narrator"),
            asyncio.create_task(
                _audience_when_live(http, base_url, token, client, narrator), name="demo-audience"
            ),
        ]
        if softsugar is not None:
            tasks.append(asyncio.create_task(_heartbeats(softsugar, narrator), name="demo-heartbeats"))
        try:
            if duration_s is None:
                await stop.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), duration_s)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            narrator.say("demo", "stopping")


async def _heartbeats(box: SoftSugarSandbox, narrator: Narrator) -> None:
    """SoftSugar's heartbeats as the vendor receives them (they leave no entry in the room's record)."""
    told: dict[str, int] = {}
    while True:
        await asyncio.sleep(0.5)
        for session in list(box.world.sessions.values()):
            if session.heartbeats != told.get(session.session_id, 0):
                told[session.session_id] = session.heartbeats
                narrator.say(
                    "heartbeat",
                    f"#{session.heartbeats} for session {session.session_id[:8]}… from the room's owner",
                )


async def _audience_when_live(
    http: aiohttp.ClientSession, base_url: str, token: str, redis: aioredis.Redis, narrator: Narrator
) -> None:
    while (await redis.hget(keys.room_state(ROOM), "job_state")) != b"PROCESSING":  # noqa: ASYNC110
        await asyncio.sleep(0.2)  # polling the shared state, as an outside bridge would
    narrator.say("audience", "the simulated audience starts commenting")
    await simulated_audience(http, base_url, token, pace_s=0.8, narrator=narrator)
