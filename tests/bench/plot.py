#!/usr/bin/env python3
"""Draws docs/performance-memory.png: per-task supervision memory against the number of idle
tasks on one node, for Elide (shim + sandbox PID 1, the plugin's share, their sum), Nomad's
raw_exec and exec (nomad executor + logmon), from the benchmarks' JSON files.

    python3 -m pip install matplotlib     # once
    python3 tests/bench/plot.py [-o docs/performance-memory.png] FILE.json...

Each file may hold any of:
  "memory"  rows of `tests/bench/bench.py --json`: driver, tasks, pss_kb_per_task,
            rss_kb_per_task (all helpers per task; "sandbox": false marks an Elide row
            measured before the sandbox, i.e. the shim alone: not drawn)
  "elide"   runs of `tests/bench/scale.py --json`: tasks, helper_pss_kb_per_task (shim +
            PID 1), plugin_rss_kb (the plugin's VmRSS with the tasks: its share is that / N)
  "peers"   the side-by-side runs of `scale.py --exec-tasks N`: driver, tasks,
            helper_pss_kb_per_task, helper_rss_kb_per_task (and plugin_rss_kb for elide)
docs/performance-memory.json holds the figures of docs/performance.md that were measured before
the benches kept their JSON, each with its source.
"""
from __future__ import annotations

import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(paths: list[str]) -> dict[str, dict[int, float]]:
    """Series name -> {tasks: MiB per task}. A later file's point replaces an earlier one."""
    s: dict[str, dict[int, float]] = {k: {} for k in (
        "elide_helpers", "elide_plugin", "raw_exec_pss", "raw_exec_rss", "exec_pss", "exec_rss")}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for r in data.get("memory", []):
            if r["driver"] == "elide":
                if r.get("sandbox", True):
                    s["elide_helpers"][r["tasks"]] = r["pss_kb_per_task"] / 1024
            elif r["driver"] in ("raw_exec", "exec"):
                s[r["driver"] + "_pss"][r["tasks"]] = r["pss_kb_per_task"] / 1024
                s[r["driver"] + "_rss"][r["tasks"]] = r["rss_kb_per_task"] / 1024
        for r in data.get("elide", []) + [p for p in data.get("peers", [])
                                         if p["driver"] == "elide"]:
            n = r["tasks"]
            s["elide_helpers"][n] = r["helper_pss_kb_per_task"] / 1024
            if r.get("plugin_rss_kb"):
                s["elide_plugin"][n] = r["plugin_rss_kb"] / 1024 / n
        for r in data.get("peers", []):
            if r["driver"] in ("raw_exec", "exec"):
                s[r["driver"] + "_pss"][r["tasks"]] = r["helper_pss_kb_per_task"] / 1024
                s[r["driver"] + "_rss"][r["tasks"]] = r["helper_rss_kb_per_task"] / 1024
    return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("-o", "--out", default="docs/performance-memory.png")
    a = ap.parse_args()
    s = load(a.files)
    total = {n: s["elide_helpers"][n] + s["elide_plugin"][n]
             for n in s["elide_helpers"] if n in s["elide_plugin"]}
    fig, ax = plt.subplots(figsize=(8.4, 5.2), dpi=110)
    series = [
        ("raw_exec_rss", "s--", "tab:red", 0.5, "raw_exec (nomad executor + logmon): VmRSS"),
        ("raw_exec_pss", "o-", "tab:red", 1.0, "raw_exec (nomad executor + logmon): Pss"),
        ("exec_rss", "s--", "tab:orange", 0.5, "exec (nomad executor + logmon): VmRSS"),
        ("exec_pss", "D-", "tab:orange", 1.0, "exec (nomad executor + logmon): Pss"),
        ("elide_total", "o-", "tab:blue", 1.0, "Elide: shim + PID 1 + plugin share"),
        ("elide_helpers", "^-", "tab:cyan", 1.0, "Elide: shim + sandbox PID 1 (Pss)"),
        ("elide_plugin", "v:", "tab:purple", 1.0, "Elide: plugin VmRSS ÷ tasks"),
    ]
    s["elide_total"] = total
    for key, fmt, color, alpha, label in series:
        pts = sorted(s[key].items())
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], fmt, color=color, alpha=alpha,
                label=label)
        if alpha < 1:
            continue
        for x, y in pts:
            txt = f"{y * 1024:.0f} KiB" if y < 1 else f"{y:.1f}"
            below = key == "elide_helpers"  # just under the sum: label it underneath
            ax.annotate(txt, (x, y), textcoords="offset points", xytext=(4, -11 if below else 5),
                        fontsize=7, color=color)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([10, 20, 40, 100, 200, 500, 1000, 2000])
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("idle tasks on the node (log scale)")
    ax.set_ylabel("supervision memory per task (MiB, log scale)")
    ax.set_title("What each idle task costs the node besides its payload")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
