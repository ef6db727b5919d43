"""The chaos soak: N rooms on 3 daemon replicas and one Redis, a simulated day in minutes, seeded faults.

Layout (all on loopback): one ``redis-server`` with AOF (``appendfsync everysec``: a SIGKILLed server loses
nothing it acknowledged -- its writes are in the kernel's page cache); the MetaStudio sandbox in this
process (so faults are injected into its world directly, and it records every job and link change); three
``orchestrator run`` processes with the shipped code and a soak configuration; two TCP load balancers in
this process, for the vendor-facing listener (callbacks) and the admin API (ingest), as a deployment puts
in front of replicas; an alert sink; a simulated audience on every live room.

Time is compressed through one clock (:mod:`orchestrator.clock`): every process gets the same simulated
start, real origin and speed; one replica runs skewed. A fault schedule is drawn from the seed, applied at
its simulated instants, and each fault carries its documented recovery budget (see ``budgets``).

Nothing in this module judges the run: :mod:`benchmarks.soak.analysis` does, from the recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import yaml
from aiohttp import web

from benchmarks.soak import analysis
from benchmarks.soak.analysis import Fault
from benchmarks.soak.schedules import DST_CHANGE, make_rooms, should_be_live
from orchestrator import clock
from orchestrator.demo import free_port
from orchestrator.providers.metastudio.models import SmartLiveRoom
from orchestrator.sandbox.metastudio.app import Fault as SandboxFault
from orchestrator.sandbox.metastudio.app import MetaStudioSandbox, SandboxConfig
from orchestrator.sandbox.metastudio.engine import CONNECT_S, WAITING_S, CallbackFaults, Job
from orchestrator.sandbox.softsugar import app as softsugar_app
from orchestrator.sandbox.softsugar.engine import Session
from orchestrator.store import keys
from tests.support.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
_MARKER = re.compile(r"v\d{7}")  # an audience comment's unique user, followed to reports and replies
AK, SK, PROJECT = "soak-ak", "soak-sk-" + "s" * 24, "soak-project"
SS_APP_ID, SS_APP_KEY = "soak-app", "soak-app-key-" + "k" * 20
#: SoftSugar's sandbox: a session takes 3 s to create (32 → 35); the vendor closes one without heartbeats
#: for 600 s (50). The document gives no threshold (the sandbox's default is 180 s); the soak raises it as
#: it raises the lease (below): a room's heartbeats move with its lease, and at 150x the lease is 180 s.
SS_CREATE_S, SS_HEARTBEAT_TIMEOUT_S = 3.0, 600.0


@dataclass(frozen=True)
class SoakConfig:
    rooms: int = 100
    hours: float = 24.0
    speed: float = 150.0
    replicas: int = 3
    seed: int = 1
    faults_per_hour: float = 14.0
    audience_every_s: float = 60.0  # one comment per live room this often (simulated)
    start: datetime | None = None  # default: the European DST change in the middle of the span
    skew_bound_s: float = 5.0  # one replica's clock is off by up to this (simulated seconds)
    softsugar_every: int = 5  # every fifth room runs on SoftSugar (0: none)
    log_level: str = "info"

    @property
    def span_s(self) -> float:
        return self.hours * 3600

    @property
    def start_at(self) -> datetime:
        return self.start or DST_CHANGE - timedelta(seconds=self.span_s / 2)


#: The soak's daemon settings, in simulated seconds. Where they differ from the defaults, it is because
#: at 150x a default becomes a real-time margin no process on a shared 2-core machine can keep: the lease
#: (10 s → 67 ms real, renewed every 22 ms; 180 s → 1.2 s real, renewed every 0.4 s, trusted 0.5 s real
#: less than its TTL by its holder: leases.STALL_MARGIN_REAL_S) and the vendor call timeout (10 s → 67 ms
#: real). The report window is widened so that batches still form (200 ms → 1.3 ms real).
SOAK_SETTINGS: dict[str, dict[str, Any]] = {
    # The tolerance exceeds the skew one replica is given (up to 5 s)
    "scheduling": {"reconcile_interval_s": 15.0, "fence_ttl_s": 30.0, "boundary_tolerance_s": 10.0},
    "interaction": {"lease_ttl_s": 180.0, "report_window_ms": 2000},
    "metastudio": {"timeout_s": 60.0, "max_retries": 3},
    "softsugar": {"timeout_s": 60.0},
}
RESTART = {
    "backoff_initial_s": 10,
    "backoff_max_s": 300,
    "max_restarts_per_hour": 6,
    "rtmp_grace_s": 30,
    "refresh_wait_s": 20,
}
#: SoftSugar session statuses as the analysis's job states (32/35 waiting, 2 live, 5 ended on request).
SS_STATES = {32: "WAITING", 35: "WAITING", 2: "PROCESSING", 5: "SUCCEED"}

#: Interaction: a reply for every price question, naming the user so that a reply played twice shows.
POLICY = {
    "rules": [
        {
            "name": "price",
            "match": "keyword",
            "patterns": ["多少钱"],
            "priority": 100,
            "replies": ["{user}，价格在购物车里哦"],
        },
    ],
    "per_user_interval_s": 30,
    "per_room_per_minute": 6,
    "per_room_burst": 3,
    "dedup_window_s": 60,
}


#: Outgoing connections a replica may hold: its Redis pool (redis.max_connections, 64), the Redis watcher's
#: (2) and the reactions subscriber's (1), and the vendor/alerts HTTP pool (aiohttp's default, 100).
OUTGOING_CAP = 64 + 2 + 1 + 100
#: Inbound connections: the two listeners' caps (server.max_connections, lowered at start to fit the fd
#: limit; 1,024 each by default); the soak's load balancers hold far fewer.
INBOUND_CAP = 2 * 1024


def budgets(config: SoakConfig) -> dict[str, float]:
    """Each fault kind's documented recovery budget (simulated seconds): how long the daemon may take to
    bring a room back, by its own settings -- detection (a reconcile pass, or a grace), the backoff before
    a restart (added per fault from the room's recent restarts), the vendor's start, one more pass for
    slack. Downtime inside a budget is excused; outside it, it counts."""
    r = SOAK_SETTINGS["scheduling"]["reconcile_interval_s"]
    start = WAITING_S + CONNECT_S
    timeout = SOAK_SETTINGS["metastudio"]["timeout_s"]
    fence = SOAK_SETTINGS["scheduling"]["fence_ttl_s"]
    lease = SOAK_SETTINGS["interaction"]["lease_ttl_s"]
    return {
        "job_fail": 2 * r + start,
        "job_block": 2 * r + start,
        "job_vanish": 2 * r + start,
        "rtmp_drop": RESTART["rtmp_grace_s"] + 2 * r + CONNECT_S,
        "rtmp_end": 2 * r + CONNECT_S,
        # a vendor fault hits the next calls: each may cost a timeout (hang) and a pass; then a start
        "vendor_error": 3 * r + start,
        "vendor_throttle": 3 * r + start,
        "vendor_reset": 3 * r + start,
        "vendor_hang": 4 * timeout + 3 * r + start,
        # a late notice delays a repair by as much (the delay and how long it lasts are added per fault)
        "callbacks_slow": 2 * r + start,
        "callbacks_lost": 2 * r + start,
        # Redis away: its outage (per fault), the watcher's check (5 s), then a pass that competes with the
        # backlog the outage left (journal replay, ingest) -- at 150x that pass alone takes a simulated
        # half-minute -- and one more, then any start it held up
        "redis_stop": 5 + 3 * r + start,
        "redis_kill": 5 + 3 * r + start,
        # a replica dies: its fences and leases expire, another replica's pass takes over
        "replica_kill": fence + lease + 2 * r + start,
        # SoftSugar: a session closed by the vendor (50) or failed (9/99): the callback (confirmed by stat)
        # or the next pass's running/list, then a create and a start; a shortage (97/98) refuses that
        # create, and the retry waits the room's backoff (added per fault)
        "ss_closed": 2 * r + SS_CREATE_S,
        "ss_fail": 2 * r + SS_CREATE_S,
        "ss_shortage": 3 * r + 2 * SS_CREATE_S,
        "ss_callbacks_lost": 2 * r + SS_CREATE_S,
        "ss_vendor_error": 3 * r + SS_CREATE_S,
    }


@dataclass
class Recording:
    """Everything the analysis needs, as plain data (also written to the result for replay)."""

    faults: list[Fault] = field(default_factory=list)
    skipped_faults: Counter[str] = field(default_factory=Counter)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    accepted: dict[str, tuple[str, float]] = field(default_factory=dict)  # marker → (room, sim time)
    uncertain: set[str] = field(default_factory=set)  # sent, no answer: accepted or not, we cannot say
    stream_callbacks: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    #: Per replica process: (time, RSS KiB, open fds, of which outgoing TCP connections, inbound ones).
    resources: dict[str, list[tuple[float, int, int, int, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    #: Per room, the daemon's actions as its event stream recorded them: (time, action, outcome, reason).
    actions: dict[str, list[tuple[float, str, str, str]]] = field(default_factory=lambda: defaultdict(list))


def _tcp_sockets(pid: int) -> dict[str, tuple[int, bool]]:
    """The TCP sockets of the process's network namespace: inode → (local port, listening)."""
    sockets = {}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                sockets[fields[9]] = (local_port, fields[3] == "0A")  # 0A: LISTEN
    return sockets


class Replica:
    """One ``orchestrator run`` process; SIGKILL and restart on the same ports."""

    def __init__(self, index: int, config_path: Path, env: dict[str, str], logdir: Path) -> None:
        self.index = index
        self.port, self.public_port = free_port(), free_port()
        self._config_path = config_path
        self._env = env
        self._log_path = logdir / f"replica-{index}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.incarnation = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        env.update(self._env)
        env["ORCH_SERVER__PUBLIC_PORT"] = str(self.public_port)
        env["ORCH_CALLBACKS__JOURNAL_PATH"] = str(self._log_path.with_suffix(".journal.jsonl"))
        self.incarnation += 1
        with self._log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "orchestrator",
                    "run",
                    "--config",
                    str(self._config_path),
                    "--port",
                    str(self.port),
                    "--log-format",
                    "json",
                ],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_up(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if not self.alive:
                    raise RuntimeError(f"replica {self.index} exited: see {self._log_path}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"http://127.0.0.1:{self.port}/healthz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"replica {self.index} not up within {timeout_s}s")

    def kill(self) -> None:
        if self.proc is not None and self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self) -> None:
        if self.proc is not None and self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def resources(self) -> tuple[int, int, int, int] | None:
        """(RSS in KiB, open file descriptors, of which outgoing TCP connections -- the Redis and vendor
        pools, bounded by their settings -- and inbound ones, bounded by the listeners' caps) of the
        running process."""
        if not self.alive or self.proc is None:
            return None
        pid = self.proc.pid
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            links = []
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):  # closed since listed
                    links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            sockets = _tcp_sockets(pid)
        except (OSError, StopIteration):
            return None
        outgoing = inbound = 0
        for link in links:
            if not link.startswith("socket:["):
                continue
            # A socket missing from the TCP tables (created and not yet connected, or a Unix socket) is
            # counted with the outgoing ones: a socket, bounded by the pools, not one of the process's own
            # descriptors whose drift is judged (the first full soak with the pools judged apart counted
            # such sockets as its own: +9 in one replica's last quarter, its total flat at 62 → 63).
            local_port, listening = sockets.get(link[8:-1], (None, False))
            if listening:
                continue
            if local_port in (self.port, self.public_port):
                inbound += 1
            else:
                outgoing += 1
        return rss, len(links), outgoing, inbound

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self._log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(raw))
        return lines


class Balancer:
    """A TCP load balancer (round robin over the replicas that accept a connection), as a deployment
    puts in front of the replicas: the vendor and the audience bridge see one address."""

    def __init__(self, ports: list[int]) -> None:
        self._ports = ports
        self._next = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for _ in range(len(self._ports)):
            port = self._ports[self._next % len(self._ports)]
            self._next += 1
            with contextlib.suppress(OSError):
                upstream = await asyncio.open_connection("127.0.0.1", port)
                break
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        with contextlib.suppress(asyncio.CancelledError):  # the balancer closing mid-connection
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


class Soak:
    def __init__(self, config: SoakConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.rng = random.Random(config.seed)
        self.recording = Recording()
        self.start = config.start_at
        self.end = self.start + timedelta(seconds=config.span_s)
        self.room_ids = [f"soak-{i:03d}" for i in range(config.rooms)]
        every = config.softsugar_every
        self.softsugar_rooms = {r for i, r in enumerate(self.room_ids) if every and i % every == every - 1}
        self.ss_token = secrets.token_urlsafe(24)
        self.schedules = dict(
            zip(self.room_ids, make_rooms(config.rooms, self.start, self.end, self.rng), strict=True)
        )
        self.skew_s = round(self.rng.uniform(-config.skew_bound_s, config.skew_bound_s), 2)
        self.budget = budgets(config)
        self.redis_server = RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "everysec"])
        self.replicas: list[Replica] = []
        self.token = secrets.token_urlsafe(16)
        self._seq = 0
        self._tailed: dict[str, str] = {}  # room → the last event-stream entry read
        self._redis_back_at = 0.0  # when Redis last answered again after a fault
        self._restarts: dict[str, list[float]] = defaultdict(list)

    # --- set-up ---

    def _write_files(self, public_lb: int, sink_url: str, sandbox_url: str, softsugar_url: str) -> Path:
        rooms = []
        for room_id in self.room_ids:
            if room_id in self.softsugar_rooms:
                rooms.append(
                    {
                        "room_id": room_id,
                        "name": f"Soak {room_id}",
                        "provider": "softsugar",
                        "template": {
                            "script": softsugar_app.demo_script("这款保温杯十二小时保温，今天直播间特价。")
                        },
                        "schedule": self.schedules[room_id],
                        "restart": RESTART,
                        "alerts": [{"url": sink_url, "format": "generic"}],
                    }
                )
                continue
            rooms.append(
                {
                    "room_id": room_id,
                    "name": f"Soak {room_id}",
                    "callback_profile": "default",
                    "template": {
                        "output_urls": [f"rtmp://push.example.com/{room_id}"],
                        "stream_keys": [secrets.token_hex(6)],
                        "play_policy": {"repeat_count": -1},
                    },
                    "schedule": self.schedules[room_id],
                    "restart": RESTART,
                    "alerts": [{"url": sink_url, "format": "generic"}],
                }
            )
        rooms_path = self.workdir / "rooms.yaml"
        rooms_path.write_text(yaml.safe_dump({"rooms": rooms}, allow_unicode=True), encoding="utf-8")
        policy_path = self.workdir / "policy.yaml"
        policy_path.write_text(yaml.safe_dump(POLICY, allow_unicode=True), encoding="utf-8")
        settings: dict[str, dict[str, Any]] = {
            "redis": {"url": self.redis_server.url},
            "logging": {"level": self.config.log_level},
            "admin": {"token": self.token},
            "metastudio": {
                "endpoint": sandbox_url,
                "ak": AK,
                "sk": SK,
                "project_id": PROJECT,
                **SOAK_SETTINGS["metastudio"],
                "callback_profiles": {
                    "default": {
                        "public_url": f"http://127.0.0.1:{public_lb}/callbacks/metastudio/live-events",
                        "auth_type": "MSS_A",
                        "keys": [secrets.token_hex(16)],
                    }
                },
            },
            "softsugar": {
                "endpoint": softsugar_url,
                "app_id": SS_APP_ID,
                "app_key": SS_APP_KEY,
                "callback_token": self.ss_token,
                **SOAK_SETTINGS["softsugar"],
            },
            "scheduling": {**SOAK_SETTINGS["scheduling"], "rooms_file": str(rooms_path)},
            "interaction": {**SOAK_SETTINGS["interaction"], "policy_file": str(policy_path)},
            "alerts": {"targets": [{"url": sink_url + "?daemon=1", "format": "generic"}]},
        }
        path = self.workdir / "soak.toml"
        path.write_text(_toml(settings), encoding="utf-8")
        return path

    def _seed_sandbox(self, sandbox: MetaStudioSandbox) -> None:
        paragraph = "这款保温杯十二小时保温，今天直播间特价。" * 60  # 1,200 characters: 300 s of speech
        for room_id in self.room_ids:
            sandbox.world.add_room(
                SmartLiveRoom.model_validate(
                    {
                        "room_id": room_id,
                        "room_name": room_id,
                        "scene_scripts": [
                            {
                                "script_name": "Talk",
                                "shoot_scripts": [
                                    {"sequence_no": 1, "title": "One", "text_config": {"text": paragraph}},
                                    {"sequence_no": 2, "title": "Two", "text_config": {"text": paragraph}},
                                ],
                            }
                        ],
                    }
                )
            )

    # --- the run ---

    async def run(self) -> dict[str, Any]:
        config = self.config
        real_origin = (
            time.time()
        )  # the simulated day starts now; the replicas come up within its first minutes
        sim = clock.Clock(speed=config.speed, start=self.start, real_origin=real_origin)
        previous = clock.install(sim)
        self.redis_server.start()
        try:
            return await self._run(real_origin)
        finally:
            clock.install(previous)
            for replica in self.replicas:
                replica.terminate()
            self.redis_server.close()

    async def _run(self, real_origin: float) -> dict[str, Any]:
        config = self.config
        sandbox = MetaStudioSandbox(SandboxConfig(AK, SK, PROJECT, speed=config.speed))
        runner = web.AppRunner(sandbox.app(), access_log=None)
        await runner.setup()
        sandbox.world.history = []
        self._seed_sandbox(sandbox)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        sandbox_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        sink = await self._start_sink()
        ports = [(free_port(), free_port()) for _ in range(config.replicas)]
        public_lb, admin_lb = Balancer([p[1] for p in ports]), Balancer([p[0] for p in ports])
        await public_lb.start()
        await admin_lb.start()
        softsugar = softsugar_app.SoftSugarSandbox(
            softsugar_app.SandboxConfig(
                SS_APP_ID,
                SS_APP_KEY,
                f"http://127.0.0.1:{public_lb.port}/callbacks/softsugar/{self.ss_token}",
                speed=config.speed,
                create_s=SS_CREATE_S,
                heartbeat_timeout_s=SS_HEARTBEAT_TIMEOUT_S,
            )
        )
        ss_runner = web.AppRunner(softsugar.app(), access_log=None)
        await ss_runner.setup()
        softsugar.world.history = []
        self.softsugar = softsugar
        ss_site = web.TCPSite(ss_runner, "127.0.0.1", 0)
        await ss_site.start()
        softsugar_url = f"http://127.0.0.1:{ss_runner.addresses[0][1]}"
        config_path = self._write_files(public_lb.port, sink, sandbox_url, softsugar_url)
        base_env = {
            "ORCH_SIMULATION__SPEED": str(config.speed),
            "ORCH_SIMULATION__START": self.start.isoformat(),
            "ORCH_SIMULATION__REAL_ORIGIN": repr(real_origin),
        }
        for index in range(config.replicas):
            env = dict(base_env)
            if index == config.replicas - 1:
                env["ORCH_SIMULATION__SKEW_S"] = str(self.skew_s)
            replica = Replica(index, config_path, env, self.workdir)
            replica.port, replica.public_port = ports[index]
            replica.start()
            self.replicas.append(replica)
        for replica in self.replicas:
            await replica.wait_up()
        # Measured from when every replica is up and has had the time to start what should be live.
        self.measured_from = (
            clock.time() + WAITING_S + CONNECT_S + SOAK_SETTINGS["scheduling"]["reconcile_interval_s"]
        )
        redis = aioredis.Redis.from_url(self.redis_server.url, socket_timeout=2)
        tasks = [
            asyncio.create_task(self._audience(admin_lb.port, sandbox)),
            asyncio.create_task(self._faults(sandbox)),
            asyncio.create_task(self._sample_resources()),
            asyncio.create_task(self._tail_streams(redis)),
            asyncio.create_task(self._keep_replicas_dead_or_alive()),
        ]
        try:
            await clock.sleep(config.span_s)
        finally:
            for task in tasks[:3]:
                task.cancel()
            sandbox.world.sender.faults = CallbackFaults()
            sandbox.faults.clear()
            softsugar.faults.clear()
            softsugar.world.drop_callbacks = 0
            softsugar.world.create_faults.clear()
            self.redis_server.start()
            for replica in self.replicas:
                if not replica.alive:
                    replica.start()
            # let the last reports, replies and callbacks land (a few simulated minutes)
            await clock.sleep(600)
            await sandbox.world.sender.drain()
            await asyncio.sleep(1.0)
            for task in tasks[3:]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._tail_once(redis, self._tailed)
        end_s = self.end.timestamp()
        result = self._judge(sandbox, end_s)
        await redis.aclose()
        await public_lb.aclose()
        await admin_lb.aclose()
        await runner.cleanup()
        await ss_runner.cleanup()
        return result

    async def _start_sink(self) -> str:
        async def receive(request: web.Request) -> web.Response:
            body = await request.json()
            self.recording.alerts.append(
                {
                    "at": clock.time(),
                    "daemon": "daemon" in request.query,
                    "kind": body.get("kind"),
                    "severity": body.get("severity"),
                    "room_id": body.get("room_id") or "",
                    "message": str(body.get("message", ""))[:200],
                }
            )
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/alerts", receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}/alerts"

    # --- the audience ---

    async def _audience(self, port: int, sandbox: MetaStudioSandbox) -> None:
        """One comment per live room every ``audience_every_s`` (simulated), with a unique user: the marker
        that the analysis follows to the vendor's reports and to the replies played."""
        url = f"http://127.0.0.1:{port}/api/rooms/{{room}}/events"
        headers = {"Authorization": f"Bearer {self.token}"}
        due: dict[str, float] = {}
        slots = asyncio.Semaphore(16)
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                now = clock.time()
                for room_id in self._live_rooms(sandbox):
                    if now < due.setdefault(room_id, now + self.rng.uniform(0, self.config.audience_every_s)):
                        continue
                    due[room_id] = now + self.config.audience_every_s
                    self._seq += 1
                    marker = f"v{self._seq:07d}"
                    await slots.acquire()
                    task = asyncio.create_task(
                        self._post_comment(http, url.format(room=room_id), headers, room_id, marker)
                    )
                    task.add_done_callback(lambda _t: slots.release())
                await asyncio.sleep(0.05)

    async def _post_comment(
        self, http: aiohttp.ClientSession, url: str, headers: dict[str, str], room_id: str, marker: str
    ) -> None:
        event = {
            "type": "comment",
            "user": {"userId": marker, "name": marker},
            "text": f"{marker} 这个多少钱",
        }
        at = clock.time()
        try:
            async with http.post(url, json={"events": [event]}, headers=headers) as resp:
                body = await resp.json(content_type=None)
                if resp.status == 200 and body.get("accepted") == 1:
                    self.recording.accepted[marker] = (room_id, at)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            self.recording.uncertain.add(marker)

    def _live_rooms(self, sandbox: MetaStudioSandbox) -> list[str]:
        metastudio = {
            job.room_id
            for job in sandbox.world.jobs.values()
            if job.state.value == "PROCESSING"
            and job.rtmp
            and all(s == "CONNECTED" for s in job.rtmp.values())
        }
        softsugar = {
            s.user_data for s in self.softsugar.world.sessions.values() if s.status == 2 and s.user_data
        }
        return sorted(metastudio | softsugar)

    def _ss_history(self) -> list[tuple[float, str, str, str, str]]:
        """SoftSugar's session changes in the form of MetaStudio's history: a session is a job, live while
        it is 2 (it has no output links of its own: its stream counts as one, connected while live)."""
        out: list[tuple[float, str, str, str, str]] = []
        for at, room_id, session_id, status in self.softsugar.world.history or []:
            state = SS_STATES.get(status, "FAILED")
            out.append((at, room_id, session_id, "job", state))
            if status == 2:
                out.append((at, room_id, session_id, "stream", "CONNECTED"))
        return out

    # --- faults ---

    def fault_plan(self) -> list[tuple[float, str]]:
        """(simulated offset, kind), Poisson in time, the kind by weight: from the seed alone."""
        rng = random.Random(self.config.seed * 7919 + 1)
        weights = {
            "job_fail": 8,
            "job_block": 2,
            "job_vanish": 4,
            "rtmp_drop": 6,
            "rtmp_end": 5,
            "vendor_error": 3,
            "vendor_throttle": 3,
            "vendor_hang": 2,
            "vendor_reset": 2,
            "callbacks_slow": 2,
            "callbacks_lost": 3,
            "redis_stop": 1,
            "redis_kill": 1,
            "replica_kill": 2,
        }
        if self.softsugar_rooms:
            weights |= {
                "ss_closed": 3,
                "ss_fail": 3,
                "ss_shortage": 1,
                "ss_callbacks_lost": 2,
                "ss_vendor_error": 2,
            }
        kinds, w = list(weights), list(weights.values())
        plan = []
        t = 600.0  # the first ten simulated minutes without faults: everything gets going
        while True:
            t += rng.expovariate(self.config.faults_per_hour / 3600)
            if t > self.config.span_s - 1800:  # the last half hour heals
                break
            plan.append((t, rng.choices(kinds, w)[0]))
        # Every kind at least once, however short the run.
        for i, kind in enumerate(kinds):
            if not any(k == kind for _, k in plan):
                plan.append((600 + (self.config.span_s - 2400) * (i + 0.5) / len(kinds), kind))
        return sorted(plan)

    async def _faults(self, sandbox: MetaStudioSandbox) -> None:
        origin = self.start.timestamp()
        rng = random.Random(self.config.seed * 104729 + 3)
        for offset, kind in self.fault_plan():
            await clock.sleep(origin + offset - clock.time())
            try:
                await self._inject(sandbox, kind, rng)
            except Exception as exc:  # a harness bug must show, not end the soak silently
                self.recording.skipped_faults[f"{kind} (error: {type(exc).__name__}: {exc})"] += 1

    def _running_job(self, sandbox: MetaStudioSandbox, rng: random.Random) -> Job | None:
        jobs = [j for j in sandbox.world.jobs.values() if j.state.value == "PROCESSING"]
        return rng.choice(sorted(jobs, key=lambda j: j.job_id)) if jobs else None

    def _record(
        self, kind: str, room_id: str | None, budget_s: float, at: float | None = None, **extra: Any
    ) -> None:
        if room_id is not None and extra.get("restarts"):
            now = clock.time()
            recent = [t for t in self._restarts[room_id] if now - t < 3600]
            if recent:  # the backoff the daemon waits before this restart (its own formula)
                budget_s += min(
                    RESTART["backoff_max_s"], RESTART["backoff_initial_s"] * 2 ** (len(recent) - 1)
                )
            self._restarts[room_id] = [*recent, now]
        self.recording.faults.append(
            Fault(clock.time() if at is None else at, kind, room_id, budget_s, **extra)
        )

    def _running_session(self, rng: random.Random) -> Session | None:
        sessions = [s for s in self.softsugar.world.sessions.values() if s.status == 2 and s.user_data]
        return rng.choice(sorted(sessions, key=lambda s: s.session_id)) if sessions else None

    def _backoff_s(self, room_id: str, ahead: int = 0) -> float:
        """The backoff the daemon waits before the room's next restart, ``ahead`` restarts later."""
        now = clock.time()
        recent = [t for t in self._restarts[room_id] if now - t < 3600]
        if not recent and not ahead:
            return 0.0
        return float(
            min(RESTART["backoff_max_s"], RESTART["backoff_initial_s"] * 2 ** (len(recent) + ahead - 1))
        )

    def _inject_softsugar(self, kind: str, rng: random.Random) -> None:
        world, budget = self.softsugar.world, self.budget[kind]
        if kind in ("ss_closed", "ss_fail", "ss_shortage"):
            session = self._running_session(rng)
            if session is None:
                self.recording.skipped_faults[kind] += 1
                return
            room_id = session.user_data or ""
            if kind == "ss_closed":  # 003: closed passively -- no heartbeat for too long, the link broken
                world.fail(session.session_id, 50)
                self._record(kind, room_id, budget, restarts=True)
            elif kind == "ss_fail":
                status = rng.choice([9, 99])
                world.fail(session.session_id, status)
                self._record(kind, room_id, budget, restarts=True, detail=f"status {status}")
            else:  # the restart's create finds no channel (97/98): refused, retried after a backoff
                shortage = rng.choice([97, 98])
                world.create_faults.append(shortage)
                world.fail(session.session_id, 9)
                # two restarts: the refused create and the one after it, each after its backoff; the
                # operator is told (start_failed): the account is short of channels
                extra = self._backoff_s(room_id, 1)
                self._record(
                    kind,
                    room_id,
                    budget + extra,
                    restarts=2,
                    needs_human=True,
                    detail=f"status {shortage}",
                )
                self._restarts[room_id].append(clock.time())  # the retry counts towards the next backoff
        elif kind == "ss_callbacks_lost":
            count = rng.randint(1, 10)
            world.drop_callbacks += count
            self._record(kind, None, budget, detail=f"{count} callback(s)")
        else:  # ss_vendor_error: the next calls answer 500/503, a few after taking effect
            count = rng.randint(1, 4)
            fault = softsugar_app.Fault(
                kind="status", count=count, status=rng.choice([500, 503]), after=rng.random() < 0.5
            )
            self.softsugar.faults.append(fault)
            self._record(kind, None, budget, detail=f"{count} call(s), after={fault.after}")

    async def _inject(self, sandbox: MetaStudioSandbox, kind: str, rng: random.Random) -> None:
        world, budget = sandbox.world, self.budget[kind]
        if kind.startswith("ss_"):
            self._inject_softsugar(kind, rng)
        elif kind.startswith(("job_", "rtmp_")):
            job = self._running_job(sandbox, rng)
            if job is None:
                self.recording.skipped_faults[kind] += 1
                return
            url = job.output_urls[0]
            # Injected first, recorded second: the fault's instant is at or after the change it made.
            if kind == "job_fail":
                world.fail(job, "MSS.20010026", "RTMP stream push failed.")
                self._record(kind, job.room_id, budget, restarts=True)
            elif kind == "job_block":
                world.block(job, "content review: soak")
                self._record(kind, job.room_id, budget, restarts=True, needs_human=True)
            elif kind == "job_vanish":
                world.vanish(job)
                self._record(kind, job.room_id, budget, restarts=True)
            elif kind == "rtmp_end":
                world.set_rtmp(job, url, "END")
                self._record(kind, job.room_id, budget)
            else:  # a drop: the link is down for a while, and comes back by itself unless repaired first
                down_s = rng.uniform(5, 120)
                world.set_rtmp(job, url, rng.choice(["DISCONNECTED", "RECONNECTING"]))
                self._record(kind, job.room_id, budget, detail=f"{down_s:.0f}s")
                asyncio.get_running_loop().call_later(clock.real_s(down_s), self._reconnect, world, job, url)
        elif kind.startswith("vendor_"):
            what = kind.removeprefix("vendor_")
            count = rng.randint(1, 4)
            fault = SandboxFault(
                kind=what,
                count=count,
                status=rng.choice([500, 503]),
                hang_s=150.0,
                after=rng.random() < 0.5,
                retry_after_s=2.0,
            )
            sandbox.faults.append(fault)
            extra = 3 * count * 150.0 if what == "hang" else 0.0  # each hung call and its retries
            self._record(kind, None, budget + extra, detail=f"{count} call(s), after={fault.after}")
        elif kind == "callbacks_slow":
            delay_s, lasting_s = rng.uniform(5, 60), rng.uniform(120, 600)
            world.sender.faults = CallbackFaults(delay_s=delay_s)
            # A link notice later than refresh_wait_s makes a repaired output look still down: the daemon
            # restarts the job, as it should without news of the link -- a restart this fault justifies.
            self._record(
                kind,
                None,
                lasting_s + 4 * delay_s + budget,
                detail=f"{delay_s:.0f}s for {lasting_s:.0f}s",
                restarts=delay_s > RESTART["refresh_wait_s"],
            )
            asyncio.get_running_loop().call_later(clock.real_s(lasting_s), self._callbacks_normal, world)
        elif kind == "callbacks_lost":
            # Link-state notices are excluded: MetaStudio reports a link's state by callback only (no API
            # returns it, 004), so a lost "END" is invisible to any client; the soak drops the others.
            count = rng.randint(1, 10)
            world.sender.faults = CallbackFaults(
                drop=count, drop_types=["SHOOT_SCRIPT_SWITCH", "REPLY_COMMAND_FINISH"]
            )
            self._record(kind, None, budget, detail=f"{count} callback(s)")
        elif kind in ("redis_stop", "redis_kill"):
            down_s = rng.uniform(5, 90)
            at = clock.time()
            if kind == "redis_kill":
                self.redis_server.kill()
            else:
                self.redis_server.stop(save=True)
            await clock.sleep(down_s)
            await asyncio.to_thread(self.redis_server.start)  # returns once it has loaded its AOF
            back_s = clock.time() - at  # the outage as the daemon saw it: the pause, then the loading
            # An outage that starts within a watcher check (5 s) of the last one's end is the same incident
            # to anyone watching: one page covers both.
            continues = at - self._redis_back_at < 5.0
            self._redis_back_at = at + back_s
            # The daemon's Redis client retries a failed command with backoff in real seconds (a machine
            # duration, not compressed): a pass caught in them when Redis went away resumes that long after it
            # is back -- at 150x, minutes of simulated time. Excused as the compression's, not the daemon's.
            retries_s = 3 * 1.0 * self.config.speed  # redis.retry_attempts x redis.retry_backoff_cap_s
            self._record(
                kind,
                None,
                budget + back_s + retries_s,
                at=at,
                needs_human=back_s > 30 and not continues,
                detail=f"stopped {down_s:.0f}s, answering again after {back_s:.0f}s"
                + (" (continues the previous outage)" if continues else ""),
            )
        elif kind == "replica_kill":
            replica = rng.choice(self.replicas)
            down_s = rng.uniform(10, 300)
            self._record(kind, None, budget, detail=f"replica {replica.index} for {down_s:.0f}s")
            replica.kill()
            await clock.sleep(down_s)
            replica.start()

    @staticmethod
    def _reconnect(world: Any, job: Job, url: str) -> None:
        if job.state.value == "PROCESSING" and job.rtmp.get(url) in ("DISCONNECTED", "RECONNECTING"):
            world.set_rtmp(job, url, "CONNECTED")

    @staticmethod
    def _callbacks_normal(world: Any) -> None:
        world.sender.faults = CallbackFaults()

    async def _keep_replicas_dead_or_alive(self) -> None:
        """A replica that exits by itself (a crash) is a finding, not a fault: it is recorded and restarted
        as a supervisor would."""
        while True:
            await asyncio.sleep(0.5)
            for replica in self.replicas:
                code = replica.proc.poll() if replica.proc is not None else None
                if code is not None and code != -signal.SIGKILL:
                    self.recording.skipped_faults[f"replica {replica.index} exited by itself ({code})"] += 1
                    replica.start()

    # --- observation ---

    async def _sample_resources(self) -> None:
        while True:
            for replica in self.replicas:
                sample = replica.resources()
                if sample is not None:
                    self.recording.resources[f"{replica.index}.{replica.incarnation}"].append(
                        (clock.time(), *sample)
                    )
            await asyncio.sleep(1.0)

    async def _tail_streams(self, redis: aioredis.Redis) -> None:
        """Follow every room's event stream (they are capped: read them as they grow) and count the
        callbacks the daemon recorded."""
        while True:
            with contextlib.suppress(Exception):
                await self._tail_once(redis, self._tailed)
            await asyncio.sleep(0.5)

    async def _tail_once(self, redis: aioredis.Redis, last: dict[str, str]) -> None:
        streams = {keys.room_events(room_id): last.get(room_id, "0-0") for room_id in self.room_ids}
        while True:
            answer = await redis.xread(streams, count=1000)
            if not answer:
                return
            for stream, entries in answer:
                room_id = stream.decode().split("{", 1)[1].split("}", 1)[0]
                for entry_id, fields in entries:
                    streams[keys.room_events(room_id)] = last[room_id] = entry_id.decode()
                    if fields.get(b"kind") == b"action":
                        self.recording.actions[room_id].append(
                            (
                                int(fields.get(b"event_ms", b"0")) / 1000,
                                fields.get(b"action", b"").decode(),
                                fields.get(b"outcome", b"").decode()[:80],
                                fields.get(b"reason", b"").decode()[:120],
                            )
                        )
                    if fields.get(b"kind") == b"callback":
                        message = _message(fields.get(b"message", b"{}"))
                        self.recording.stream_callbacks[
                            (room_id, fields[b"event_type"].decode(), _identity(message))
                        ] += 1

    # --- judging ---

    def _judge(self, sandbox: MetaStudioSandbox, end_s: float) -> dict[str, Any]:
        config, rec = self.config, self.recording
        history = sorted([*(sandbox.world.history or []), *self._ss_history()], key=lambda h: h[0])
        live, jobs = analysis.lives(history, end_s)
        should = {r: should_be_live(self.schedules[r], self.start, self.end) for r in self.room_ids}
        r = SOAK_SETTINGS["scheduling"]["reconcile_interval_s"]
        tolerance = SOAK_SETTINGS["scheduling"]["boundary_tolerance_s"]
        start_budget = WAITING_S + CONNECT_S + r + tolerance
        # A boundary (or the pass after it) plus a pass's own length: at 150x a pass over 100 rooms takes up
        # to a simulated interval to reach a given room.
        stop_budget = 2 * r + abs(self.skew_s) + tolerance
        span = (self.measured_from, end_s)
        outcome = analysis.analyse(
            should=should,
            live=live,
            jobs=jobs,
            faults=rec.faults,
            start_budget_s=start_budget,
            stop_budget_s=stop_budget,
            span=span,
        )
        verdicts = [
            analysis.Verdict(
                "live availability outside recovery budgets",
                round(outcome["availability"], 6),
                ">= 0.999",
                outcome["availability"] >= 0.999,
                [
                    f"{k}: {v['availability']} down {v['down']}"
                    for k, v in outcome["per_room"].items()
                    if v["availability"] < 0.999
                ][:20],
            ),
            analysis.Verdict(
                "jobs started beyond one per window plus justified restarts",
                len(outcome["extra_starts"]),
                "0",
                not outcome["extra_starts"],
                outcome["extra_starts"][:20],
            ),
            analysis.Verdict(
                "jobs running outside windows",
                len(outcome["outside_windows"]),
                "0",
                not outcome["outside_windows"],
                outcome["outside_windows"][:20],
            ),
        ]
        verdicts += self._callbacks_verdict(sandbox)
        verdicts += self._audience_verdicts(sandbox, live)
        verdicts += self._alert_verdicts(outcome, live, should, start_budget)
        verdicts += self._resource_verdicts()
        verdicts.append(
            analysis.Verdict(
                "replicas that exited by themselves",
                sum(v for k, v in rec.skipped_faults.items() if "exited" in k),
                "0",
                not any("exited" in k for k in rec.skipped_faults),
            )
        )
        timeline = self._timeline(should, live, span)
        return {
            "config": {
                **asdict(config),
                "start": self.start.isoformat(),
                "skew_s": self.skew_s,
                "settings": SOAK_SETTINGS,
                "restart": RESTART,
            },
            "seed": config.seed,
            "budgets_s": self.budget,
            "start_budget_s": start_budget,
            "stop_budget_s": stop_budget,
            "availability": outcome["availability"],
            "required_room_s": round(outcome["required_s"]),
            "down_room_s": round(outcome["down_s"], 1),
            "recovery": outcome["recovery"],
            "faults": {
                "injected": dict(Counter(f.kind for f in rec.faults)),
                "skipped (no running job)": dict(rec.skipped_faults),
            },
            "verdicts": [asdict(v) for v in verdicts],
            "ok": all(v.ok for v in verdicts),
            "worst_rooms": sorted(
                ({"room_id": k, **v} for k, v in outcome["per_room"].items()), key=lambda x: x["availability"]
            )[:5],
            "timeline": timeline,
            "fault_list": [{**asdict(f), "at": round(f.at - self.start.timestamp(), 1)} for f in rec.faults],
            "actions": {
                room: [(round(t - self.start.timestamp(), 1), *rest) for t, *rest in acts]
                for room, acts in rec.actions.items()
            },
            "jobs": sum(len(v) for v in jobs.values()),
            "audience": {"accepted": len(rec.accepted), "uncertain": len(rec.uncertain)},
            "alerts": rec.alerts,
        }

    def _callbacks_verdict(self, sandbox: MetaStudioSandbox) -> list[analysis.Verdict]:
        acked: Counter[tuple[str, str, str]] = Counter()
        for delivery in sandbox.world.sender.log:
            if delivery.status == 200:
                room_id = str(delivery.message.get("room_id", ""))
                acked[(room_id, delivery.event_type, _identity(delivery.message))] += 1
        for ss in self.softsugar.world.deliveries:
            if ss.status == 200:
                acked[
                    (str(ss.body.get("userData", "")), f"status_{ss.body['status']}", _identity(ss.body))
                ] += 1
        lost = [
            f"{k[0]} {k[1]} {k[2][:80]}" for k, n in acked.items() if self.recording.stream_callbacks[k] < n
        ]
        if os.environ.get("SOAK_DEBUG"):
            (self.workdir / "callbacks-acked.json").write_text(
                json.dumps([[*k, n] for k, n in acked.items()])
            )
            (self.workdir / "callbacks-stream.json").write_text(
                json.dumps([[*k, n] for k, n in self.recording.stream_callbacks.items()])
            )
        return [
            analysis.Verdict(
                "acknowledged callbacks lost", len(lost), f"0 of {sum(acked.values())}", not lost, lost[:20]
            )
        ]

    def _audience_verdicts(
        self, sandbox: MetaStudioSandbox, live: dict[str, list[analysis.Interval]]
    ) -> list[analysis.Verdict]:
        rec = self.recording
        reported: Counter[str] = Counter()
        receipts: dict[str, list[tuple[str, str | None]]] = {}  # marker → (job, X-Batch-Id) of each receipt
        inserted: Counter[tuple[str, str]] = Counter()
        for job in [*sandbox.world.jobs.values(), *sandbox.world.gone.values()]:
            for event, batch_id in zip(job.reported, job.reported_batch, strict=True):
                content = event.get("content")
                text = json.dumps(content, ensure_ascii=False) if not isinstance(content, str) else content
                for marker in set(_markers(text)):
                    reported[marker] += 1
                    receipts.setdefault(marker, []).append((job.job_id, batch_id))
            for insert in job.inserts:
                for marker in set(_markers(insert.text)):
                    inserted[(job.room_id, marker)] += 1
        for session in self.softsugar.world.sessions.values():
            for item in session.received:  # every takeover the daemon queued
                for marker in set(_markers(item.text)):
                    inserted[(session.user_data or "", marker)] += 1
        max_age = 300.0  # interaction.report_max_age_s: older events are dropped (counted), not reported
        lost = []
        for marker, (room_id, at) in rec.accepted.items():
            if reported[marker] or room_id in self.softsugar_rooms:  # SoftSugar takes no event reports
                continue
            # Excused: the room stopped being live before the event could be reported (its job ended:
            # a report to an ended job is refused), or a fault's budget covers it.
            window = [(at, at + max_age)]
            if analysis.subtract(window, live.get(room_id, [])):
                continue
            if any(
                f.at - max_age <= at <= f.at + f.budget_s for f in rec.faults if f.room_id in (None, room_id)
            ):
                continue
            lost.append(f"{room_id} {marker} accepted at +{at - self.start.timestamp():.0f}s")
        # MetaStudio takes no idempotency key, so a batch resent after an ambiguous failure (the vendor took
        # it, the answer was lost: a hang, a reset, a replica killed or Redis lost before the acknowledgement)
        # is applied again. Such a resend carries the whole batch under its one id, and must follow a fault;
        # one event in two *different* batches is the reporter's bug, whatever happened.
        lease_s = float(SOAK_SETTINGS["interaction"]["lease_ttl_s"])  # a successor resends within a lease
        twice, resent, unjustified = [], [], []
        for marker, seen in receipts.items():
            if len(seen) < 2:
                continue
            if len({batch_id for _, batch_id in seen}) > 1:
                twice.append(f"{marker} {seen}")
                continue
            room_id, at = rec.accepted.get(marker, ("", 0.0))
            resent.append(marker)
            if not any(
                f.at - max_age <= at <= f.at + f.budget_s + lease_s
                for f in rec.faults
                if f.room_id in (None, room_id)
            ):
                unjustified.append(f"{room_id} {marker} {seen}")
        replies_twice = [f"{r} {m}" for (r, m), n in inserted.items() if n > 1]
        return [
            analysis.Verdict(
                "audience events accepted and not reported",
                len(lost),
                f"0 of {len(rec.accepted)}",
                not lost,
                lost[:500],
            ),
            analysis.Verdict(
                "audience events reported in two batches", len(twice), "0", not twice, twice[:20]
            ),
            analysis.Verdict(
                "audience events resent whole after an ambiguous failure, not after a fault",
                len(unjustified),
                f"0 of {len(resent)} resent",
                not unjustified,
                unjustified[:20],
            ),
            analysis.Verdict(
                "replies inserted twice",
                len(replies_twice),
                f"0 of {sum(inserted.values())}",
                not replies_twice,
                replies_twice[:20],
            ),
        ]

    def _alert_verdicts(
        self,
        outcome: dict[str, Any],
        live: dict[str, list[analysis.Interval]],
        should: dict[str, list[analysis.Interval]],
        start_budget: float,
    ) -> list[analysis.Verdict]:
        rec = self.recording
        loud = [a for a in rec.alerts if a["severity"] in ("warning", "error", "critical")]
        missing = []
        for f in rec.faults:
            if not f.needs_human:
                continue
            wanted_kind = {"job_block": "room_blocked", "ss_shortage": "start_failed"}.get(
                f.kind, "redis_lost"
            )
            if not any(
                a["kind"] == wanted_kind
                and f.at - 5 <= a["at"] <= f.at + f.budget_s + 120
                and (f.room_id is None or a["room_id"] == f.room_id)
                for a in loud
            ):
                missing.append(f"{f.kind} at +{f.at - self.start.timestamp():.0f}s {f.room_id or ''}")
        noise = []
        for a in loud:
            if a["kind"] in ("room_blocked", "redis_lost", "circuit_open"):
                continue
            room = a["room_id"]
            if a["kind"] == "start_failed" and any(
                f.kind == "ss_shortage"
                and f.room_id == room
                and f.at - 5 <= a["at"] <= f.at + f.budget_s + 120
                for f in rec.faults
            ):
                continue  # the account is short of channels: the operator must hear of it
            # an alert is earned when the room is down beyond its budgets at the time
            down = outcome["per_room"].get(room, {}).get("down", [])
            if any(s - 60 <= a["at"] <= e + 60 for s, e in down):
                continue
            noise.append(
                f"{a['kind']} {room} at +{a['at'] - self.start.timestamp():.0f}s: {a['message'][:80]}"
            )
        return [
            analysis.Verdict(
                "faults that needed a human without an alert", len(missing), "0", not missing, missing[:20]
            ),
            analysis.Verdict(
                "alerts for faults healed within budget", len(noise), "0", not noise, noise[:20]
            ),
        ]

    def _resource_verdicts(self) -> list[analysis.Verdict]:
        """Memory and fds per replica process that lived a quarter of the run or more.

        Connections are pooled, and pools fill as a replica takes more rooms (those of a killed replica)
        and more vendor calls at once: they are judged against their caps -- outgoing connections (the
        Redis pool, its watcher and subscriber, the vendor and alert HTTP pool) at most
        ``OUTGOING_CAP``, inbound ones at most the listeners' caps -- and every other descriptor (files,
        the journal, listeners, the event loop's own) and the RSS must not drift: the last quarter's median
        within +8 fds and 1.25x RSS of the third quarter's. A leak grows through the second half and moves
        the median; a burst (an outage's reconnects) moves only the peak, which is reported beside it."""
        detail, ok = [], True
        summary = {}
        for name, samples in self.recording.resources.items():
            if len(samples) < 40 or samples[-1][0] - samples[0][0] < self.config.span_s / 4:
                continue  # a short-lived incarnation (killed and restarted): too little to see a drift in
            q = len(samples) // 4
            second, last = samples[2 * q : 3 * q], samples[3 * q :]
            rss2, rss4 = statistics.median(s[1] for s in second), statistics.median(s[1] for s in last)
            own2 = statistics.median(s[2] - s[3] - s[4] for s in second)
            own4 = statistics.median(s[2] - s[3] - s[4] for s in last)
            outgoing_peak = max(s[3] for s in samples)
            inbound_peak = max(s[4] for s in samples)
            summary[name] = {
                "rss_kib_median": [rss2, rss4],
                "own_fds_median": [own2, own4],
                "fds_median": [
                    statistics.median(s[2] for s in second),
                    statistics.median(s[2] for s in last),
                ],
                "rss_kib_peak": max(s[1] for s in samples),
                "fds_peak": max(s[2] for s in samples),
                "outgoing_peak": outgoing_peak,
                "inbound_peak": inbound_peak,
            }
            if rss4 > 1.25 * rss2 or own4 > own2 + 8:
                ok = False
                detail.append(f"replica {name}: RSS {rss2}→{rss4} KiB, own fds {own2}→{own4}")
            if outgoing_peak > OUTGOING_CAP or inbound_peak > INBOUND_CAP:
                ok = False
                detail.append(f"replica {name}: connections out {outgoing_peak}, in {inbound_peak}")
        return [
            analysis.Verdict(
                "replica memory and fds bounded (3rd vs 4th quarter median)", summary, "no drift", ok, detail
            )
        ]

    def _timeline(
        self,
        should: dict[str, list[analysis.Interval]],
        live: dict[str, list[analysis.Interval]],
        span: analysis.Interval,
    ) -> list[tuple[float, int, int]]:
        step = max(60.0, (span[1] - span[0]) / 720)
        points = []
        t = span[0]
        while t <= span[1]:
            wanted = sum(analysis.covers(should[r], t) for r in self.room_ids)
            up = sum(analysis.covers(live.get(r, []), t) for r in self.room_ids)
            points.append((round((t - span[0]) / 3600, 3), wanted, up))
            t += step
        return points


def _message(raw: bytes | str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
        if isinstance(value, str):
            value = json.loads(value)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _identity(message: dict[str, Any]) -> str:
    """What tells one callback from another, in the sender's message and in the daemon's record alike (the
    record drops the stream key -- a secret -- and types the numbers)."""
    fields = (
        "job_id",
        "output_url",
        "state",
        "scene_script_name",
        "shoot_script_sequence_no",
        "shoot_script_title",
        "reply_id",
        "sessionId",  # SoftSugar's status callbacks
        "status",
        "commandTraceId",
    )
    return "|".join(str(message.get(name, "")) for name in fields)


def _markers(text: str) -> list[str]:
    return _MARKER.findall(text)


def _toml(settings: dict[str, dict[str, Any]]) -> str:
    """The settings as TOML (flat sections and inline tables: all this configuration needs)."""

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    lines = []
    for section, items in settings.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in items.items()]
        lines.append("")
    return "\n".join(lines)
