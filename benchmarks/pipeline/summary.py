"""Median and worst of several full runs of ``bench.py``, and the latency curve as a plot.

    python benchmarks/pipeline/summary.py results-run1.json results-run2.json results-run3.json \\
        [--out results-summary.json] [--plot latency-curve.png]

"Worst" is the run least favourable to the daemon for each figure (lowest ratio, highest latency or CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _spread(values: list[float], *, high_is_bad: bool) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 4),
        "worst": round(max(values) if high_is_bad else min(values), 4),
        "runs": [round(v, 4) for v in values],
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    throughput = [r["throughput"] for r in runs]
    summary: dict[str, Any] = {
        "runs": len(runs),
        "machine": runs[0]["machine"],
        "ratio_daemon_to_reference": _spread(
            [t["ratio_daemon_to_reference"] for t in throughput], high_is_bad=False
        ),
        "ratio_daemon_to_bare": _spread([t["ratio_daemon_to_bare"] for t in throughput], high_is_bad=False),
        "ratio_reference_to_bare": _spread(
            [t["ratio_reference_to_bare"] for t in throughput], high_is_bad=False
        ),
        "events_per_s": {
            name: _spread([t["events_per_s_median"][name] for t in throughput], high_is_bad=False)
            for name in ("bare", "reference", "daemon")
        },
        "cpu_us_per_event": {
            pipeline: {
                proc: _spread([r["cpu_us_per_event"][pipeline][proc] for r in runs], high_is_bad=True)
                for proc in runs[0]["cpu_us_per_event"][pipeline]
            }
            for pipeline in runs[0]["cpu_us_per_event"]
        },
        "curve": [],
    }
    for index, point in enumerate(runs[0]["latency"]["curve"]):
        points = [r["latency"]["curve"][index] for r in runs]

        def p99(path: str, pts: list[dict[str, Any]] = points) -> list[float]:
            return [p[path]["p99_at_most_s"] or float("inf") for p in pts]

        summary["curve"].append(
            {
                "share_of_capacity": point["share_of_capacity"],
                "ingest_to_report_p99_at_most_s": _spread(p99("ingest_to_report"), high_is_bad=True),
                "ingest_to_report_within_300ms": _spread(
                    [p["ingest_to_report"]["share_within_0.3_s"] for p in points], high_is_bad=False
                ),
                "decision_p99_at_most_s": _spread(p99("decision"), high_is_bad=True),
                "decision_within_5ms": _spread(
                    [p["decision"]["share_within_0.005_s"] for p in points], high_is_bad=False
                ),
                "daemon_cpu_share_of_a_core": _spread(
                    [p["daemon_cpu_share_of_a_core"] for p in points], high_is_bad=True
                ),
            }
        )
    return summary


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = [100 * p["share_of_capacity"] for p in summary["curve"]]
    fig, (report, decide) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, target, title in (
        (report, "ingest_to_report_p99_at_most_s", 0.3, "ingest → vendor accepted, p99 (bucket edge)"),
        (decide, "decision_p99_at_most_s", 0.005, "reply decision, p99 (bucket edge)"),
    ):
        medians = [1000 * p[key]["median"] for p in summary["curve"]]
        worst = [1000 * p[key]["worst"] for p in summary["curve"]]
        axis.plot(shares, medians, "o-", label=f"median of {summary['runs']} runs")
        axis.plot(shares, worst, "x--", label="worst run")
        axis.axhline(1000 * target, color="red", linewidth=0.8, label="target at 50 %")
        axis.set_xlabel("offered load, % of the daemon's sustained rate (same run)")
        axis.set_ylabel("ms")
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=HERE / "results-summary.json")
    parser.add_argument("--plot", type=Path, default=HERE / "latency-curve.png")
    args = parser.parse_args()
    summary = summarise([json.loads(p.read_text()) for p in args.runs])
    summary["files"] = [p.name for p in args.runs]
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, args.plot)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
