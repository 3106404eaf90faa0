#!/usr/bin/env python3
"""Benchmark: nomad-driver-elide against Nomad's own raw_exec (and exec) on the same agent in
the same run. Prints absolute figures and ratios; asserts nothing (targets are read by people,
not by timed tests).

    python3 tests/bench/bench.py [--tasks 20] [--nomad PATH]

For each driver it runs N copies of the same idle app through the same Elide stand-in and
measures:
  * per-task supervisor memory: elide-executor (ours) vs `nomad executor` (raw_exec/exec), as
    VmRSS and Pss from /proc/<pid>/smaps_rollup (logmon is the same for every driver and is
    left out);
  * time from job registration to all N tasks running;
  * for ours: shim spawn → socket ready (from the plugin's debug log), and the plugin's RSS;
  * recovery: time from an agent restart to every task reattached (persistent agent);
  * `nomad alloc exec` round trip: from starting the CLI to the command's first output byte
    (and to the CLI's exit), one running task per driver, the drivers taking turns;
  * the sandbox's cost: the plugin's defaults, fs_isolation = "none", and nothing but the
    capability drop (fs_isolation = "none", host PID and IPC namespaces), one agent each: the
    shim's Start of one task at a time (log FIFOs, cgroup, sandbox setup, exec; from the
    plugin's debug log), and the time until N tasks started at once run.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "e2e"))
import nomad as nm  # noqa: E402

APP = "import time\\nwhile True:\\n    time.sleep(1)\\n"


def job(name: str, driver: str, count: int) -> str:
    if driver == "elide":
        config = 'script = "local/app.py"'
    else:
        config = (f'command = "{nm.STANDIN}"\n        args = ["run", "--no-pretty", '
                  '"--host:allow-env", "local/app.py", "--"]')
    return f"""
job "{name}" {{
  datacenters = ["dc1"]
  group "g" {{
    count = {count}
    task "t" {{
      driver = "{driver}"
      config {{
        {config}
      }}
      template {{
        destination = "local/app.py"
        perms = "644"
        data = "{APP}"
      }}
      resources {{
        cpu    = 20
        memory = 64
      }}
    }}
  }}
}}
"""


def mem(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def supervisors(driver: str) -> list[int]:
    procs = nm.all_procs().values()
    if driver == "elide":
        return [p.pid for p in procs if "elide-executor serve" in p.cmdline]
    return [p.pid for p in procs if re.search(r"nomad executor ", p.cmdline)]


def run_driver(agent, driver: str, n: int) -> dict:
    t0 = time.monotonic()
    j = agent.run_job(job(f"bench-{driver}", driver, n))
    agent.wait_allocs(j["ID"], lambda a: len(a) >= n and all(
        (x.get("TaskStates") or {}).get("t", {}).get("State") == "running" for x in a),
        timeout=300, what=f"{n} {driver} tasks running")
    start_s = time.monotonic() - t0
    time.sleep(3)  # let the runtimes settle before sampling memory
    pids = supervisors(driver)
    m = [mem(p) for p in pids]
    res = {
        "driver": driver,
        "tasks": n,
        "start_all_s": start_s,
        "supervisors": len(pids),
        "rss_kb": statistics.mean(x[0] for x in m) if m else 0,
        "pss_kb": statistics.mean(x[1] for x in m) if m else 0,
    }
    agent.stop_job(j["ID"], purge=True)
    return res


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[max(int(len(xs) * p) - 1, 0)] if xs else 0.0


def exec_latency(agent, rounds: int) -> dict:
    """`nomad alloc exec -task t <alloc> echo hi`, `rounds` times per driver (taking turns):
    ms from starting the CLI to the first byte of output, and to the CLI's exit."""
    allocs = {}
    for d in ("elide", "raw_exec"):
        j = agent.run_job(job(f"exec-{d}", d, 1))
        allocs[d] = agent.wait_allocs(j["ID"], lambda a: a and all(
            (x.get("TaskStates") or {}).get("t", {}).get("State") == "running" for x in a)
            and a, timeout=120, what=f"the {d} task running")[0]["ID"]
    env = {**os.environ, "NOMAD_ADDR": agent.addr}
    out: dict = {d: {"first": [], "total": []} for d in allocs}
    for _ in range(rounds):
        for d, alloc in allocs.items():
            t0 = time.perf_counter()
            p = subprocess.Popen([agent.nomad_bin, "alloc", "exec", "-t=false", "-task", "t",
                                  alloc, "echo", "hi"], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                 bufsize=0)
            first = p.stdout.read(1)
            t1 = time.perf_counter()
            rest, err = p.communicate()
            t2 = time.perf_counter()
            if p.returncode != 0 or first + rest != b"hi\n":
                raise RuntimeError(f"{d}: exec failed ({p.returncode}): {first + rest!r} {err!r}")
            out[d]["first"].append((t1 - t0) * 1000)
            out[d]["total"].append((t2 - t0) * 1000)
    for d in allocs:
        agent.stop_job(f"exec-{d}", purge=True)
    return out


SANDBOX_CONFIGS = [
    ("sandbox (defaults)", {}),
    ("fs_isolation=none", {"fs_isolation": "none"}),
    ("none+host pid/ipc", {"fs_isolation": "none", "default_pid_mode": "host",
                           "default_ipc_mode": "host"}),
]


def start_latencies(agent) -> list[float]:
    """The shim's Start RPC durations (ms) in this agent's log, in order."""
    return [int(x) / 1000 for x in
            re.findall(r"runtime started: .*?runtime_start_us=(\d+)", agent.log())]


def sandbox_cost(nomad_bin: str, bins: dict, base: str, n: int, rounds: int) -> list[dict]:
    """The sandbox's start cost: one dev agent per configuration, all up at once. First
    `rounds` single tasks started one at a time, the configurations taking turns (so each sees
    the same background load): the Start latency of one task. Then N tasks at once per
    configuration: the time until all run."""
    agents = []
    try:
        for i, (label, cfg) in enumerate(SANDBOX_CONFIGS):
            agent = nm.NomadAgent(nomad_bin, os.path.join(base, f"sandbox{i}"),
                                  plugin_bin=bins["plugin"], executor_bin=bins["executor"],
                                  name=f"sandbox{i}")
            agent.plugin_config = {**agent.default_plugin_config(), **cfg}
            agent.start()
            agent.wait_driver_healthy()
            agents.append((label, agent))
        for r in range(rounds):
            for label, agent in agents:
                j = agent.run_job(job(f"one{r}", "elide", 1))
                agent.wait_allocs(j["ID"], lambda a: a and all(
                    (x.get("TaskStates") or {}).get("t", {}).get("State") == "running" for x in a),
                    timeout=120, what=f"{label}: one task running")
                agent.stop_job(j["ID"], purge=True)
        single = {label: start_latencies(agent) for label, agent in agents}
        out = []
        for label, agent in agents:
            r = run_driver(agent, "elide", n)
            one = single[label]
            out.append({"label": label,
                        "start_ms": statistics.median(one) if one else 0.0,
                        "start_p90_ms": percentile(one, 0.9),
                        "starts": len(one),
                        "start_all_s": r["start_all_s"]})
        return out
    finally:
        for _, agent in agents:
            agent.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--nomad", default=None)
    ap.add_argument("--exec", action="store_true", help="also measure the exec driver (chroot: slow)")
    ap.add_argument("--recovery", type=int, nargs="*", default=[10, 50])
    ap.add_argument("--no-sandbox-cost", action="store_true",
                    help="skip the sandbox on/off start-latency comparison")
    ap.add_argument("--sandbox-rounds", type=int, default=15,
                    help="single-task starts per sandbox configuration")
    ap.add_argument("--exec-rounds", type=int, default=20,
                    help="`nomad alloc exec` round trips per driver (0: skip)")
    a = ap.parse_args()
    nomad_bin = a.nomad or nm.find_nomad()
    bins = nm.build_workspace()
    base = tempfile.mkdtemp(prefix="nde-bench-")
    agent = nm.NomadAgent(nomad_bin, os.path.join(base, "dev"), plugin_bin=bins["plugin"],
                          executor_bin=bins["executor"], name="bench",
                          extra_hcl='plugin "raw_exec" {\n  config {\n    enabled = true\n  }\n}')
    agent.plugin_config = agent.default_plugin_config()
    results = []
    try:
        agent.start()
        agent.wait_driver_healthy()
        drivers = ["elide", "raw_exec"] + (["exec"] if a.exec else [])
        for d in drivers:
            results.append(run_driver(agent, d, a.tasks))
        execs = exec_latency(agent, a.exec_rounds) if a.exec_rounds else {}
        log = agent.log()
        ready = [int(x) / 1000 for x in re.findall(r"shim ready: .*?shim_ready_us=(\d+)", log)]
        plugin = [p.pid for p in agent.find_processes("plugins/nomad-driver-elide") if p.state != "Z"]
        plugin_rss = mem(plugin[0])[0] if plugin else 0
    finally:
        agent.stop()
    sandbox = [] if a.no_sandbox_cost else sandbox_cost(nomad_bin, bins, base, a.tasks,
                                                         a.sandbox_rounds)
    rec = []
    for n in a.recovery:
        p = nm.NomadAgent(nomad_bin, os.path.join(base, f"rec{n}"), plugin_bin=bins["plugin"],
                          executor_bin=bins["executor"], name=f"rec{n}", mode="persistent")
        p.plugin_config = p.default_plugin_config()
        try:
            p.start()
            p.wait_driver_healthy()
            j = p.run_job(job(f"rec{n}", "elide", n))
            p.wait_allocs(j["ID"], lambda al: len(al) >= n and all(
                (x.get("TaskStates") or {}).get("t", {}).get("State") == "running" for x in al),
                timeout=600, what=f"{n} tasks running")
            p.stop()
            before = p.log().count("reattached to running shim")
            t0 = time.monotonic()
            p.start()
            deadline = time.monotonic() + 300
            while p.log().count("reattached to running shim") < before + n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {p.log().count('reattached to running shim') - before} of {n} recovered")
                time.sleep(0.05)
            rec.append((n, time.monotonic() - t0))
            p.stop_all_jobs()
        finally:
            p.stop()

    print()
    print(f"==== nomad-driver-elide benchmark ({a.tasks} idle tasks per driver, same agent, same run)")
    print(f"{'driver':10} {'start all (s)':>14} {'supervisor RSS (KiB)':>22} {'PSS (KiB)':>10} {'count':>6}")
    for r in results:
        print(f"{r['driver']:10} {r['start_all_s']:14.2f} {r['rss_kb']:22.0f} {r['pss_kb']:10.0f} {r['supervisors']:6d}")
    ours = results[0]
    for r in results[1:]:
        if r["rss_kb"] and ours["rss_kb"]:
            print(f"ratio elide/{r['driver']}: supervisor RSS {ours['rss_kb'] / r['rss_kb']:.2f}x, "
                  f"PSS {ours['pss_kb'] / max(r['pss_kb'], 1):.2f}x, start-all time "
                  f"{ours['start_all_s'] / r['start_all_s']:.2f}x")
    if ready:
        ready.sort()
        print(f"shim spawn -> socket ready: median {statistics.median(ready):.1f} ms, "
              f"max {max(ready):.1f} ms over {len(ready)} starts")
    print(f"plugin RSS: {plugin_rss} KiB")
    if execs:
        print()
        print(f"==== `nomad alloc exec` round trip ({a.exec_rounds} each, same agent, drivers "
              "taking turns): CLI start -> first output byte, and -> CLI exit")
        print(f"{'driver':10} {'first byte median (ms)':>23} {'p90':>7} {'exit median (ms)':>17} {'p90':>7}")
        for d, x in execs.items():
            print(f"{d:10} {statistics.median(x['first']):23.1f} {percentile(x['first'], 0.9):7.1f} "
                  f"{statistics.median(x['total']):17.1f} {percentile(x['total'], 0.9):7.1f}")
        e, r = execs["elide"], execs["raw_exec"]
        print(f"ratio elide/raw_exec: first byte {statistics.median(e['first']) / statistics.median(r['first']):.2f}x, "
              f"exit {statistics.median(e['total']) / statistics.median(r['total']):.2f}x")
    for n, s in rec:
        print(f"recovery after an agent restart: {n} tasks reattached in {s:.2f}s")
    if sandbox:
        print()
        print(f"==== the sandbox's start cost (one agent per configuration, same run): the shim's "
              f"Start of one task ({a.sandbox_rounds} each, taking turns), and {a.tasks} tasks at once")
        print(f"{'configuration':20} {'Start median (ms)':>18} {'p90 (ms)':>9} {f'{a.tasks} running (s)':>14}")
        for r in sandbox:
            print(f"{r['label']:20} {r['start_ms']:18.1f} {r['start_p90_ms']:9.1f} "
                  f"{r['start_all_s']:14.2f}")
        on, off = sandbox[0], sandbox[1]
        if off["start_ms"]:
            print(f"ratio sandbox/fs_isolation=none: Start {on['start_ms'] / off['start_ms']:.2f}x, "
                  f"start-all time {on['start_all_s'] / off['start_all_s']:.2f}x")
        bare = sandbox[2]
        if bare["start_ms"]:
            print(f"ratio sandbox/(none + host pid/ipc): Start {on['start_ms'] / bare['start_ms']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
