"""The median and the worst of several full runs of ``bench.py``: each ratio is taken within its run (same
machine state), then summarised across runs.

    python benchmarks/redis_ha/summary.py results-run1.json results-run2.json results-run3.json \
        [--out results-summary.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

PATHS = {"callbacks": "rps", "ingest": "events_per_s"}


def value(run: dict[str, Any], cell: str, path: str) -> float:
    """A cell's figure in one run (the median of its rounds)."""
    return statistics.median(r[PATHS[path]] for r in run["runs"][cell][path])


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    cells = list(runs[0]["runs"])
    figures = {
        cell: {
            path: {
                "median": statistics.median(value(r, cell, path) for r in runs),
                "worst": min(value(r, cell, path) for r in runs),
            }
            for path in PATHS
        }
        for cell in cells
    }
    pairs: dict[str, tuple[str, str]] = {}
    for cell in cells:
        target, _, rest = cell.partition("-k")
        k = rest.split("-")[0]
        if target == "cluster":
            pairs[f"cluster/single, {k} daemon(s)"] = (cell, f"single-k{k}")
        if target in ("single", "cluster") and k != "1":
            pairs[f"{target}: {k} daemons / 1"] = (cell, f"{target}-k1")
    pairs["WAIT 1 / no WAIT (one replica)"] = ("replicated-k1-wait1", "replicated-k1-wait0")
    ratios = {
        name: {
            path: {
                "median": statistics.median(value(r, a, path) / value(r, b, path) for r in runs),
                "worst": min(value(r, a, path) / value(r, b, path) for r in runs),
            }
            for path in PATHS
        }
        for name, (a, b) in pairs.items()
    }
    return {"runs": len(runs), "figures": figures, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    summary = summarise([json.loads(p.read_text()) for p in args.results])
    text = json.dumps(summary, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print("| ratio | callbacks median (worst) | ingest median (worst) |\n| --- | --- | --- |")
    for name, ratio in summary["ratios"].items():
        cb, ing = ratio["callbacks"], ratio["ingest"]
        print(
            f"| {name} | {cb['median']:.2f} ({cb['worst']:.2f}) | {ing['median']:.2f} ({ing['worst']:.2f}) |"
        )
    print(
        "\n| configuration | callbacks/s median (worst) | ingest events/s median (worst) |\n| --- | --- | --- |"
    )
    for name, figure in summary["figures"].items():
        cb, ing = figure["callbacks"], figure["ingest"]
        print(
            f"| {name} | {cb['median']:,.0f} ({cb['worst']:,.0f}) | {ing['median']:,.0f} ({ing['worst']:,.0f}) |"
        )


if __name__ == "__main__":
    main()
