"""Audience pipeline: ingest rate with reporting against a same-run limit, latency at shares of the daemon's
own capacity, CPU per event, memory.

Processes: a private ``redis-server``; the MetaStudio sandbox (``orchestrator sandbox metastudio``, its own
process: it is the vendor); the daemon (``orchestrator run``); the reference pipeline
(``reference_server.py``); a bare handler (``bare_server.py``); the load generator (this process, aiohttp
client, request bodies serialised up front).

1. **Sustained ingest rate with reporting** (100 live rooms): closed-loop POSTs of 250-event batches for
   ``--duration`` s; an event counts only once the vendor has accepted the report carrying it (the clock
   stops when the sandbox has them all). Measured in alternating rounds for (a) the bare handler (parses
   and answers: how fast the machine is right now), (b) the **reference pipeline** -- the same parts with
   nothing else: an aiohttp handler that normalises the events and XADDs them with one Lua call, one reader
   that XREADGROUPs and POSTs 1,000-event batches to the same sandbox endpoint -- and (c) the daemon.
   Target (issue 18): daemon / reference >= 0.5, medians. Each process's CPU time per event (from /proc,
   around its rounds: daemon, reference, sandbox, Redis) is reported beside: steadier than rates.
2. **Latency at shares of capacity**: open-loop load at ``--shares`` (25 %, 50 %, 75 %) of the daemon's
   sustained rate measured in step 1 of the same run, ``--warmup-s`` + ``--latency-s`` each; the daemon's
   own histograms (steady state, after the warm-up) give, at their bucket edges, the p99 of ingest → vendor
   accepted (target at 50 %: <= report window 200 ms + 100 ms) and of reply decisions (<= 5 ms).
3. **Memory with 1,000 live rooms**: the daemon's RSS idle with no rooms (at start), after the phases
   above, with 900 more rooms live on the sandbox and owned by its audience service (one room worker
   each), and after every room has had 250 events.

**Per-room policies** (issue 16): with ``--policies N`` (default 10) the rooms answer by N brand policies
saved through the admin API (room i names brand i mod N), each with its own rule, FAQ, reactions to
joins, likes and gifts (by value tier) and masked names -- so likes and gifts are decided too;
``--policies 0``: every room by the one file policy, as before.

    python benchmarks/pipeline/bench.py [--duration 15] [--rounds 2] [--shares 0.25 0.5 0.75]
        [--policies 10] [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from orchestrator.interaction.policy import Event, History, PolicyConfig, decide  # noqa: E402
from tests.support.redis_server import RedisServer, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
AK, SK, PROJECT = "PIPEAK", "pipe-sk", "pipe-project"
TOKEN = "bench-admin-token-0123456789"
ROOMS = 1000
HOT_ROOMS = 100
BATCH = 250
POLICY = {
    "rules": [{"name": "shipping", "patterns": ["发货"], "replies": ["{user}，今天下单明天发货。"]}],
    "faq": [{"question": "有优惠券吗", "answer": "关注主播领券。"}],
    "gift_thanks": None,
    "per_user_interval_s": 30,
    "per_room_per_minute": 60,  # generous: a room that speaks a reply every second (burst of 3)
    "dedup_window_s": 0,
}
TEXTS = ["什么时候发货", "好看", "主播好", "有优惠券吗", "这个颜色不错", "已下单", "来了来了", "支持一下"]


def brand_policy(k: int) -> dict[str, Any]:
    """Brand k's policy: its own answers, and reactions to every kind the load sends."""
    return {
        "rules": [
            {"name": "shipping", "patterns": ["发货"], "replies": [f"{{user}}，品牌{k}今天下单明天发货。"]}
        ],
        "faq": [{"question": "有优惠券吗", "answer": f"关注品牌{k}领券。"}],
        "reactions": {
            "join": {"templates": [f"欢迎{{user}}来到品牌{k}", "欢迎{user}"], "per_room_per_minute": 6},
            "like": {"templates": ["谢谢{user}的赞"], "per_room_per_minute": 2},
            "gift": {
                "tiers": [
                    {"min_value": 0, "templates": ["谢谢{user}的{gift}"]},
                    {"min_value": 100, "templates": ["{user}的{gift}太贵重啦"]},
                ]
            },
        },
        "mask_user": "partial",
        "per_user_interval_s": 30,
        "per_room_per_minute": 60,
        "dedup_window_s": 0,
    }


def save_policies(port: int, count: int) -> None:
    for k in range(count):
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/policies/brand-{k}",
            data=json.dumps(brand_policy(k), ensure_ascii=False).encode(),
            method="PUT",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200


def room_id(i: int) -> str:
    return f"pipe-{i:04d}"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    """The process's own CPU time (user + system), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vendor_reported(port: int) -> int:
    """Events the sandbox has accepted in reports, over every job."""
    return sum(get_json(f"http://127.0.0.1:{port}/_sandbox/state").get("reported", {}).values())


async def wait_vendor(port: int, target: int, timeout_s: float = 120) -> float:
    deadline = time.monotonic() + timeout_s
    while vendor_reported(port) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the vendor has {vendor_reported(port)} of {target} events")
        await asyncio.sleep(0.05)
    return time.monotonic()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            get_json(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def bodies(count: int, seed: int) -> list[bytes]:
    """Pre-serialised ingest bodies of BATCH events: 80 % comments (1 in 8 answered by a rule), likes,
    gifts, viewer counts; distinct users."""
    rng = random.Random(seed)
    out = []
    for b in range(count):
        events: list[dict[str, Any]] = []
        for i in range(BATCH):
            user = {"userId": f"u{seed}-{b}-{i}", "name": f"观众{i}", "level": rng.randrange(1, 40)}
            roll = rng.random()
            if roll < 0.8:
                events.append({"type": "comment", "user": user, "text": rng.choice(TEXTS)})
            elif roll < 0.9:
                events.append({"type": "like", "user": user})
            elif roll < 0.95:
                events.append({"type": "gift", "user": user, "gift": {"giftName": "rose", "giftNum": 1}})
            else:
                events.append({"type": "viewers", "viewers": rng.randrange(100, 5000)})
        out.append(json.dumps({"events": events}, ensure_ascii=False).encode())
    return out


def settled(values: dict[str, float]) -> float:
    return sum(
        values.get(f'orch_audience_events_total{{outcome="{o}"}}', 0.0)
        for o in ("reported", "coalesced", "expired", "rejected", "dropped")
    )


async def closed_loop(port: int, payloads: list[bytes], duration_s: float, concurrency: int) -> int:
    """POST batches as fast as they are answered; the number of events accepted."""
    accepted = 0
    stop = time.monotonic() + duration_s
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker(w: int) -> None:
            nonlocal accepted
            n = w
            while time.monotonic() < stop:
                room = room_id(n % HOT_ROOMS)
                body = payloads[n % len(payloads)]
                n += concurrency
                async with http.post(
                    f"http://127.0.0.1:{port}/api/rooms/{room}/events", data=body, headers=headers
                ) as resp:
                    answer = await resp.json()
                    accepted += answer["accepted"]

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return accepted


async def open_loop(port: int, payloads: list[bytes], rate: float, duration_s: float) -> dict[str, Any]:
    """One BATCH-event request every BATCH/rate s, on schedule; how late the sends ran."""
    interval = BATCH / rate
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    lag: list[float] = []
    accepted = 0
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
        start = time.monotonic()
        tasks = []

        async def send(n: int) -> None:
            nonlocal accepted, errors
            room = room_id(n % HOT_ROOMS)
            async with http.post(
                f"http://127.0.0.1:{port}/api/rooms/{room}/events",
                data=payloads[n % len(payloads)],
                headers=headers,
            ) as resp:
                if resp.status == 200:
                    accepted += (await resp.json())["accepted"]
                else:
                    errors += 1

        n = 0
        while (due := start + n * interval) < start + duration_s:
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            lag.append(time.monotonic() - due)
            tasks.append(asyncio.create_task(send(n)))
            n += 1
        await asyncio.gather(*tasks)
    lag.sort()
    return {
        "rate_events_per_s": rate,
        "requests": n,
        "accepted": accepted,
        "errors": errors,
        "send_lag_p99_ms": round(1000 * lag[int(len(lag) * 0.99)], 2),
    }


def histogram_share(before: dict[str, float], after: dict[str, float], name: str, le: str) -> dict[str, Any]:
    count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
    within = after.get(f'{name}_bucket{{le="{le}"}}', 0) - before.get(f'{name}_bucket{{le="{le}"}}', 0)
    buckets = sorted(
        (float(k.split('le="')[1].rstrip('"}')), after[k] - before.get(k, 0))
        for k in after
        if k.startswith(f"{name}_bucket") and "+Inf" not in k
    )
    p99_bucket = next((edge for edge, n in buckets if count and n / count >= 0.99), None)
    p50_bucket = next((edge for edge, n in buckets if count and n / count >= 0.50), None)
    return {
        "observations": int(count),
        f"share_within_{le}_s": round(within / count, 5) if count else None,
        "p50_at_most_s": p50_bucket,
        "p99_at_most_s": p99_bucket,
    }


def decide_baseline() -> dict[str, Any]:
    """The reply policy alone on the benchmark's comments: µs per decision, p50/p99."""
    config = PolicyConfig.model_validate(POLICY)
    history = History()
    rng = random.Random(5)
    times = []
    for i in range(20000):
        event = Event(type=1, user_id=f"u{i}", user_name="观众", text=rng.choice(TEXTS), at=time.time())
        t0 = time.perf_counter()
        decide(config, history, event, product="保温杯")
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "p50_us": round(1e6 * times[len(times) // 2], 1),
        "p99_us": round(1e6 * times[int(len(times) * 0.99)], 1),
    }


async def wait_drained(port: int, target: float, timeout_s: float = 120) -> float:
    deadline = time.monotonic() + timeout_s
    while settled(metrics(port)) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"backlog not drained: {settled(metrics(port))} of {target}")
        await asyncio.sleep(0.05)
    return time.monotonic()


async def put_rooms(port: int, first: int, end: int, policies: int = 0) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as http:

        async def put(i: int) -> None:
            room = {
                "room_id": room_id(i),
                "template": {"output_urls": [f"rtmp://push.example/live/{i}"]},
                "schedule": {"timezone": "UTC", "windows": [{"kind": "always"}]},
            }
            if policies:
                room["policy"] = f"brand-{i % policies}"
            async with http.put(
                f"http://127.0.0.1:{port}/api/rooms/{room_id(i)}", json=room, headers=headers
            ) as resp:
                assert resp.status == 200, await resp.text()

        for start in range(first, end, 50):
            await asyncio.gather(*(put(i) for i in range(start, min(end, start + 50))))


def wait_owned(port: int, rooms: int, started: float) -> None:
    while metrics(port).get("orch_audience_rooms_owned", 0) < rooms:
        if time.monotonic() - started > 300:
            raise TimeoutError(f"{rooms} rooms did not all go live")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=15, help="seconds per closed-loop round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of bare and daemon")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--shares",
        type=float,
        nargs="+",
        default=[0.25, 0.5, 0.75],
        help="open-loop rates for the latency phases, as shares of the daemon's sustained rate in this run",
    )
    parser.add_argument("--latency-s", type=float, default=15)
    parser.add_argument(
        "--warmup-s", type=float, default=5, help="open-loop seconds before the latency counts"
    )
    parser.add_argument("--policies", type=int, default=10, help="brand policies the rooms name (0: none)")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="orch-pipe-"))
    server = RedisServer()
    server.start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    result: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "policies": args.policies,
    }
    try:
        ports = {name: free_port() for name in ("sandbox", "daemon", "bare", "reference")}
        policy = work / "policy.yaml"
        policy.write_text(yaml.safe_dump(POLICY, allow_unicode=True))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ORCH_")},
            # The servers started as scripts import this checkout's orchestrator, not the one an editable
            # install points at (a worktree of another commit measured its reference with that code).
            "PYTHONPATH": str(ROOT),
            "ORCH_REDIS__URL": server.url,
            "ORCH_LOGGING__LEVEL": "WARNING",
            "ORCH_SERVER__EVENT_LOOP": "uvloop",  # the daemon's default; the bare baseline uses it too
            "ORCH_ADMIN__TOKEN": TOKEN,
            "ORCH_METASTUDIO__ENDPOINT": f"http://127.0.0.1:{ports['sandbox']}",
            "ORCH_METASTUDIO__AK": AK,
            "ORCH_METASTUDIO__SK": SK,
            "ORCH_METASTUDIO__PROJECT_ID": PROJECT,
            "ORCH_METASTUDIO__MAX_CONCURRENCY": "8",
            "ORCH_CALLBACKS__JOURNAL_PATH": str(work / "journal.jsonl"),
            "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__PUBLIC_URL": f"http://127.0.0.1:{ports['daemon']}/callbacks/metastudio/live-events",
            "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__AUTH_TYPE": "NONE",
            "ORCH_INTERACTION__POLICY_FILE": str(policy),
            "ORCH_SCHEDULING__RECONCILE_INTERVAL_S": "5",
        }
        procs["sandbox"] = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "sandbox", "metastudio", "--port", str(ports["sandbox"])]
            + ["--ak", AK, "--sk", SK, "--project-id", PROJECT, "--speed", "20"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs["bare"] = subprocess.Popen(
            [sys.executable, str(HERE / "bare_server.py"), str(ports["bare"])],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs["daemon"] = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", "--port", str(ports["daemon"])],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=(work / "daemon.log").open("wb"),
        )
        wait_http(f"http://127.0.0.1:{ports['sandbox']}/_sandbox/state")
        wait_http(f"http://127.0.0.1:{ports['bare']}/healthz")
        wait_http(f"http://127.0.0.1:{ports['daemon']}/healthz")
        for i in range(ROOMS):  # the vendor side: one room each, one long paragraph, no vendor rules
            req = urllib.request.Request(
                f"http://127.0.0.1:{ports['sandbox']}/_sandbox/rooms",
                data=json.dumps(
                    {
                        "room_id": room_id(i),
                        "scene_scripts": [
                            {
                                "script_name": "s",
                                "shoot_scripts": [{"sequence_no": 1, "text_config": {"text": "讲" * 2000}}],
                            }
                        ],
                    }
                ).encode(),
                headers={"Content-Type": "application/json"},
            )
            urllib.request.urlopen(req, timeout=30).read()
        time.sleep(3)
        pid = procs["daemon"].pid
        memory: dict[str, Any] = {"rss_idle_no_rooms_mb": rss_mb(pid)}

        # --- 100 live rooms for the throughput and latency phases
        started = time.monotonic()
        save_policies(ports["daemon"], args.policies)
        asyncio.run(put_rooms(ports["daemon"], 0, HOT_ROOMS, args.policies))
        wait_owned(ports["daemon"], HOT_ROOMS, started)

        # --- 1. sustained ingest rate, alternating bare / reference / daemon; CPU per event of each process
        procs["reference"] = subprocess.Popen(
            [sys.executable, str(HERE / "reference_server.py"), str(ports["reference"]), server.url]
            + [room_id(i) for i in range(HOT_ROOMS)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=(work / "reference.log").open("wb"),
        )
        wait_http(f"http://127.0.0.1:{ports['reference']}/healthz")
        payloads = bodies(40, seed=1)
        pids = {
            "daemon": procs["daemon"].pid,
            "reference": procs["reference"].pid,
            "sandbox": procs["sandbox"].pid,
            "redis": server.pid,
        }
        rates: dict[str, list[float]] = {"bare": [], "reference": [], "daemon": []}
        cpu_us: dict[str, dict[str, list[float]]] = {"reference": {}, "daemon": {}}
        for _ in range(args.rounds):
            t0 = time.monotonic()
            accepted = asyncio.run(closed_loop(ports["bare"], payloads, args.duration, args.concurrency))
            rates["bare"].append(accepted / (time.monotonic() - t0))
            for name in ("reference", "daemon"):
                before_cpu = {k: cpu_s(v) for k, v in pids.items()}
                base_vendor = vendor_reported(ports["sandbox"])
                base_daemon = settled(metrics(ports["daemon"]))
                t0 = time.monotonic()
                accepted = asyncio.run(closed_loop(ports[name], payloads, args.duration, args.concurrency))
                if name == "reference":  # every event goes to the vendor
                    done = asyncio.run(wait_vendor(ports["sandbox"], base_vendor + accepted))
                else:  # viewer counts are coalesced: the daemon's own account (reported, coalesced, ...)
                    done = asyncio.run(wait_drained(ports["daemon"], base_daemon + accepted))
                rates[name].append(accepted / (done - t0))
                print(f"{name}: {rates[name][-1]:.0f} events/s", file=sys.stderr, flush=True)
                for k, pid_ in pids.items():
                    cpu_us[name].setdefault(k, []).append(1e6 * (cpu_s(pid_) - before_cpu[k]) / accepted)
        medians = {k: statistics.median(v) for k, v in rates.items()}
        after = metrics(ports["daemon"])
        result["throughput"] = {
            "batch_events": BATCH,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "events_per_s_per_round": {k: [round(x) for x in v] for k, v in rates.items()},
            "events_per_s_median": {k: round(v) for k, v in medians.items()},
            "ratio_daemon_to_reference": round(medians["daemon"] / medians["reference"], 3),
            "ratio_daemon_to_bare": round(medians["daemon"] / medians["bare"], 3),
            "ratio_reference_to_bare": round(medians["reference"] / medians["bare"], 3),
            "daemon_reported_events": int(after.get('orch_audience_events_total{outcome="reported"}', 0)),
        }
        result["cpu_us_per_event"] = {
            name: {proc: round(statistics.median(v), 1) for proc, v in by_proc.items()}
            for name, by_proc in cpu_us.items()
        }

        # --- 2. latency and decision time at shares of the daemon's own capacity measured above (open loop)
        capacity = medians["daemon"]

        async def latency_phase(rate: float) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
            start = metrics(ports["daemon"])
            load = asyncio.create_task(
                open_loop(ports["daemon"], payloads, rate, args.warmup_s + args.latency_s)
            )
            await asyncio.sleep(args.warmup_s)
            steady = metrics(ports["daemon"])
            return start, steady, await load

        curve = []
        for share in args.shares:
            rate = capacity * share
            before_cpu = cpu_s(pids["daemon"])
            start, steady, sent = asyncio.run(latency_phase(rate))
            daemon_cpu = cpu_s(pids["daemon"]) - before_cpu
            asyncio.run(wait_drained(ports["daemon"], settled(start) + sent["accepted"]))
            after = metrics(ports["daemon"])
            curve.append(
                {
                    "share_of_capacity": share,
                    "rate_events_per_s": round(rate),
                    "open_loop": sent,
                    "daemon_cpu_share_of_a_core": round(daemon_cpu / (args.warmup_s + args.latency_s), 3),
                    "ingest_to_report": histogram_share(steady, after, "orch_report_latency_seconds", "0.3"),
                    "decision": histogram_share(steady, after, "orch_reply_decision_seconds", "0.005"),
                    "queued_in_redis": histogram_share(steady, after, "orch_reply_queued_seconds", "0.005"),
                    "event_loop_lag": histogram_share(steady, after, "orch_event_loop_lag_seconds", "0.005"),
                    "gc_pauses": {
                        gen: int(
                            after.get(f'orch_gc_pause_seconds_count{{generation="{gen}"}}', 0)
                            - start.get(f'orch_gc_pause_seconds_count{{generation="{gen}"}}', 0)
                        )
                        for gen in ("0", "1", "2")
                    },
                }
            )
        result["latency"] = {
            "capacity_events_per_s": round(capacity),
            "warmup_s": args.warmup_s,
            "latency_s": args.latency_s,
            "report_window_s": 0.2,
            "target_ingest_to_report_p99_s": 0.3,
            "target_decision_p99_s": 0.005,
            "curve": curve,
            "decide_alone_baseline": decide_baseline(),
        }
        # --- 3. memory with 1,000 live rooms (900 more, after the throughput and latency phases)
        memory["rss_after_the_100_room_phases_mb"] = rss_mb(pid)
        started = time.monotonic()
        asyncio.run(put_rooms(ports["daemon"], HOT_ROOMS, ROOMS, args.policies))
        wait_owned(ports["daemon"], ROOMS, started)
        memory["seconds_until_900_more_live_and_owned"] = round(time.monotonic() - started, 1)
        time.sleep(2)
        memory["rss_1000_live_rooms_mb"] = rss_mb(pid)
        payload = bodies(1, seed=99)[0]

        async def touch_all() -> None:
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as http:

                async def one(i: int) -> None:
                    async with http.post(
                        f"http://127.0.0.1:{ports['daemon']}/api/rooms/{room_id(i)}/events",
                        data=payload,
                        headers=headers,
                    ) as resp:
                        assert resp.status == 200, (resp.status, await resp.text())

                for start in range(0, ROOMS, 50):
                    await asyncio.gather(*(one(i) for i in range(start, start + 50)))

        before = settled(metrics(ports["daemon"]))
        asyncio.run(touch_all())
        asyncio.run(wait_drained(ports["daemon"], before + ROOMS * BATCH))
        time.sleep(2)
        memory["rss_1000_rooms_after_250_events_each_mb"] = rss_mb(pid)
        memory["per_idle_live_room_kb"] = round(
            1024
            * (memory["rss_1000_live_rooms_mb"] - memory["rss_after_the_100_room_phases_mb"])
            / (ROOMS - HOT_ROOMS),
            1,
        )
        memory["per_room_after_traffic_kb"] = round(
            1024
            * (memory["rss_1000_rooms_after_250_events_each_mb"] - memory["rss_idle_no_rooms_mb"])
            / ROOMS,
            1,
        )
        result["memory"] = memory
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=30)
        server.close()
    print(json.dumps(result, indent=2, ensure_ascii=False))
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
