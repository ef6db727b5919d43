"""Overload without collapse (issue 18, point 4): the daemon offered twice its sustained rate for 30 s.

The same processes as ``bench.py`` (private Redis, the MetaStudio sandbox as its own process, ``orchestrator
run``), 100 live rooms. Steps, in one run:

1. the daemon's sustained rate with reporting (closed loop, ``--duration`` s): its capacity, this run;
2. open loop at 2x that for ``--overload-s`` s: answers by status (200, 429 BACKLOG_FULL / BUSY), events
   accepted and shed, the daemon's RSS every second (its peak is the memory bound);
   Before it, open loop at 25 % for ``--after-s`` s: the latency that is normal for this machine, this run;
3. after the load: how long until every event answered 2xx has been reported (nothing accepted is lost:
   the daemon's own account, and the sandbox's count of reported comments, must cover them), then open
   loop at 25 % for ``--after-s`` s: ingest → report, decision and event-loop lag p99, over the whole
   phase and in ``--window-s`` windows from its start -- against the same figures before the load.

    python benchmarks/pipeline/overload.py [--duration 10] [--overload-s 30] [--after-s 10] [--out overload.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import bench  # noqa: E402
from bench import AK, BATCH, HOT_ROOMS, POLICY, PROJECT, ROOT, SK, TOKEN  # noqa: E402

from tests.support.redis_server import RedisServer, free_port  # noqa: E402


async def flood(port: int, payloads: list[bytes], rate: float, duration_s: float, pid: int) -> dict[str, Any]:
    """Open loop at ``rate``; answers by status and error code, events accepted and shed, RSS each second."""
    interval = BATCH / rate
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    statuses: dict[str, int] = {}
    accepted = shed = 0
    rss: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
        start = time.monotonic()
        tasks = []

        async def send(n: int) -> None:
            nonlocal accepted, shed
            async with http.post(
                f"http://127.0.0.1:{port}/api/rooms/{bench.room_id(n % HOT_ROOMS)}/events",
                data=payloads[n % len(payloads)],
                headers=headers,
            ) as resp:
                body = await resp.json()
                key = str(resp.status) if resp.status == 200 else f"{resp.status} {body.get('error_code')}"
                statuses[key] = statuses.get(key, 0) + 1
                if resp.status == 200:
                    accepted += body["accepted"]
                    shed += body.get("shed", 0)

        async def watch() -> None:
            while True:
                rss.append(bench.rss_mb(pid))
                await asyncio.sleep(1)

        watching = asyncio.create_task(watch())
        n = 0
        while (due := start + n * interval) < start + duration_s:
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            tasks.append(asyncio.create_task(send(n)))
            n += 1
        await asyncio.gather(*tasks)
        watching.cancel()
    return {
        "rate_offered": round(rate),
        "requests": n,
        "answers": statuses,
        "events_accepted": accepted,
        "events_shed": shed,
        "rss_peak_mb": max(rss),
        "rss_samples_mb": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--overload-s", type=float, default=30)
    parser.add_argument("--after-s", type=float, default=10)
    parser.add_argument("--window-s", type=float, default=2, help="windows of the after-load phase")
    parser.add_argument(
        "--backlog-max",
        type=int,
        default=2000,
        help="interaction.ingest_backlog_max for the run (default 2,000, a tenth of the shipped 20,000: at "
        "2x capacity for 30 s the shipped bound is not reached, and the bounds are what this measures)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "overload.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orch-overload-"))
    server = RedisServer()
    server.start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    result: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "backlog_max": args.backlog_max}
    try:
        ports = {name: free_port() for name in ("sandbox", "daemon")}
        policy = work / "policy.yaml"
        policy.write_text(yaml.safe_dump(POLICY, allow_unicode=True))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ORCH_")},
            # The servers started as scripts import this checkout's orchestrator, not the one an editable
            # install points at (a worktree of another commit measured its reference with that code).
            "PYTHONPATH": str(ROOT),
            "ORCH_REDIS__URL": server.url,
            "ORCH_LOGGING__LEVEL": "WARNING",
            "ORCH_ADMIN__TOKEN": TOKEN,
            "ORCH_METASTUDIO__ENDPOINT": f"http://127.0.0.1:{ports['sandbox']}",
            "ORCH_METASTUDIO__AK": AK,
            "ORCH_METASTUDIO__SK": SK,
            "ORCH_METASTUDIO__PROJECT_ID": PROJECT,
            "ORCH_CALLBACKS__JOURNAL_PATH": str(work / "journal.jsonl"),
            "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__PUBLIC_URL": f"http://127.0.0.1:{ports['daemon']}/callbacks/metastudio/live-events",
            "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__AUTH_TYPE": "NONE",
            "ORCH_INTERACTION__POLICY_FILE": str(policy),
            "ORCH_SCHEDULING__RECONCILE_INTERVAL_S": "5",
            "ORCH_INTERACTION__INGEST_BACKLOG_MAX": str(args.backlog_max),
        }
        procs["sandbox"] = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "sandbox", "metastudio", "--port", str(ports["sandbox"])]
            + ["--ak", AK, "--sk", SK, "--project-id", PROJECT, "--speed", "20"],
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
        bench.wait_http(f"http://127.0.0.1:{ports['sandbox']}/_sandbox/state")
        bench.wait_http(f"http://127.0.0.1:{ports['daemon']}/healthz")
        for i in range(HOT_ROOMS):
            req = urllib.request.Request(
                f"http://127.0.0.1:{ports['sandbox']}/_sandbox/rooms",
                data=json.dumps(
                    {
                        "room_id": bench.room_id(i),
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
        started = time.monotonic()
        asyncio.run(bench.put_rooms(ports["daemon"], 0, HOT_ROOMS))
        bench.wait_owned(ports["daemon"], HOT_ROOMS, started)
        pid = procs["daemon"].pid
        result["rss_before_mb"] = bench.rss_mb(pid)
        payloads = bench.bodies(40, seed=3)

        # 1. capacity, this run
        base = bench.settled(bench.metrics(ports["daemon"]))
        t0 = time.monotonic()
        accepted = asyncio.run(bench.closed_loop(ports["daemon"], payloads, args.duration, 8))
        done = asyncio.run(bench.wait_drained(ports["daemon"], base + accepted))
        capacity = accepted / (done - t0)
        result["capacity_events_per_s"] = round(capacity)

        # 1b. 25 % of it before the load: normal latency, this run
        result["before_at_25_percent"] = asyncio.run(quarter_load(ports["daemon"], payloads, capacity, args))

        # 2. twice that, for overload_s
        before = bench.metrics(ports["daemon"])
        result["overload"] = asyncio.run(flood(ports["daemon"], payloads, 2 * capacity, args.overload_s, pid))
        t_end_load = time.monotonic()

        # 3. every accepted event settled (reported, or coalesced viewer counts); then 25 % latency
        target = bench.settled(before) + result["overload"]["events_accepted"]
        drained = asyncio.run(bench.wait_drained(ports["daemon"], target, timeout_s=300))
        after = bench.metrics(ports["daemon"])
        result["after_load"] = {
            "seconds_until_all_accepted_were_reported": round(drained - t_end_load, 1),
            "accepted_settled": int(bench.settled(after) - bench.settled(before)),
            "accepted_answered_2xx": result["overload"]["events_accepted"],
            "shed_counted": int(after.get('orch_audience_events_total{outcome="shed"}', 0)),
            "rss_mb": bench.rss_mb(pid),
        }
        result["back_at_25_percent"] = asyncio.run(quarter_load(ports["daemon"], payloads, capacity, args))
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=30)
        server.close()
    print(json.dumps({k: v for k, v in result.items()}, indent=2, ensure_ascii=False))
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


async def quarter_load(port: int, payloads: list[bytes], capacity: float, args: Any) -> dict[str, Any]:
    """Open loop at 25 % of ``capacity`` for ``args.after_s``: latencies over the phase and per window."""
    start = await asyncio.to_thread(bench.metrics, port)
    load = asyncio.create_task(bench.open_loop(port, payloads, capacity * 0.25, args.after_s))
    snapshots = [start]
    while not load.done():
        await asyncio.wait({load}, timeout=args.window_s)
        snapshots.append(await asyncio.to_thread(bench.metrics, port))
    sent = load.result()
    await bench.wait_drained(port, bench.settled(start) + sent["accepted"])
    end = await asyncio.to_thread(bench.metrics, port)

    def figures(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
        return {
            "ingest_to_report": bench.histogram_share(a, b, "orch_report_latency_seconds", "0.3"),
            "decision": bench.histogram_share(a, b, "orch_reply_decision_seconds", "0.005"),
            "event_loop_lag": bench.histogram_share(a, b, "orch_event_loop_lag_seconds", "0.005"),
        }

    return {
        "open_loop": sent,
        **figures(start, end),
        # Reports land up to a window after their events: each window's reports are of its own events and
        # of the last ones before it.
        "windows": [
            {"from_s": round(i * args.window_s, 1), **figures(a, b)}
            for i, (a, b) in enumerate(pairwise(snapshots))
        ],
    }


if __name__ == "__main__":
    main()
