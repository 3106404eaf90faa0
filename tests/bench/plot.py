#!/usr/bin/env python3
"""Draws docs/performance-memory.png from a `tests/bench/bench.py --json` file: per-task
supervision memory (every helper process per task) against the number of tasks, elide vs
raw_exec, Pss and VmRSS.

    python3 -m pip install matplotlib     # once
    python3 tests/bench/plot.py bench.json [docs/performance-memory.png]
"""
from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    src = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else "docs/performance-memory.png"
    with open(src) as f:
        data = json.load(f)
    rows = data["memory"]
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    styles = {"elide": ("tab:blue", "nomad-driver-elide (shim)"),
              "raw_exec": ("tab:red", "raw_exec (nomad executor + logmon)")}
    for driver, (color, label) in styles.items():
        pts = sorted((r["tasks"], r["pss_kb_per_task"] / 1024, r["rss_kb_per_task"] / 1024)
                     for r in rows if r["driver"] == driver)
        if not pts:
            continue
        n = [p[0] for p in pts]
        ax.plot(n, [p[1] for p in pts], "o-", color=color, label=f"{label}: Pss")
        ax.plot(n, [p[2] for p in pts], "s--", color=color, alpha=0.6,
                label=f"{label}: VmRSS")
        for x, pss, _ in pts:
            ax.annotate(f"{pss:.2f}" if pss < 10 else f"{pss:.1f}", (x, pss),
                        textcoords="offset points", xytext=(4, 6), fontsize=8, color=color)
    ax.set_yscale("log")
    ax.set_xlabel("idle tasks on the node")
    ax.set_ylabel("supervision memory per task (MiB, log scale)")
    ax.set_title("Per-task helper processes: memory per task, same agent, same run")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
