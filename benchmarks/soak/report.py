"""A soak result as people read it: a summary in Markdown (verdicts, a table per fault kind) and a timeline
plot of rooms live against rooms that should be live (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def summary(result: dict[str, Any]) -> str:
    config = result["config"]
    lines = [
        f"# Soak: {config['rooms']} rooms, {config['hours']:g} simulated hours at {config['speed']:g}x, "
        f"{config['replicas']} replicas -- {'PASS' if result['ok'] else 'FAIL'}",
        "",
        f"Seed **{result['seed']}** (replay: `python benchmarks/soak/run.py --seed {result['seed']} "
        f"--rooms {config['rooms']} --hours {config['hours']:g} --speed {config['speed']:g}`). "
        f"Simulated start {config['start']}; one replica's clock skewed by {config['skew_s']:+g} s. "
        f"Wall time {result.get('wall_s', 0):.0f} s.",
        "",
        f"Live availability outside recovery budgets: **{result['availability']:.5%}** "
        f"({result['down_room_s']:.0f} room-seconds down of {result['required_room_s']:,} required; "
        f"{result['jobs']} jobs started).",
        "",
        "| invariant | value | target | ok |",
        "| --- | --- | --- | --- |",
    ]
    for verdict in result["verdicts"]:
        value = verdict["value"]
        shown = value if not isinstance(value, dict) else "see JSON"
        lines.append(
            f"| {verdict['name']} | {shown} | {verdict['target']} | {'yes' if verdict['ok'] else '**no**'} |"
        )
    lines += [
        "",
        "| fault kind | injected | budget (s) | recovery p50 (s) | p99 (s) | max (s) | over budget |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, row in result["recovery"].items():
        lines.append(
            f"| {kind} | {row['count']} | {result['budgets_s'].get(kind, 0):.0f}+ | {row['p50_s']} | "
            f"{row['p99_s']} | {row['max_s']} | {row['over_budget']} |"
        )
    skipped = result["faults"]["skipped (no running job)"]
    if skipped:
        lines += ["", "Not injected: " + ", ".join(f"{k} ×{v}" for k, v in skipped.items()) + "."]
    failing = [v for v in result["verdicts"] if not v["ok"]]
    for verdict in failing:
        lines += ["", f"**{verdict['name']}**:", *(f"- {d}" for d in verdict["detail"])]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [p[0] for p in result["timeline"]]
    wanted = [p[1] for p in result["timeline"]]
    live = [p[2] for p in result["timeline"]]
    fig, ax = plt.subplots(figsize=(11, 4), dpi=110)
    ax.fill_between(hours, wanted, step="post", alpha=0.25, label="should be live")
    ax.step(hours, live, where="post", linewidth=1.0, label="live (sandbox)")
    span = result["config"]["hours"]
    start = result["config"]["start"]
    faults = [f["at"] / 3600 for f in result.get("fault_list", [])]
    ax.plot(faults, [-0.5] * len(faults), "|", markersize=8)
    ax.set_xlim(0, span)
    ax.set_ylim(-1, max(wanted + [1]) * 1.1)
    ax.set_xlabel(f"simulated hours from {start}")
    ax.set_ylabel("rooms")
    ax.set_title(
        f"{result['config']['rooms']} rooms, 3 replicas, seed {result['seed']}: "
        f"availability {result['availability']:.4%} (ticks: injected faults)"
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
