#!/usr/bin/env python3
"""Benchmark: nomad-driver-elide against Nomad's own raw_exec on the same agent in the same run.
Prints absolute figures and ratios (elide / raw_exec); asserts nothing (targets are read by
people, not by timed tests). Figures and the plot live in docs/performance.md.

    python3 tests/bench/bench.py [--counts 40 200] [--json out.json] [--skip burst,follow,...]
        [--tasks 20]

Both drivers run the same idle app through the same Elide stand-in, on one persistent agent:

  memory    per-task supervision memory for N tasks (every helper process Nomad or we start per
            task: for raw_exec `nomad executor` + `nomad logmon`; for elide the shim, plus a
            logmon if one exists), VmRSS and Pss from /proc/<pid>/smaps_rollup, summed and
            divided by N; time from job registration to all N running
  stop      `job stop` (DELETE /v1/job) to every task dead on the client (Killed events), every
            task process gone, every allocation terminal in the API: once per memory run, and
            --stop-rounds times at --stop-count tasks (medians)
  burst     a 200,000-line (15 MB) burst: job registration to all of it in the log files,
            the task's Started -> Terminated, every line present in order in `nomad alloc logs`
  follow    `nomad alloc logs -f` lag: a task prints a timestamped line every 100 ms; the lag
            is the time from print to the line arriving at the follower
  density   (elide, the largest N) plugin + shims CPU over 60 s idle, then an agent restart
            and the time until every task is reattached
  recovery  agent restart -> all tasks reattached, for --recovery sizes (persistent agents)
  exec      `nomad alloc exec` round trip: from starting the CLI to the command's first output
            byte (and to the CLI's exit), one running task per driver, the drivers taking turns
  sandbox   the sandbox's cost: the plugin's defaults, fs_isolation = "none", and nothing but
            the capability drop (fs_isolation = "none", host PID and IPC namespaces), one agent
            each: the shim's Start of one task at a time (log pipes, cgroup, sandbox setup,
            exec; from the plugin's debug log), and the time until N tasks started at once run

--plot-counts adds more N for the memory curve (tests/bench/plot.py draws it from --json).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "e2e"))
import nomad as nm  # noqa: E402

IDLE_APP = "import time\\nwhile True:\\n    time.sleep(1)\\n"
BURST_APP = ("import sys\\npad = 'x' * 62\\nfor s in range(0, 200000, 1000):\\n"
             "    sys.stdout.write(''.join(f'line {i:06d} {pad}\\\\n' for i in range(s, s + 1000)))\\n"
             "sys.stdout.flush()\\n")
FOLLOW_APP = ("import time\\nfor i in range(100000):\\n"
              "    print(f'tick {i} {time.time():.6f}', flush=True)\\n    time.sleep(0.1)\\n")
RAW_EXEC_HCL = 'plugin "raw_exec" {\n  config {\n    enabled = true\n  }\n}'


def job(name: str, driver: str, count: int, app: str, jtype: str = "service") -> str:
    if driver == "elide":
        config = 'script = "local/app.py"'
    else:
        config = (f'command = "{nm.STANDIN}"\n        args = ["run", "--no-pretty", '
                  '"--host:allow-env", "local/app.py", "--"]')
    restart = ('restart {\n      attempts = 0\n      mode = "fail"\n    }' if jtype == "batch"
               else "")
    return f"""
job "{name}" {{
  datacenters = ["dc1"]
  type = "{jtype}"
  group "g" {{
    count = {count}
    {restart}
    # 200 tasks x the default 300 MB would not fit the node's disk.
    ephemeral_disk {{
      size = 50
    }}
    task "t" {{
      logs {{
        max_files     = 2
        max_file_size = 10
      }}
      driver = "{driver}"
      config {{
        {config}
      }}
      template {{
        destination = "local/app.py"
        perms = "644"
        data = "{app}"
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
    """(VmRSS, Pss) in KiB."""
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


def cpu_ns(pid: int) -> int:
    """CPU time of all threads of `pid`, ns (schedstat: exact, where utime/stime count whole
    clock ticks and round a shim's few microseconds a second away)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except OSError:
        pass
    return total


def helpers(agent) -> dict[str, list[int]]:
    """This agent's per-task helper processes by kind."""
    out: dict[str, list[int]] = {"shim": [], "init": [], "executor": [], "logmon": []}
    for p in agent.processes():
        if "elide-executor serve" in p.cmdline:
            out["shim"].append(p.pid)
        elif p.cmdline.startswith("elide-executor sandbox-init"):
            # The sandbox's PID 1 (one per task with pid_mode = "private", the default).
            out["init"].append(p.pid)
        elif re.search(r"(^|/)nomad executor ", p.cmdline):
            out["executor"].append(p.pid)
        elif re.search(r"(^|/)nomad logmon", p.cmdline):
            out["logmon"].append(p.pid)
    return out


def running(agent, job_id: str, n: int, timeout: float = 900) -> None:
    agent.wait_allocs(job_id, lambda a: len(a) >= n and all(
        (x.get("TaskStates") or {}).get("t", {}).get("State") == "running" for x in a),
        timeout=timeout, what=f"{n} tasks of {job_id} running")


def task_pids(agent, driver: str) -> list[nm.Proc]:
    """The task processes of this agent: the stand-in (a Python app runs in its process)."""
    return [p for p in agent.processes()
            if nm.STANDIN in p.cmdline or "local/app.py" in p.cmdline]


def stop_latency(agent, job_id: str, driver: str) -> tuple[float, float, float, dict]:
    """Seconds from `job stop` to: every task dead on the client (its last `Killed` task
    event), every task process gone (pidfds), every allocation terminal in the API (which
    adds the client's 200 ms batching of allocation updates, so it varies more)."""
    procs = task_pids(agent, driver)
    done: dict = {}

    def watch():
        done["left"] = nm.wait_gone(procs, 120)
        done["t"] = time.monotonic()

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    time.sleep(0.2)  # the watcher has its pidfds
    t0, w0 = time.monotonic(), time.time()
    agent.stop_job(job_id, wait=False)
    agent.wait_allocs(job_id, lambda a: all(x["ClientStatus"] in nm.TERMINAL_CLIENT for x in a),
                      timeout=600, what=f"{job_id} stopped")
    t_api = time.monotonic() - t0
    th.join(130)
    t_gone = done.get("t", time.monotonic()) - t0
    if done.get("left"):
        print(f"  warning: {len(done['left'])} task processes of {job_id} still alive after stop")
    killed, killing, per_task = [], [], []
    for a in agent.allocs(job_id):
        ev = {}
        for e in agent.task_events(a["ID"], "t"):
            ev.setdefault(e["Type"], e["Time"] / 1e9 - w0)
        if "Killed" in ev:
            killed.append(ev["Killed"])
        if "Killing" in ev:
            killing.append(ev["Killing"])
            if "Killed" in ev:
                per_task.append(ev["Killed"] - ev["Killing"])
    t_dead = max(killed) if killed else t_api
    agent.api.delete(f"/v1/job/{job_id}", purge="true")
    return t_dead, t_gone, t_api, per_task_figures(killing, per_task)


def per_task_figures(killing: list[float], per_task: list[float]) -> dict:
    """How the stops of one `job stop` spread: when Nomad asked each task to stop (its
    `Killing` event, s after the stop), and each task's own stop (`Killing` -> `Killed`, the
    driver's StopTask and the task's exit): median, p90 and max, in ms."""
    out = {}
    for name, xs in (("killing_at", killing), ("task_stop", per_task)):
        if xs:
            out[name + "_ms"] = {"median": 1000 * statistics.median(xs),
                                 "p90": 1000 * percentile(xs, 0.9), "max": 1000 * max(xs)}
    return out


def run_memory(agent, driver: str, n: int, density: bool) -> dict:
    t0 = time.monotonic()
    j = agent.run_job(job(f"mem-{driver}-{n}", driver, n, IDLE_APP))
    running(agent, j["ID"], n)
    start_s = time.monotonic() - t0
    time.sleep(5)  # let the runtimes and helpers settle before sampling
    h = helpers(agent)
    pids = h["shim"] + h["init"] + h["executor"] + h["logmon"]
    m = [mem(p) for p in pids]
    res = {
        "driver": driver, "tasks": n, "start_all_s": start_s,
        "helpers": {k: len(v) for k, v in h.items()},
        "rss_kb_per_task": sum(x[0] for x in m) / n,
        "pss_kb_per_task": sum(x[1] for x in m) / n,
    }
    if density:
        res.update(density_run(agent, j["ID"], n, h["shim"]))
    res["stop_s"], res["stop_gone_s"], res["stop_api_s"], res["stop_per_task"] = \
        stop_latency(agent, j["ID"], driver)
    return res


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[max(int(len(xs) * p) - 1, 0)] if xs else 0.0


def exec_latency(agent, rounds: int) -> dict:
    """`nomad alloc exec -task t <alloc> echo hi`, `rounds` times per driver (taking turns):
    ms from starting the CLI to the first byte of output, and to the CLI's exit."""
    allocs = {}
    for d in ("elide", "raw_exec"):
        j = agent.run_job(job(f"exec-{d}", d, 1, IDLE_APP))
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
                j = agent.run_job(job(f"one{r}", "elide", 1, IDLE_APP))
                agent.wait_allocs(j["ID"], lambda a: a and all(
                    (x.get("TaskStates") or {}).get("t", {}).get("State") == "running" for x in a),
                    timeout=120, what=f"{label}: one task running")
                agent.stop_job(j["ID"], purge=True)
        single = {label: start_latencies(agent) for label, agent in agents}
        out = []
        for label, agent in agents:
            t0 = time.monotonic()
            j = agent.run_job(job(f"sandbox-all{n}", "elide", n, IDLE_APP))
            running(agent, j["ID"], n)
            start_all_s = time.monotonic() - t0
            agent.stop_job(j["ID"], purge=True)
            one = single[label]
            out.append({"label": label,
                        "start_ms": statistics.median(one) if one else 0.0,
                        "start_p90_ms": percentile(one, 0.9),
                        "starts": len(one),
                        "start_all_s": start_all_s})
        return out
    finally:
        for _, agent in agents:
            agent.stop()
            drop_empty_runtime_dir(agent)


def run_stop_rounds(agent, n: int, rounds: int) -> list[dict]:
    """Stop latency of N idle tasks, `rounds` times per driver, the order alternating (a
    single stop varies by a few hundred ms with Nomad's alloc update batching)."""
    got: dict[str, list[tuple]] = {"elide": [], "raw_exec": []}
    for r in range(rounds):
        for d in (("elide", "raw_exec") if r % 2 == 0 else ("raw_exec", "elide")):
            j = agent.run_job(job(f"stop-{d}-{n}-{r}", d, n, IDLE_APP))
            running(agent, j["ID"], n)
            time.sleep(3)
            got[d].append(stop_latency(agent, j["ID"], d))
    return [{"driver": d, "tasks": n, "rounds": rounds,
             "stop_s": statistics.median(x[0] for x in v),
             "stop_gone_s": statistics.median(x[1] for x in v),
             "stop_api_s": statistics.median(x[2] for x in v),
             "all_s": [round(x[0], 3) for x in v],
             "per_task": [x[3] for x in v]} for d, v in got.items()]


def plugin_pid(agent) -> int:
    ps = [p.pid for p in agent.find_processes("plugins/nomad-driver-elide")
          if p.state not in ("Z", "X")]
    return ps[0] if ps else 0


def density_run(agent, job_id: str, n: int, shims: list[int]) -> dict:
    """Idle CPU of plugin + shims over 60 s, then an agent restart: all reattached?"""
    plugin = plugin_pid(agent)
    before = {p: cpu_ns(p) for p in shims + [plugin]}
    t0 = time.monotonic()
    time.sleep(60)
    wall = time.monotonic() - t0
    spent = {p: (cpu_ns(p) - ns) / 1e9 for p, ns in before.items()}
    used = sum(spent.values())
    all_running = sum(1 for a in agent.allocs(job_id)
                      if (a.get("TaskStates") or {}).get("t", {}).get("State") == "running")
    before_log = agent.log().count("reattached to running shim")
    agent.stop()
    t1 = time.monotonic()
    agent.start()
    deadline = time.monotonic() + 600
    while agent.log().count("reattached to running shim") < before_log + n:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    recovered = agent.log().count("reattached to running shim") - before_log
    recover_s = time.monotonic() - t1
    agent.wait_driver_healthy()
    running(agent, job_id, n)
    return {"density_running": all_running, "idle_cpu_percent": 100 * used / wall,
            "idle_cpu_percent_plugin": 100 * spent[plugin] / wall,
            "idle_cpu_percent_shims": 100 * (used - spent[plugin]) / wall,
            "restart_recovered": recovered, "restart_recover_s": recover_s,
            "plugin_rss_kb": mem(plugin_pid(agent))[0]}


def run_burst(agent, driver: str, rounds: int = 3) -> dict:
    """The 15 MB burst, `rounds` times: registration -> all of it in the log files on disk
    (polled every 10 ms), the task's own Started -> Terminated (client timestamps), and every
    line present and in order in `nomad alloc logs`."""
    pad = "x" * 62
    want = "".join(f"line {i:06d} {pad}\n" for i in range(200_000))
    files_s, run_s, ok = [], [], True
    for i in range(rounds):
        t0 = time.monotonic()
        j = agent.run_job(job(f"burst-{driver}-{i}", driver, 1, BURST_APP, jtype="batch"))
        alloc = agent.first_alloc(j["ID"])
        logs = os.path.join(agent.data_dir, "alloc", alloc["ID"], "alloc", "logs")
        deadline = time.monotonic() + 600
        while True:
            try:
                size = sum(os.path.getsize(os.path.join(logs, f)) for f in os.listdir(logs)
                           if re.fullmatch(r"t\.stdout\.\d+", f))
            except OSError:
                size = 0
            if size >= len(want):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{driver}: only {size} bytes reached the log files")
            time.sleep(0.01)
        files_s.append(time.monotonic() - t0)
        agent.wait_task(alloc["ID"], "t", "dead", timeout=600)
        ev = {e["Type"]: e["Time"] for e in agent.task_events(alloc["ID"], "t")}
        run_s.append((ev["Terminated"] - ev["Started"]) / 1e9)
        ok = ok and agent.logs(alloc["ID"], "t") == want
        agent.stop_job(j["ID"], purge=True)
    return {"driver": driver, "rounds": rounds, "bytes": len(want), "complete_in_order": ok,
            "to_files_s": statistics.median(files_s),
            "started_to_terminated_s": statistics.median(run_s)}


def run_follow(agent, driver: str, lines: int = 100) -> dict:
    j = agent.run_job(job(f"follow-{driver}", driver, 1, FOLLOW_APP))
    alloc = agent.first_alloc(j["ID"])
    agent.wait_logs(alloc["ID"], "t", "tick 3")
    env = {**os.environ, "NOMAD_ADDR": agent.addr}
    f = subprocess.Popen([agent.nomad_bin, "alloc", "logs", "-f", "-tail", "-n", "1",
                          alloc["ID"], "t"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, bufsize=1)
    lags: list[float] = []

    def read():
        for line in f.stdout:
            now = time.time()
            m = re.match(r"tick \d+ (\d+\.\d+)", line)
            if m:
                lags.append(now - float(m.group(1)))
                if len(lags) >= lines + 1:
                    return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(lines * 0.1 + 60)
    f.kill()
    f.wait()
    agent.stop_job(j["ID"], purge=True)
    lags = sorted(lags[1:])  # the first line is the -tail backlog
    if not lags:
        return {"driver": driver, "lines": 0}
    return {"driver": driver, "lines": len(lags),
            "lag_median_ms": 1000 * statistics.median(lags),
            "lag_p95_ms": 1000 * lags[int(0.95 * (len(lags) - 1))],
            "lag_max_ms": 1000 * lags[-1]}


def run_recovery(nomad_bin: str, bins: dict, base: str, n: int) -> float:
    p = nm.NomadAgent(nomad_bin, os.path.join(base, f"rec{n}"), plugin_bin=bins["plugin"],
                      executor_bin=bins["executor"], name=f"rec{n}", mode="persistent")
    p.plugin_config = p.default_plugin_config()
    try:
        p.start()
        p.wait_driver_healthy()
        j = p.run_job(job(f"rec{n}", "elide", n, IDLE_APP))
        running(p, j["ID"], n)
        p.stop()
        before = p.log().count("reattached to running shim")
        t0 = time.monotonic()
        p.start()
        deadline = time.monotonic() + 300
        while p.log().count("reattached to running shim") < before + n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {p.log().count('reattached to running shim') - before}"
                                   f" of {n} recovered")
            time.sleep(0.05)
        took = time.monotonic() - t0
        p.stop_all_jobs()
        return took
    finally:
        p.stop()
        drop_empty_runtime_dir(p)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}x" if b else "n/a"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[40, 200])
    ap.add_argument("--plot-counts", type=int, nargs="*", default=[],
                    help="extra N for the memory curve (elide and raw_exec)")
    ap.add_argument("--nomad", default=None)
    ap.add_argument("--json", default=None, help="write every figure to this file")
    ap.add_argument("--recovery", type=int, nargs="*", default=[50])
    ap.add_argument("--stop-count", type=int, default=40, help="N for the stop rounds")
    ap.add_argument("--stop-rounds", type=int, default=5)
    ap.add_argument("--skip", default="",
                    help="comma list of: memory,stop,burst,follow,density,exec,sandbox")
    ap.add_argument("--tasks", type=int, default=20, help="N for the sandbox cost")
    ap.add_argument("--sandbox-rounds", type=int, default=15,
                    help="single-task starts per sandbox configuration")
    ap.add_argument("--exec-rounds", type=int, default=20,
                    help="`nomad alloc exec` round trips per driver")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    nomad_bin = a.nomad or nm.find_nomad()
    bins = nm.build_workspace()
    base = tempfile.mkdtemp(prefix="nde-bench-")
    agent = nm.NomadAgent(nomad_bin, os.path.join(base, "bench"), plugin_bin=bins["plugin"],
                          executor_bin=bins["executor"], name="bench", mode="persistent",
                          extra_hcl=RAW_EXEC_HCL)
    agent.plugin_config = agent.default_plugin_config()
    out: dict = {"memory": [], "stop": [], "burst": [], "follow": [], "recovery": []}
    counts = sorted(set(a.counts) | set(a.plot_counts))
    try:
        agent.start()
        agent.wait_driver_healthy()
        if "memory" not in skip:
            for n in counts:
                for d in ("elide", "raw_exec"):
                    dens = d == "elide" and n == max(a.counts) and "density" not in skip
                    r = run_memory(agent, d, n, dens)
                    print(f"  memory {d:8} N={n:3}: {r['rss_kb_per_task']:8.0f} KiB RSS "
                          f"{r['pss_kb_per_task']:7.0f} KiB Pss per task, stop {r['stop_s']:.2f}s",
                          flush=True)
                    out["memory"].append(r)
        if "stop" not in skip:
            out["stop"] = run_stop_rounds(agent, a.stop_count, a.stop_rounds)
        for d in ("elide", "raw_exec"):
            if "burst" not in skip:
                out["burst"].append(run_burst(agent, d))
            if "follow" not in skip:
                out["follow"].append(run_follow(agent, d))
        if "exec" not in skip and a.exec_rounds:
            out["exec"] = exec_latency(agent, a.exec_rounds)
        ready = [int(x) / 1000 for x in re.findall(r"shim ready: .*?shim_ready_us=(\d+)",
                                                   agent.log())]
        out["shim_ready_ms"] = statistics.median(ready) if ready else None
    finally:
        agent.stop_all_jobs()
        agent.stop()
        drop_empty_runtime_dir(agent)
    if "sandbox" not in skip:
        out["sandbox"] = sandbox_cost(nomad_bin, bins, base, a.tasks, a.sandbox_rounds)
    for n in a.recovery:
        out["recovery"].append({"tasks": n, "seconds": run_recovery(nomad_bin, bins, base, n)})
    out["shim_binary_bytes"] = os.path.getsize(bins["executor"])
    # The agents above are stopped; what Nomad left mounted under `base` goes with it.
    with open("/proc/self/mountinfo") as f:
        for m in sorted((ln.split()[4] for ln in f if base in ln.split()[4]), reverse=True):
            subprocess.run(["umount", m], check=False)
    if not os.environ.get("NDE_BENCH_KEEP"):
        shutil.rmtree(base, ignore_errors=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)

    print()
    print("==== nomad-driver-elide vs raw_exec (same agent, same run; ratios are elide/raw_exec)")
    by = {(r["driver"], r["tasks"]): r for r in out["memory"]}
    print(f"{'N':>4} {'driver':9} {'helpers/task':>13} {'RSS KiB/task':>13} {'Pss KiB/task':>13}"
          f" {'start all s':>12} {'stop s':>7} {'gone s':>7} {'API s':>6}")
    for (d, n), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        hp = sum(r["helpers"].values()) / n
        print(f"{n:4} {d:9} {hp:13.2f} {r['rss_kb_per_task']:13.0f} {r['pss_kb_per_task']:13.0f}"
              f" {r['start_all_s']:12.2f} {r['stop_s']:7.2f} {r['stop_gone_s']:7.2f}"
              f" {r['stop_api_s']:6.2f}")
    for n in counts:
        e, r = by.get(("elide", n)), by.get(("raw_exec", n))
        if e and r:
            print(f"ratio N={n}: RSS {ratio(e['rss_kb_per_task'], r['rss_kb_per_task'])}, "
                  f"Pss {ratio(e['pss_kb_per_task'], r['pss_kb_per_task'])}, "
                  f"stop {ratio(e['stop_s'], r['stop_s'])} "
                  f"(processes gone {ratio(e['stop_gone_s'], r['stop_gone_s'])}, allocations "
                  f"terminal {ratio(e['stop_api_s'], r['stop_api_s'])}), "
                  f"start all {ratio(e['start_all_s'], r['start_all_s'])}")
    st = {r["driver"]: r for r in out["stop"]}
    for d, r in st.items():
        print(f"stop {d:9}: N={r['tasks']}, `job stop` -> every task dead (Killed events), median "
              f"{r['stop_s']:.3f}s of {r['rounds']} ({r['all_s']}); -> every task process gone "
              f"{r['stop_gone_s']:.3f}s; -> every allocation terminal in the API "
              f"{r['stop_api_s']:.3f}s")
    for d, r in st.items():
        for i, f in enumerate(r["per_task"]):
            k, t = f.get("killing_at_ms"), f.get("task_stop_ms")
            if k and t:
                print(f"  {d:9} round {i}: Nomad's Killing at median {k['median']:.0f} ms, p90 "
                      f"{k['p90']:.0f}, last {k['max']:.0f}; each task's Killing -> Killed median "
                      f"{t['median']:.0f} ms, p90 {t['p90']:.0f}, max {t['max']:.0f}")
    if len(st) == 2:
        e, r = st["elide"], st["raw_exec"]
        print(f"ratio stop (medians): tasks dead {ratio(e['stop_s'], r['stop_s'])}, processes "
              f"gone {ratio(e['stop_gone_s'], r['stop_gone_s'])}, allocations terminal "
              f"{ratio(e['stop_api_s'], r['stop_api_s'])}")
    for r in out["memory"]:
        if "idle_cpu_percent" in r:
            print(f"density: {r['density_running']}/{r['tasks']} running; plugin + shims idle "
                  f"CPU {r['idle_cpu_percent']:.2f}% of one core over 60 s (plugin "
                  f"{r['idle_cpu_percent_plugin']:.2f}%, shims {r['idle_cpu_percent_shims']:.2f}%)"
                  f"; agent restart: "
                  f"{r['restart_recovered']}/{r['tasks']} reattached in "
                  f"{r['restart_recover_s']:.2f}s; plugin RSS {r['plugin_rss_kb']} KiB")
    bu = {r["driver"]: r for r in out["burst"]}
    for d, r in bu.items():
        print(f"burst {d:9}: {r['bytes']} bytes, every line present and in order: "
              f"{r['complete_in_order']}; registration -> all in the log files "
              f"{r['to_files_s']:.2f}s, the task's Started -> Terminated "
              f"{r['started_to_terminated_s']:.3f}s (medians of {r['rounds']})")
    if len(bu) == 2:
        e, r = bu["elide"], bu["raw_exec"]
        print(f"ratio burst: to the log files {ratio(e['to_files_s'], r['to_files_s'])}, "
              f"Started -> Terminated "
              f"{ratio(e['started_to_terminated_s'], r['started_to_terminated_s'])}")
    fo = {r["driver"]: r for r in out["follow"]}
    for d, r in fo.items():
        if r.get("lines"):
            print(f"follow {d:8}: lag median {r['lag_median_ms']:.1f} ms, p95 "
                  f"{r['lag_p95_ms']:.1f} ms, max {r['lag_max_ms']:.1f} ms over {r['lines']} lines")
    if len(fo) == 2 and fo["elide"].get("lines") and fo["raw_exec"].get("lines"):
        print(f"ratio follow lag (median): "
              f"{ratio(fo['elide']['lag_median_ms'], fo['raw_exec']['lag_median_ms'])}")
    if out.get("shim_ready_ms"):
        print(f"shim spawn -> socket ready: median {out['shim_ready_ms']:.1f} ms")
    for r in out["recovery"]:
        print(f"recovery after an agent restart: {r['tasks']} tasks reattached in "
              f"{r['seconds']:.2f}s")
    print(f"shim binary: {out['shim_binary_bytes']} bytes")
    execs = out.get("exec")
    if execs:
        print()
        print(f"==== `nomad alloc exec` round trip ({a.exec_rounds} each, same agent, drivers "
              "taking turns): CLI start -> first output byte, and -> CLI exit")
        print(f"{'driver':10} {'first byte median (ms)':>23} {'p90':>7} {'exit median (ms)':>17} {'p90':>7}")
        for d, x in execs.items():
            print(f"{d:10} {statistics.median(x['first']):23.1f} {percentile(x['first'], 0.9):7.1f} "
                  f"{statistics.median(x['total']):17.1f} {percentile(x['total'], 0.9):7.1f}")
        e, r = execs["elide"], execs["raw_exec"]
        print(f"ratio elide/raw_exec: first byte "
              f"{ratio(statistics.median(e['first']), statistics.median(r['first']))}, "
              f"exit {ratio(statistics.median(e['total']), statistics.median(r['total']))}")
    sandbox = out.get("sandbox")
    if sandbox:
        print()
        print(f"==== the sandbox's start cost (one agent per configuration, same run): the shim's "
              f"Start of one task ({a.sandbox_rounds} each, taking turns), and {a.tasks} tasks at once")
        print(f"{'configuration':20} {'Start median (ms)':>18} {'p90 (ms)':>9} {f'{a.tasks} running (s)':>14}")
        for r in sandbox:
            print(f"{r['label']:20} {r['start_ms']:18.1f} {r['start_p90_ms']:9.1f} "
                  f"{r['start_all_s']:14.2f}")
        on, off, bare = sandbox
        print(f"ratio sandbox/fs_isolation=none: Start {ratio(on['start_ms'], off['start_ms'])}, "
              f"start-all time {ratio(on['start_all_s'], off['start_all_s'])}")
        print(f"ratio sandbox/(none + host pid/ipc): Start {ratio(on['start_ms'], bare['start_ms'])}")
    return 0


def drop_empty_runtime_dir(agent) -> list[str]:
    """Removes the plugin's runtime dir of a stopped agent when nothing is left in it (the
    plugin removes its own entries as it exits; the dir is the harness's, under /tmp);
    returns what is left in it otherwise."""
    left = sorted(os.listdir(agent.runtime_dir)) if os.path.isdir(agent.runtime_dir) else []
    if os.path.isdir(agent.runtime_dir) and not left:
        os.rmdir(agent.runtime_dir)
    return left


def leave_nothing(agent, base: str) -> dict:
    """Stops `agent` and leaves the machine as the bench found it; prints and returns what it
    had to clean. In persistent mode tasks outlive the agent: a run that failed, or skipped
    the stop, would leave them (and their shims) running. They end by pid: SIGTERM to the
    shims first (a shim stops its task and removes its cgroup and runtime entry; a second
    SIGTERM once the task is gone makes it leave), SIGKILL for what is left after that.
    Nomad unmounts an allocation's secrets/ and private/ only when its GC collects the
    allocation, which a stopped agent never does: they are unmounted here. `base` is removed
    (kept with NDE_BENCH_KEEP=1, to read the agent's log), and the plugin's runtime dir when
    it is empty."""
    agent.stop()
    stray = agent.leftovers(timeout=5)
    for wait_for_shims in (False, True):
        shims = [p for p in stray if "elide-executor serve" in p.cmdline and nm.is_alive(p)]
        for p in shims:
            try:
                os.kill(p.pid, 15)
            except OSError:
                pass
        nm.wait_gone(shims if wait_for_shims else
                     [p for p in stray if "elide-executor serve" not in p.cmdline], 120)
    stray = [p for p in stray if nm.is_alive(p)]
    for p in stray:
        try:
            os.kill(p.pid, 9)
        except OSError:
            pass
    nm.wait_gone(stray, 60)
    with open("/proc/self/mountinfo") as f:
        mounts = [ln.split()[4] for ln in f if base in ln.split()[4]]
    for m in sorted(mounts, reverse=True):
        subprocess.run(["umount", m], check=False)
    if not os.environ.get("NDE_BENCH_KEEP"):
        shutil.rmtree(base, ignore_errors=True)
    runtime_left = drop_empty_runtime_dir(agent)
    print(f"\nNomad's mounts under {base} at the end: {len(mounts)} (unmounted); "
          f"{len(stray)} processes of the agent still running after it stopped (killed); "
          f"{base} {'kept' if os.environ.get('NDE_BENCH_KEEP') else 'removed'}; runtime dir "
          f"after the agent stopped: {runtime_left or 'empty, removed'}", flush=True)
    return {"mounts": len(mounts), "stray": len(stray), "runtime_left": runtime_left}


if __name__ == "__main__":
    sys.exit(main())
