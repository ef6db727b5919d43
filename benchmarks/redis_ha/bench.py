"""Callbacks and ingest on one Redis and on a 3-master Redis Cluster, with 1, 2 and 3 daemon processes, as
ratios measured in the same run; and what ``redis.wait_replicas = 1`` costs on a replicated Redis.

Layout (all on loopback, this machine's two cores shared by everything):

* ``single``: one ``redis-server``; ``cluster``: three masters (``redis-cli --cluster create``, no
  replicas: the same number of copies of the data as ``single``); ``replicated``: one master with one
  replica, the daemons acknowledging after ``WAIT 1`` (``redis.wait_replicas = 1``) or not (``wait0``).
* ``k`` daemons (``orchestrator run``, scheduling off, public listener on), each loaded by its own ``wrk``
  with the same connections: callbacks are distinct signed SHOOT_SCRIPT_SWITCH to 100 rooms (MSS_A,
  verified against one public URL every daemon is configured with), ingest is batches of 20 comments to
  the same rooms (``POST /api/rooms/{room}/events``, the accept path: validation, the ingest script,
  the 200; no vendor report).
* Rounds alternate the configurations (single k=1, cluster k=1, single k=2, ...) so that the machine's
  drift falls on all of them; each cell's figure is the median of its rounds, its worst beside it.

Ratios: cluster / single at the same k; k daemons / 1 daemon on the same Redis; wait1 / wait0.

    python benchmarks/redis_ha/bench.py [--rounds 3] [--duration 5] [--out results-run1.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.callbacks.bench import body, wait_http  # noqa: E402
from orchestrator.providers.metastudio.callbacks import mss_a_url  # noqa: E402
from orchestrator.settings import RedisSettings  # noqa: E402
from orchestrator.store import keys  # noqa: E402
from orchestrator.store.redis import create_redis  # noqa: E402
from tests.support.redis_server import ClusterDeployment, RedisServer, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
REPLAY = ROOT / "benchmarks" / "callbacks" / "replay.lua"  # with a third argument: the Authorization header
KEY = "bench-key-0123456789abcdef012345"
PATH = "/callbacks/metastudio/live-events"
PUBLIC_URL = f"http://callbacks.bench.example{PATH}"  # what the vendor signs; every daemon is told it
TOKEN = "bench-admin-token-0123456789"
ROOMS = 100
EVENTS_PER_BATCH = 20
SKEW_S = 3600


def callback_lines(path: Path, count: int, start: int, base_ms: int) -> None:
    with path.open("w") as fh:
        for i in range(start, start + count):
            room = f"bench-room-{i % ROOMS}"
            url = mss_a_url(PUBLIC_URL, KEY, base_ms + i).removeprefix("http://callbacks.bench.example")
            fh.write(f"{url}\t{body(room, f'job-{room}', i)}\n")


def ingest_lines(path: Path) -> None:
    with path.open("w") as fh:
        for i in range(ROOMS):
            events = [
                {"type": "comment", "user": {"userId": f"u{j}", "name": f"viewer{j}"}, "text": f"多少钱 {j}"}
                for j in range(EVENTS_PER_BATCH)
            ]
            fh.write(
                f"/api/rooms/bench-room-{i}/events\t{json.dumps({'events': events}, ensure_ascii=False)}\n"
            )


async def prepare(url: str) -> None:
    """Flush and register the rooms (managed, each with its job) through the daemon's own client."""
    client = create_redis(RedisSettings.model_validate({"url": url}))
    try:
        await client.flushall()  # every master on a cluster
        for i in range(ROOMS):
            room = f"bench-room-{i}"
            await client.hset(keys.room_state(room), mapping={"managed": "1", "job_id": f"job-{room}"})
            await client.sadd(keys.room_jobs(room), f"job-{room}")
            await client.sadd(keys.rooms_index(), room)
    finally:
        await client.aclose()


def wrk(port: int, lines: Path, duration: int, connections: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(REPLAY),
            f"http://127.0.0.1:{port}", "--", str(lines), "1", f"Bearer {TOKEN}",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def parse_wrk(out: str) -> dict[str, Any]:
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "p99": dict(re.findall(r"\s+(99)%\s+([\d.]+\w+)", out)).get("99", "?"),
    }


class Daemons:
    """``k`` daemon processes on one Redis URL, each with its own journal and ports."""

    def __init__(self, url: str, k: int, work: Path, wait_replicas: int = 0) -> None:
        self.ports = [(free_port(), free_port()) for _ in range(k)]  # (main, public)
        self.procs: list[subprocess.Popen[bytes]] = []
        for n, (main, public) in enumerate(self.ports):
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("ORCH_")},
                "ORCH_REDIS__URL": url,
                "ORCH_REDIS__WAIT_REPLICAS": str(wait_replicas),
                "ORCH_LOGGING__FORMAT": "json",
                "ORCH_LOGGING__ACCESS_LOG": "false",
                "ORCH_ADMIN__TOKEN": TOKEN,
                "ORCH_SCHEDULING__ENABLED": "false",
                "ORCH_CALLBACKS__MAX_SKEW_S": str(SKEW_S),
                "ORCH_CALLBACKS__JOURNAL_PATH": str(work / f"journal-{n}-{main}.jsonl"),
                "ORCH_SERVER__PUBLIC_PORT": str(public),
                "ORCH_INTERACTION__INGEST_BACKLOG_MAX": "1000000000",
                "ORCH_INTERACTION__INGEST_MAXLEN": "2000",
                "ORCH_INTERACTION__INGEST_MAX_IN_FLIGHT": "10000",
                "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__PUBLIC_URL": PUBLIC_URL,
                "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__AUTH_TYPE": "MSS_A",
                "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__KEYS": json.dumps([KEY]),
            }
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "orchestrator", "run", "--port", str(main)],
                    env=env,
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for main, public in self.ports:
            wait_http(f"http://127.0.0.1:{main}/healthz")
            wait_http(f"http://127.0.0.1:{public}/healthz")

    def load(self, path: str, files: list[Path], duration: int, connections: int) -> dict[str, Any]:
        """Every daemon loaded at once by its own wrk (callbacks on the public port, ingest on the main);
        the sum of their rates, the worst p99."""
        port_of = (lambda p: p[1]) if path == "callbacks" else (lambda p: p[0])
        runs = [wrk(port_of(p), f, duration, connections) for p, f in zip(self.ports, files, strict=True)]
        results = [parse_wrk(r.communicate()[0]) for r in runs]
        return {
            "rps": sum(r["rps"] for r in results),
            "non_2xx": sum(r["non_2xx"] for r in results),
            "p99": [r["p99"] for r in results],
        }

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32, help="per daemon")
    parser.add_argument("--daemons", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is required: apt-get install -y wrk")
    work = Path(tempfile.mkdtemp(prefix="orch-bench-ha-"))
    single = RedisServer()
    cluster = ClusterDeployment(masters=3, replicas_each=0)
    master = RedisServer()
    replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", "0"])
    cells: dict[str, dict[str, list[dict[str, Any]]]] = {}
    base_ms = int(time.time() * 1000) - (SKEW_S // 2) * 1000
    sent = 0
    ingest_file = work / "ingest.txt"
    ingest_lines(ingest_file)
    try:
        single.start()
        cluster.start()
        master.start()
        replica._extra_args[-1] = str(master.port)
        replica.start()
        targets = {"single": single.url, "cluster": cluster.url, "replicated": master.url}
        configurations = [(t, k, 0) for k in args.daemons for t in ("single", "cluster")]
        configurations += [("replicated", 1, 0), ("replicated", 1, 1)]
        for round_no in range(args.rounds):
            for target, k, wait in configurations:
                name = f"{target}-k{k}" + (f"-wait{wait}" if target == "replicated" else "")
                asyncio.run(prepare(targets[target]))
                daemons = Daemons(targets[target], k, work, wait_replicas=wait)
                try:
                    per_run = 40_000 * args.duration
                    files = []
                    for n in range(k):
                        f = work / f"cb-{n}.txt"
                        callback_lines(f, per_run, sent, base_ms)
                        sent += per_run
                        files.append(f)
                    cb = daemons.load("callbacks", files, args.duration, args.connections)
                    ing = daemons.load("ingest", [ingest_file] * k, args.duration, args.connections)
                finally:
                    daemons.stop()
                ing["events_per_s"] = ing["rps"] * EVENTS_PER_BATCH
                cells.setdefault(name, {"callbacks": [], "ingest": []})
                cells[name]["callbacks"].append(cb)
                cells[name]["ingest"].append(ing)
                print(
                    f"round {round_no + 1} {name}: callbacks {cb['rps']:.0f}/s (non-2xx {cb['non_2xx']}), "
                    f"ingest {ing['events_per_s']:.0f} events/s (non-2xx {ing['non_2xx']})",
                    flush=True,
                )
    finally:
        for server in (single, master, replica):
            server.close()
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)

    def figure(name: str, path: str) -> dict[str, float]:
        key = "rps" if path == "callbacks" else "events_per_s"
        values = [run[key] for run in cells[name][path]]
        return {"median": statistics.median(values), "worst": min(values)}

    def ratio(a: str, b: str, path: str) -> dict[str, float]:
        key = "rps" if path == "callbacks" else "events_per_s"
        pairs = [x[key] / y[key] for x, y in zip(cells[a][path], cells[b][path], strict=True)]
        return {"median": statistics.median(pairs), "worst": min(pairs)}

    summary: dict[str, Any] = {"figures": {}, "ratios": {}}
    for name in cells:
        summary["figures"][name] = {p: figure(name, p) for p in ("callbacks", "ingest")}
    for k in args.daemons:
        summary["ratios"][f"cluster/single k={k}"] = {
            p: ratio(f"cluster-k{k}", f"single-k{k}", p) for p in ("callbacks", "ingest")
        }
        for target in ("single", "cluster"):
            summary["ratios"][f"{target} k={k}/k=1"] = {
                p: ratio(f"{target}-k{k}", f"{target}-k1", p) for p in ("callbacks", "ingest")
            }
    summary["ratios"]["wait1/wait0 (one replica)"] = {
        p: ratio("replicated-k1-wait1", "replicated-k1-wait0", p) for p in ("callbacks", "ingest")
    }
    result = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "rounds": args.rounds,
        "duration_s": args.duration,
        "connections_per_daemon": args.connections,
        "summary": summary,
        "runs": cells,
    }
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
