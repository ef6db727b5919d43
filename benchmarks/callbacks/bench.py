"""Callback receiver throughput and latency, as ratios against a bare aiohttp handler in the same run.

(a) bare: an aiohttp handler that reads the body and answers 200 (``bare_server.py``).
(b) real: ``orchestrator run`` as deployed -- MSS_A verification, parsing, the replay/duplicate check and
    the durable Redis write (Lua, group-committed), access log on (JSON lines to /dev/null).

Both run as their own process on the same default asyncio event loop, against the same private
redis-server, loaded by ``wrk`` on loopback with the same connections and duration. Every request is a
distinct signed SHOOT_SCRIPT_SWITCH (its own hwTime, so its own signature): none takes the duplicate
shortcut. Then an open-loop generator sends to (b) at half its measured maximum and records each
request's latency from its *scheduled* send time (so a stall is counted, not hidden).

Targets (issue 4): rps(b) >= 60 % of rps(a); p99 latency of (b) at half its maximum rate <= 10 ms.

    python benchmarks/callbacks/bench.py [--duration 10] [--connections 64] [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from orchestrator.providers.metastudio.callbacks import mss_a_url  # noqa: E402
from orchestrator.store import keys  # noqa: E402
from tests.support.redis_server import RedisServer, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
KEY = "bench-key-0123456789abcdef012345"
PATH = "/callbacks/metastudio/live-events"
SKEW_S = 3600  # the benchmark signs a long run's worth of callbacks up front


def body(room: str, job: str, seq: int) -> str:
    message = {"room_id": room, "job_id": job, "scene_script_name": "Products",
               "shoot_script_sequence_no": str(seq), "shoot_script_title": f"Paragraph {seq}"}
    return json.dumps({"event_type": "SHOOT_SCRIPT_SWITCH", "message": json.dumps(message)})


def signed(port: int, index: int, base_ms: int, rooms: int) -> tuple[str, str]:
    url = f"http://127.0.0.1:{port}{PATH}"
    room = f"bench-room-{index % rooms}"
    signed_url = mss_a_url(url, KEY, base_ms + index)
    return signed_url.removeprefix(f"http://127.0.0.1:{port}"), body(room, f"job-{room}", index)


def write_requests(path: Path, port: int, count: int, rooms: int, base_ms: int) -> None:
    with path.open("w") as fh:
        for i in range(count):
            p, b = signed(port, i, base_ms, rooms)
            fh.write(f"{p}\t{b}\n")


def prepare_rooms(redis_url: str, rooms: int) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    for i in range(rooms):
        room = f"bench-room-{i}"
        client.hset(keys.room_state(room), mapping={"managed": "1", "job_id": f"job-{room}"})
        client.sadd(keys.room_jobs(room), f"job-{room}")
        client.sadd(keys.rooms_index(), room)
    client.close()


def wait_http(url: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 -- loopback
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def run_wrk(port: int, requests_file: Path, duration: int, connections: int, threads: int) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(HERE / "replay.lua"),
         f"http://127.0.0.1:{port}", "--", str(requests_file), str(threads)],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = dict(re.findall(r"\s+(50|90|99)%\s+([\d.]+\w+)", out))
    return {"rps": rps, "requests": total, "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
            "latency_closed_loop": lat, "raw": out}


async def open_loop(port: int, rate: float, duration_s: float, start_index: int, base_ms: int, rooms: int) -> dict[str, Any]:
    """Send at a fixed rate; latency is measured from each request's scheduled time."""
    total = int(rate * duration_s)
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector) as http:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.2

        async def one(i: int) -> None:
            nonlocal errors
            scheduled = start + i / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            path, data = signed(port, start_index + i, base_ms, rooms)
            async with http.post(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            latencies.append(loop.time() - scheduled)

        await asyncio.gather(*(one(i) for i in range(total)))
    latencies.sort()
    return {
        "rate": rate,
        "requests": total,
        "errors": errors,
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2),
        "mean_ms": round(statistics.mean(latencies) * 1000, 2),
    }


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()  # noqa: S310
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("orch_callbacks_received_total{", "orch_callbacks_rejected_total{")):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (the machine has 2 cores)")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--open-loop-s", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is required: apt-get install -y wrk")

    work = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    server = RedisServer()
    server.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        prepare_rooms(server.url, args.rooms)
        bare_port, real_port = free_port(), free_port()
        base_ms = int(time.time() * 1000) - (SKEW_S // 2) * 1000
        count = args.duration * 40_000  # more than either server can take in the run
        requests_file = work / "requests.txt"
        write_requests(requests_file, real_port, count, args.rooms, base_ms)

        procs.append(subprocess.Popen([sys.executable, str(HERE / "bare_server.py"), str(bare_port)]))
        wait_http(f"http://127.0.0.1:{bare_port}/")
        bare = run_wrk(bare_port, requests_file, args.duration, args.connections, args.threads)

        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ORCH_")},
            "ORCH_REDIS__URL": server.url,
            "ORCH_LOGGING__FORMAT": "json",
            "ORCH_CALLBACKS__MAX_SKEW_S": str(SKEW_S),
            "ORCH_CALLBACKS__JOURNAL_PATH": str(work / "journal.jsonl"),
            "ORCH_CALLBACKS__PROFILES__DEFAULT__PUBLIC_URL": f"http://127.0.0.1:{real_port}{PATH}",
            "ORCH_CALLBACKS__PROFILES__DEFAULT__AUTH_TYPE": "MSS_A",
            "ORCH_CALLBACKS__PROFILES__DEFAULT__KEYS": json.dumps([KEY]),
        }
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", "--port", str(real_port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        ))
        wait_http(f"http://127.0.0.1:{real_port}/healthz")
        real = run_wrk(real_port, requests_file, args.duration, args.connections, args.threads)
        after_wrk = metrics(real_port)
        latency = asyncio.run(open_loop(real_port, real["rps"] / 2, args.open_loop_s, count, base_ms, args.rooms))
        counted = metrics(real_port)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        server.close()
        shutil.rmtree(work, ignore_errors=True)

    applied = sum(v for k, v in after_wrk.items() if 'outcome="applied"' in k)
    ratio = real["rps"] / bare["rps"]
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "wrk": {"duration_s": args.duration, "connections": args.connections, "threads": args.threads},
        "bare_rps": round(bare["rps"]),
        "real_rps": round(real["rps"]),
        "ratio": round(ratio, 3),
        "real_requests": real["requests"],
        "real_non_2xx": real["non_2xx"],
        "applied_during_wrk": applied,
        "not_applied_outcomes": {k: v for k, v in counted.items() if 'outcome="applied"' not in k},
        "open_loop": latency,
        "targets": {"ratio>=0.60": ratio >= 0.60, "p99<=10ms": latency["p99_ms"] <= 10.0},
        "closed_loop_latency": {"bare": bare["latency_closed_loop"], "real": real["latency_closed_loop"]},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "closed_loop_latency"}, indent=2))


if __name__ == "__main__":
    main()
