"""Callback receiver throughput and latency, as ratios against a bare aiohttp handler in the same run.

(a) bare: an aiohttp handler that reads the body and answers 200 (``bare_server.py``).
(b) real: ``orchestrator run`` as deployed (``deploy/``, ``docker-compose.yml``), callbacks on its public
    listener (``server.public_port``) -- MSS_A verification, parsing, the replay/duplicate check and the
    durable Redis write (Lua, group-committed), access log on (JSON lines to /dev/null; an accepted callback
    writes none by default, a refused one does).
(b') real_main: the same daemon's callback route on its main port, through the full application (router,
    request middleware): what a single-port setup gets. Reported, not a target.
(c) floor: the daemon's application with a trivial handler (``floor_server.py``): the HTTP plumbing
    every route pays (request id, JSON errors, bounded body, access log), without the receiver.
(d) reference: the callback path built from the same parts with nothing else (``reference_server.py``):
    a bare aiohttp handler that does the MSS_A check, parses the body and writes through the daemon's own
    apply script and group commit -- what acknowledging a callback cannot do without (issue 18's
    alternative target: (b) >= 80 % of (d)).

Each runs as its own process on the same event loop (uvloop unless ``--event-loop asyncio``), against the same private
redis-server, loaded by ``wrk`` on loopback with the same connections and duration, in alternating
rounds (a, b, c, a, b, c, ...); the ratios use the medians, because this shared machine's throughput
swings by a quarter between identical runs. Every request to (b) is a distinct signed
SHOOT_SCRIPT_SWITCH (its own hwTime, so its own signature): none takes the duplicate shortcut. Then an
open-loop generator sends to (b) at half its median maximum and records each request's latency from its
*scheduled* send time (so a stall is counted, not hidden).

Targets (issue 4): rps(b) >= 60 % of rps(a); p99 latency of (b) at half its maximum rate <= 10 ms. Each
server's own CPU per request (from /proc, around its rounds) is reported beside: steadier than rates on a
shared machine.

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

import redis
import uvloop

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
    message = {
        "room_id": room,
        "job_id": job,
        "scene_script_name": "Products",
        "shoot_script_sequence_no": str(seq),
        "shoot_script_title": f"Paragraph {seq}",
    }
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


def cpu_split(enabled: bool) -> tuple[set[int], set[int]]:
    """(CPUs for the servers under test, CPUs for Redis and the load generators).

    Pinned, a server's tail latency is its own: not the generator's or Redis's bursts taking its core
    (unpinned on this 2-core machine, the same configuration's p99 ranged from 6 to 35 ms between runs).
    """
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2:
        return set(cpus), set(cpus)
    return {cpus[-1]}, set(cpus[:-1])


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin(pid: int, cpus: set[int]) -> None:
    os.sched_setaffinity(pid, cpus)


def wait_http(url: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def run_wrk(port: int, requests_file: Path, duration: int, connections: int, threads: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(HERE / "replay.lua"),
            f"http://127.0.0.1:{port}",
            "--",
            str(requests_file),
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = dict(re.findall(r"\s+(50|90|99)%\s+([\d.]+\w+)", out))
    return {
        "rps": rps,
        "requests": total,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "latency_closed_loop": lat,
        "raw": out,
    }


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """One request on a keep-alive HTTP/1.1 connection over raw asyncio streams: the cheapest client Python
    has, so the generator keeps its schedule on a small machine (aiohttp's client costs several times more).
    """
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return int(head[9:12])


async def open_loop(
    port: int,
    rate: float,
    duration_s: float,
    start_index: int,
    base_ms: int,
    rooms: int,
    connections: int,
) -> dict[str, Any]:
    """Send pre-signed callbacks at a fixed rate; latency is measured from each request's scheduled time.

    ``connections`` keep-alive connections are opened before the clock starts (as a vendor's HTTP client
    keeps them); a pacing loop hands each request to a free connection when it is due, and a request that
    finds none free waits -- that wait is the server's doing and counts in its latency.
    ``generator_send_lag`` is how late the pacing loop itself was, so a saturated generator shows up as
    such instead of as server latency.
    """
    total = int(rate * duration_s)
    requests = []
    for i in range(total):
        path, data = signed(port, start_index + i, base_ms, rooms)
        requests.append(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n{data}".encode()
        )
    latencies: list[float] = []
    lags: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal errors
        while (item := await queue.get()) is not None:
            i, scheduled = item
            if await _exchange(reader, writer, requests[i]) != 200:
                errors += 1
            latencies.append(loop.time() - scheduled)
        writer.close()

    workers = [asyncio.create_task(connection(reader, writer)) for reader, writer in opened]
    start = loop.time() + 0.2
    sent = 0
    while sent < total:
        now = loop.time()
        due = min(total, int((now - start) * rate) + 1)
        while sent < due:
            scheduled = start + sent / rate
            lags.append(max(0.0, now - scheduled))
            queue.put_nowait((sent, scheduled))
            sent += 1
        await asyncio.sleep(0.0005)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    latencies.sort()
    lags.sort()

    def pct(values: list[float], q: float) -> float:
        return round(values[min(len(values) - 1, int(len(values) * q))] * 1000, 2)

    return {
        "rate": round(rate),
        "requests": total,
        "errors": errors,
        "p50_ms": pct(latencies, 0.5),
        "p99_ms": pct(latencies, 0.99),
        "max_ms": round(latencies[-1] * 1000, 2),
        "generator_send_lag_p99_ms": pct(lags, 0.99),
    }


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(
            (
                "orch_callbacks_received_total{",
                "orch_callbacks_rejected_total{",
                "orch_callback_write_batches_total ",
                "orch_callback_writes_total ",
                "orch_gc_pause_seconds_count{",
                "orch_gc_pause_seconds_sum{",
                'orch_gc_pause_seconds_bucket{generation="2",le="0.01"}',
            )
        ):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (the machine has 2 cores)")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--open-loop-s", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of (a), (b), (c)")
    parser.add_argument(
        "--event-loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="for all three servers (default uvloop)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin: by default the servers under test run on the last CPU, and Redis and the load "
        "generators on the others",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is required: apt-get install -y wrk")

    work = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    server = RedisServer()
    server.start()
    server_cpus, other_cpus = cpu_split(not args.no_pin)
    pin(server.pid, other_cpus)
    pin(0, other_cpus)  # this process: wrk and the open-loop generator inherit it
    procs: dict[str, subprocess.Popen[bytes]] = {}
    runs: dict[str, list[dict[str, Any]]] = {
        "bare": [],
        "real": [],
        "real_main": [],
        "floor": [],
        "reference": [],
    }
    try:
        prepare_rooms(server.url, args.rooms)
        ports = {name: free_port() for name in runs}
        base_ms = int(time.time() * 1000) - (SKEW_S // 2) * 1000
        per_round = args.duration * 20_000  # more than any configuration takes in one run
        count = per_round * args.rounds
        # Signed requests, each with its own time: round r of (b) takes slice 3r, of (b') slice 3r + 1 (the
        # main port's route checks the same signature: the signed URL is the public one) and of (d) slice
        # 3r + 2 (it writes to the same Redis: a callback (b) took would be a cheap duplicate), so none
        # repeats and each round's are newer than the last's (none is applied as out of order). (a) and
        # (c) get (b)'s slices with their own path.
        write_requests(work / "signed.txt", ports["real"], 3 * count, args.rooms, base_ms)
        slices = {"bare": 0, "real": 0, "real_main": 1, "floor": 0, "reference": 2}
        paths = {"bare": PATH, "real": PATH, "real_main": PATH, "floor": "/floor", "reference": PATH}
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ORCH_")},
            # The servers started as scripts import this checkout's orchestrator, not the one an editable
            # install points at (a worktree of another commit measured its reference with that code).
            "PYTHONPATH": str(ROOT),
            "ORCH_REDIS__URL": server.url,
            "ORCH_LOGGING__FORMAT": "json",
            "ORCH_SERVER__EVENT_LOOP": args.event_loop,  # (a), (b) and (c) alike
            "ORCH_CALLBACKS__MAX_SKEW_S": str(SKEW_S),
            "ORCH_CALLBACKS__JOURNAL_PATH": str(work / "journal.jsonl"),
            "ORCH_SERVER__PUBLIC_PORT": str(ports["real"]),
            "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__PUBLIC_URL": f"http://127.0.0.1:{ports['real']}{PATH}",
            "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__AUTH_TYPE": "MSS_A",
            "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__KEYS": json.dumps([KEY]),
        }
        commands = {
            "bare": [sys.executable, str(HERE / "bare_server.py"), str(ports["bare"])],
            "real": [sys.executable, "-m", "orchestrator", "run", "--port", str(ports["real_main"])],
            "floor": [sys.executable, str(HERE / "floor_server.py"), str(ports["floor"])],
            "reference": [
                sys.executable, str(HERE / "reference_server.py"), str(ports["reference"]),
                f"http://127.0.0.1:{ports['real']}{PATH}", KEY,
            ],
        }  # fmt: skip
        for name, command in commands.items():
            # Each process its own callback journal: the daemon refuses one another process holds (the
            # floor server builds the same application, and took the daemon's first).
            own = {**env, "ORCH_CALLBACKS__JOURNAL_PATH": str(work / f"journal-{name}.jsonl")}
            procs[name] = subprocess.Popen(
                command, env=own, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        for proc in procs.values():
            pin(proc.pid, server_cpus)
        for name, port in ports.items():
            wait_http(f"http://127.0.0.1:{port}/healthz" if name != "bare" else f"http://127.0.0.1:{port}/")
        for round_no in range(args.rounds):
            for name in runs:
                # Each round of (b) gets its own unused slice of signed requests.
                chunk = work / f"{name}.round.txt"
                first = (3 * round_no + slices[name]) * per_round
                with (work / "signed.txt").open() as src, chunk.open("w") as dst:
                    for i, line in enumerate(src):
                        if first <= i < first + per_round:
                            dst.write(paths[name] + line[len(PATH) :])
                pid = procs["real" if name == "real_main" else name].pid
                cpu0 = cpu_s(pid)
                run = run_wrk(ports[name], chunk, args.duration, args.connections, args.threads)
                # The server's own CPU per request: steadier than requests/s on a shared machine (a
                # neighbour's load slows every server alike, but does not change what a request costs).
                run["cpu_us_per_request"] = (cpu_s(pid) - cpu0) * 1e6 / max(1, run["requests"])
                runs[name].append(run)
        after_wrk = metrics(ports["real_main"])  # metrics are on the main port only
        real_median = statistics.median(r["rps"] for r in runs["real"])
        generator_loop = uvloop.new_event_loop if args.event_loop == "uvloop" else None
        latency: dict[str, dict[str, Any]] = {}
        for name in ("bare", "real"):  # the bare server's tail at the same rate: what the machine gives
            with asyncio.Runner(loop_factory=generator_loop) as generator:
                latency[name] = generator.run(
                    open_loop(
                        ports[name],
                        real_median / 2,
                        args.open_loop_s,
                        2 * count + (0 if name == "real" else 10**7),
                        base_ms,
                        args.rooms,
                        args.connections,
                    )
                )
        counted = metrics(ports["real_main"])
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=30)
        server.close()
        shutil.rmtree(work, ignore_errors=True)

    medians = {name: statistics.median(r["rps"] for r in rs) for name, rs in runs.items()}
    ratio = medians["real"] / medians["bare"]
    cpu = {name: statistics.median(r["cpu_us_per_request"] for r in rs) for name, rs in runs.items()}
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "event_loop": args.event_loop,
        "wrk": {
            "duration_s": args.duration,
            "connections": args.connections,
            "threads": args.threads,
            "rounds": args.rounds,
        },
        "rps_per_round": {name: [round(r["rps"]) for r in rs] for name, rs in runs.items()},
        "rps_median": {name: round(v) for name, v in medians.items()},
        "ratio_real_to_bare": round(ratio, 3),
        "ratio_real_main_to_bare": round(medians["real_main"] / medians["bare"], 3),
        "ratio_floor_to_bare": round(medians["floor"] / medians["bare"], 3),
        "ratio_real_to_floor": round(medians["real"] / medians["floor"], 3),
        "ratio_real_to_reference": round(medians["real"] / medians["reference"], 3),
        "ratio_reference_to_bare": round(medians["reference"] / medians["bare"], 3),
        "cpu_us_per_request_median": {name: round(cpu[name], 1) for name in runs},
        "cpu_us_per_request_per_round": {
            name: [round(r["cpu_us_per_request"], 1) for r in rs] for name, rs in runs.items()
        },
        "cpu_ratio_real_to_bare": round(cpu["real"] / cpu["bare"], 3),
        "cpu_ratio_real_to_reference": round(cpu["real"] / cpu["reference"], 3),
        "real_non_2xx": sum(r["non_2xx"] for name in ("real", "real_main") for r in runs[name]),
        "every_real_request_unique": all(r["requests"] <= per_round for r in runs["real"]),
        "mean_batch_size": round(
            after_wrk.get("orch_callback_writes_total", 0)
            / max(1.0, after_wrk.get("orch_callback_write_batches_total", 0)),
            1,
        ),
        "outcomes": {k: v for k, v in counted.items() if "outcome=" in k or "reason=" in k},
        "gc_pauses_whole_run": {k: v for k, v in counted.items() if k.startswith("orch_gc_pause")},
        "cpus": {"servers": sorted(server_cpus), "redis_and_generators": sorted(other_cpus)},
        "open_loop": latency["real"],
        "open_loop_bare_same_rate": latency["bare"],
        "targets": {
            "ratio>=0.60": ratio >= 0.60,
            "ratio_to_reference>=0.80": medians["real"] / medians["reference"] >= 0.80,
            "p99<=10ms": latency["real"]["p99_ms"] <= 10.0,
        },
        "closed_loop_latency": {name: [r["latency_closed_loop"] for r in rs] for name, rs in runs.items()},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "closed_loop_latency"}, indent=2))


if __name__ == "__main__":
    main()
