"""Run the chaos soak and write its result: ``results/<name>.json``, ``.md`` and ``.png``.

    python benchmarks/soak/run.py                      # 100 rooms, 24 simulated hours at 150x (~10 min)
    python benchmarks/soak/run.py --seed 7 --rooms 10 --hours 2 --speed 90

Exit status 0 when every invariant held, 1 otherwise. The seed is printed first: the same seed, rooms,
hours and speed replay the same schedules and fault plan.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.soak.harness import Soak, SoakConfig
from benchmarks.soak.report import plot, summary

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--speed", type=float, default=150.0)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument("--faults-per-hour", type=float, default=14.0)
    parser.add_argument(
        "--softsugar-every",
        type=int,
        default=5,
        help="every N-th room runs on SoftSugar (default 5; 0: none)",
    )
    parser.add_argument("--name", default=None, help="result file name (default: soak-<seed>)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the replicas' logs here")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(__import__("os").urandom(3), "big")
    print(f"soak seed {seed}", flush=True)
    config = SoakConfig(
        rooms=args.rooms,
        hours=args.hours,
        speed=args.speed,
        seed=seed,
        faults_per_hour=args.faults_per_hour,
        softsugar_every=args.softsugar_every,
    )
    result = run(config, args.workdir)
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name or f"soak-{seed}"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    (args.out / f"{name}.md").write_text(summary(result), encoding="utf-8")
    plot(result, args.out / f"{name}.png")
    print(summary(result))
    print(f"written: {args.out / name}.json/.md/.png")
    return 0 if result["ok"] else 1


def run(config: SoakConfig, workdir: Path | None = None) -> dict:  # type: ignore[type-arg]
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        return _timed(config, workdir)
    with tempfile.TemporaryDirectory(prefix="orch-soak-") as temp:
        return _timed(config, Path(temp))


def _timed(config: SoakConfig, workdir: Path) -> dict:  # type: ignore[type-arg]
    started = time.monotonic()
    result = asyncio.run(Soak(config, workdir).run())
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


if __name__ == "__main__":
    sys.exit(main())
