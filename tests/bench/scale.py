#!/usr/bin/env python3
"""Benchmark: N idle Elide tasks on one Nomad client (issue #21, "1,000 tasks on one node").
Prints the table of docs/performance.md ("At scale") with the plugin's CPU, memory and file
descriptors split out from the shims'; asserts nothing (targets are read by people).

    python3 tests/bench/scale.py --tasks 1000 [--idle 60] [--strace 10] [--json out.json]
        [--skip restart,stop] [--exec-tasks 20]

One persistent agent (server + client), the client's cpu_total_compute / memory_total_mb
raised so the scheduler places N tasks of cpu = 10, memory = 40, ephemeral_disk = 10 on this
machine. Figures:

  start     job registration -> all N running; each task's own start (registration -> its
            Started event), median and slowest
  idle      CPU of the plugin, and of all shims + sandbox PID 1s, over --idle s with Nomad's
            default 1 s stats collection (plugin: utime + stime, which keep the time of
            threads that exited; shims: per-thread schedstat); the plugin's µs per task-stats
            sample (its CPU / (N x samples per task))
  memory    the plugin's VmRSS, Pss and open fds (by kind); shim + sandbox PID 1 Pss per task;
            Nomad's own RSS (for scale)
  strace    (--strace S) the plugin's syscalls over S s: per task per interval, by name
  restart   SIGKILL of the agent -> all N running again (the plugin log's reattach lines),
            and whether any shim was restarted (same pids before and after)
  stop      `job stop` (DELETE /v1/job) -> every task process gone, every allocation terminal
  clean     after the stop: cgroups, mounts and runtime dir entries left behind (none expected)
  exec      (--exec-tasks N) Nomad's exec driver side by side: N idle tasks, start-all time,
            helper Pss per task, and the disk the task dirs take (real blocks, `du`)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

nm = bench.nm

CLIENT_HCL = """
cpu_total_compute = 200000
memory_total_mb   = 200000
"""


def scale_job(name: str, driver: str, count: int) -> str:
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
    ephemeral_disk {{
      size = 10
    }}
    task "t" {{
      logs {{
        max_files     = 1
        max_file_size = 1
      }}
      driver = "{driver}"
      config {{
        {config}
      }}
      template {{
        destination = "local/app.py"
        perms = "644"
        data = "{bench.IDLE_APP}"
      }}
      resources {{
        cpu    = 10
        memory = 40
      }}
    }}
  }}
}}
"""


def smaps(pid: int) -> dict:
    d = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, rest = line.partition(":")
                if rest.strip().endswith("kB"):
                    d[k] = int(rest.split()[0])
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    d["VmRSS"] = int(line.split()[1])
    except OSError:
        pass
    return d


def fds(pid: int) -> dict[str, int]:
    """Open fds of `pid` by kind (socket, a cgroup file by name, pipe, anon_inode:..., file)."""
    kinds: dict[str, int] = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return kinds
    for n in names:
        try:
            t = os.readlink(f"/proc/{pid}/fd/{n}")
        except OSError:
            continue
        if t.startswith("/sys/fs/cgroup/"):
            k = "cgroup:" + os.path.basename(t)
        elif t.startswith("socket:"):
            k = "socket"
        elif t.startswith("pipe:"):
            k = "pipe"
        elif t.startswith("anon_inode:"):
            k = t
        else:
            k = "file"
        kinds[k] = kinds.get(k, 0) + 1
    return kinds


def nofile_limit(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return " / ".join(line.split()[3:5])
    except OSError:
        pass
    return "?"


def client_rss(agent) -> int:
    return smaps(agent.proc.pid).get("VmRSS", 0) if agent.proc else 0


def alloc_start_times(agent, job_id: str, t_submit: float) -> list[float]:
    """Seconds from registration (wall clock) to each task's Started event."""
    out = []
    for a in agent.api.get("/v1/job/" + job_id + "/allocations"):
        ev = ((a.get("TaskStates") or {}).get("t") or {}).get("Events") or []
        st = [e["Time"] / 1e9 for e in ev if e["Type"] == "Started"]
        if st:
            out.append(st[0] - t_submit)
    return out


def all_running(agent, job_id: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        allocs = agent.api.get("/v1/job/" + job_id + "/allocations")
        up = sum(1 for x in allocs
                 if ((x.get("TaskStates") or {}).get("t") or {}).get("State") == "running")
        if up >= n:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{up}/{n} tasks of {job_id} running after {timeout:.0f}s")
        time.sleep(0.5)


def strace_plugin(pid: int, seconds: float) -> dict[str, int]:
    """Syscalls of every thread of `pid` over `seconds` (strace -c), by name."""
    p = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", "/dev/stdout"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(seconds)
    p.send_signal(2)
    out, _ = p.communicate(timeout=30)
    calls: dict[str, int] = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
            try:
                calls[f[-1]] = int(f[3])
            except ValueError:
                continue
    return calls


def cgroup_leftovers(alloc_ids: list[str]) -> list[str]:
    left = []
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        for d in dirs:
            if any(a in d for a in alloc_ids):
                left.append(os.path.join(root, d))
        # Task cgroups are at most a few levels down; do not walk the whole tree.
        if root.count("/") > 6:
            dirs[:] = []
    return left


def mount_leftovers(base: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if base in line.split()[4]]


def process_cpu_ns(pid: int) -> int:
    """CPU time of `pid` (utime + stime of /proc/<pid>/stat, ns): unlike a sum of per-thread
    schedstat, it keeps the time of threads that exited (the plugin's blocking pool threads
    come and go), at the clock tick's resolution."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def stats_answered(agent, alloc_ids: list[str], since: float) -> float:
    """Seconds from `since` until every allocation's task stats (served through the plugin's
    TaskStats, which Nomad only calls for a task it has recovered) answered once."""
    from concurrent.futures import ThreadPoolExecutor
    pending = set(alloc_ids)
    deadline = time.monotonic() + 600

    def ok(alloc_id: str) -> bool:
        try:
            st = agent.api.get(f"/v1/client/allocation/{alloc_id}/stats")
        except Exception:  # noqa: BLE001 - not yet recovered: Nomad answers 500
            return False
        return bool(((st or {}).get("Tasks") or {}).get("t"))

    with ThreadPoolExecutor(16) as pool:
        while pending and time.monotonic() < deadline:
            ids = sorted(pending)
            for alloc_id, good in zip(ids, pool.map(ok, ids)):
                if good:
                    pending.discard(alloc_id)
            if pending:
                time.sleep(0.1)
    return time.monotonic() - since


def restart_run(agent, job_id: str, n: int, shims_before: set[int]) -> dict:
    """SIGKILL of the agent (the plugin and shims survive, as in a crash) and a new agent:
    time until every task is recovered (its stats answer), and whether any shim changed."""
    alloc_ids = [x["ID"] for x in agent.allocs(job_id) if x["ClientStatus"] == "running"]
    t0 = time.monotonic()
    agent.kill()
    agent.start()
    out = {"restart_s": stats_answered(agent, alloc_ids, t0)}
    all_running(agent, job_id, n, timeout=600)
    out["restart_shims_replaced"] = len(shims_before - set(bench.helpers(agent)["shim"]))
    return out


def run_elide(agent, n: int, a) -> dict:
    res: dict = {"tasks": n}
    job_id = f"scale-{n}"
    # The plugin before this run's tasks: what the tasks add is the per-task share.
    res["plugin_rss_kb_before"] = smaps(bench.plugin_pid(agent)).get("VmRSS", 0)
    t_submit = time.time()
    t0 = time.monotonic()
    agent.run_job(scale_job(job_id, "elide", n))
    all_running(agent, job_id, n, timeout=1800)
    res["start_all_s"] = time.monotonic() - t0
    starts = sorted(alloc_start_times(agent, job_id, t_submit))
    allocs = agent.allocs(job_id)
    res["allocs_failed"] = sum(1 for x in allocs if x["ClientStatus"] == "failed")
    res["start_median_s"] = statistics.median(starts) if starts else 0
    res["start_max_s"] = max(starts) if starts else 0
    time.sleep(5)  # the stats streams of all tasks are up
    plugin = bench.plugin_pid(agent)
    h = bench.helpers(agent)
    res["shims"], res["inits"] = len(h["shim"]), len(h["init"])
    shim_m = [smaps(p) for p in h["shim"] + h["init"]]
    res["helper_pss_kb_per_task"] = sum(m.get("Pss", 0) for m in shim_m) / n
    pm = smaps(plugin)
    res["plugin_rss_kb"], res["plugin_pss_kb"] = pm.get("VmRSS", 0), pm.get("Pss", 0)
    res["plugin_anon_kb"] = pm.get("Anonymous", 0)
    res["plugin_fds"] = fds(plugin)
    res["plugin_fds_total"] = sum(res["plugin_fds"].values())
    res["plugin_nofile"] = nofile_limit(plugin)
    res["client_rss_kb"] = client_rss(agent)
    # Idle CPU, plugin and helpers apart.
    helpers_ = h["shim"] + h["init"]
    cpu = lambda p: process_cpu_ns(p) if p == plugin else bench.cpu_ns(p)  # noqa: E731
    before = {p: cpu(p) for p in helpers_ + [plugin]}
    t1 = time.monotonic()
    time.sleep(a.idle)
    wall = time.monotonic() - t1
    spent = {p: (cpu(p) - ns) / 1e9 for p, ns in before.items()}
    res["idle_s"] = wall
    res["idle_cpu_plugin_pct"] = 100 * spent[plugin] / wall
    res["idle_cpu_helpers_pct"] = 100 * sum(v for p, v in spent.items() if p != plugin) / wall
    res["plugin_us_per_sample"] = spent[plugin] * 1e6 / (n * wall)
    if a.strace:
        calls = strace_plugin(plugin, a.strace)
        res["strace_s"] = a.strace
        res["syscalls_per_task_s"] = sum(calls.values()) / (n * a.strace)
        res["syscalls_top"] = dict(sorted(calls.items(), key=lambda kv: -kv[1])[:8])
    if "restart" not in a.skip:
        res.update(restart_run(agent, job_id, n, set(h["shim"])))
    alloc_ids = [x["ID"] for x in agent.allocs(job_id)]
    if "stop" not in a.skip:
        procs = bench.task_pids(agent, "elide") + [nm.proc_info(p) for p in bench.helpers(agent)["shim"]]
        procs = [p for p in procs if p]
        t3 = time.monotonic()
        agent.stop_job(job_id, wait=False)
        agent.wait_allocs(job_id, lambda al: all(x["ClientStatus"] in nm.TERMINAL_CLIENT
                                                 for x in al), timeout=900, what="stopped")
        res["stop_api_s"] = time.monotonic() - t3
        left = nm.wait_gone(procs, 300)
        res["stop_gone_s"] = time.monotonic() - t3
        res["stop_left"] = len(left)
        agent.api.delete(f"/v1/job/{job_id}", purge="true")
        # Nomad keeps the dirs (and mounts) of terminal allocations until its GC: run it.
        agent.api.put("/v1/client/gc")
        res["left_cgroups"] = cgroup_leftovers(alloc_ids)
        res["left_mounts"] = mount_leftovers(agent.base)
        res["left_runtime_entries"] = sorted(os.listdir(agent.runtime_dir)) \
            if os.path.isdir(agent.runtime_dir) else []
    return res


def run_exec(agent, n: int) -> dict:
    """Nomad's exec driver, N idle tasks: start-all time, helper Pss per task, disk."""
    job_id = f"scale-exec-{n}"
    t0 = time.monotonic()
    agent.run_job(scale_job(job_id, "exec", n))
    all_running(agent, job_id, n, timeout=1800)
    res = {"tasks": n, "start_all_s": time.monotonic() - t0}
    time.sleep(5)
    h = bench.helpers(agent)
    res["helper_pss_kb_per_task"] = sum(smaps(p).get("Pss", 0)
                                        for p in h["executor"] + h["logmon"]) / n
    allocs = os.path.join(agent.data_dir, "alloc")
    du = subprocess.run(["du", "-sk", allocs], capture_output=True, text=True).stdout.split()
    res["alloc_dir_kb_per_task"] = int(du[0]) / n if du else 0
    t1 = time.monotonic()
    agent.stop_job(job_id, timeout=900)
    res["stop_api_s"] = time.monotonic() - t1
    agent.api.delete(f"/v1/job/{job_id}", purge="true")
    return res


def elide_disk(agent, n: int) -> float:
    allocs = os.path.join(agent.data_dir, "alloc")
    du = subprocess.run(["du", "-sk", allocs], capture_output=True, text=True).stdout.split()
    return int(du[0]) / n if du else 0


def print_table(r: dict) -> None:
    n = r["tasks"]
    f = r.get("plugin_fds", {})
    rows = [
        ("submit -> all running", f"{r['start_all_s']:.1f} s (median start "
         f"{r['start_median_s']:.1f} s, slowest {r['start_max_s']:.1f} s = "
         f"{r['start_max_s'] / max(r['start_median_s'], 1e-9):.1f}x median; "
         f"{r['allocs_failed']} allocations failed and were replaced)"),
        ("plugin idle CPU", f"{r['idle_cpu_plugin_pct']:.2f} % of one core over "
         f"{r['idle_s']:.0f} s ({r['plugin_us_per_sample']:.1f} µs per task-stats sample)"),
        ("shims + PID 1s idle CPU", f"{r['idle_cpu_helpers_pct']:.2f} %"),
        ("plugin + shims idle CPU", f"{r['idle_cpu_plugin_pct'] + r['idle_cpu_helpers_pct']:.2f} %"),
        ("plugin VmRSS / Pss", f"{r['plugin_rss_kb'] / 1024:.1f} MiB / "
         f"{r['plugin_pss_kb'] / 1024:.1f} MiB ({r['plugin_rss_kb_before'] / 1024:.1f} MiB "
         f"before the tasks: {(r['plugin_rss_kb'] - r['plugin_rss_kb_before']) / n:.1f} KiB "
         "per task)"),
        ("plugin open fds", f"{r['plugin_fds_total']} ({r['plugin_fds_total'] / n:.2f} per "
         f"task; limit {r['plugin_nofile']}): " + ", ".join(f"{k} {v}" for k, v in
                                                            sorted(f.items(), key=lambda kv: -kv[1]))),
        ("shim + PID 1 Pss per task", f"{r['helper_pss_kb_per_task']:.0f} KiB "
         f"({r['shims']} shims, {r['inits']} PID 1s)"),
    ]
    if "syscalls_per_task_s" in r:
        rows.append(("plugin syscalls per task per s", f"{r['syscalls_per_task_s']:.2f} "
                     + json.dumps(r["syscalls_top"])))
    if "restart_s" in r:
        rows.append(("agent kill -9 -> all recovered", f"{r['restart_s']:.1f} s "
                     f"(every task's stats answer again; {r['restart_shims_replaced']} shims "
                     "replaced)"))
    if "stop_api_s" in r:
        rows.append(("job stop -> nothing left", f"{r['stop_gone_s']:.1f} s (allocations terminal "
                     f"{r['stop_api_s']:.1f} s; {r['stop_left']} processes left, "
                     f"{len(r['left_cgroups'])} cgroups, {len(r['left_mounts'])} mounts, "
                     f"{len(r['left_runtime_entries'])} runtime dir entries)"))
    rows.append(("Nomad client RSS", f"{r['client_rss_kb'] / 1024:.0f} MiB"))
    print(f"\n== {n} Elide tasks on one client ==")
    for k, v in rows:
        print(f"  {k:34} {v}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, nargs="+", default=[1000])
    ap.add_argument("--idle", type=float, default=60, help="seconds of idle CPU measurement")
    ap.add_argument("--strace", type=float, default=0, help="seconds of strace -c on the plugin")
    ap.add_argument("--skip", default="", help="comma-separated: restart,stop")
    ap.add_argument("--exec-tasks", type=int, default=0, help="N for Nomad's exec driver")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    a.skip = set(filter(None, a.skip.split(",")))
    bins = nm.build_workspace()
    base = tempfile.mkdtemp(prefix="nde-scale-")
    agent = nm.NomadAgent(nm.find_nomad(), os.path.join(base, "a"), plugin_bin=bins["plugin"],
                          executor_bin=bins["executor"], name="scale", mode="persistent",
                          client_hcl=CLIENT_HCL, log_level="INFO")
    agent.plugin_config = agent.default_plugin_config()
    out: dict = {"elide": [], "exec": []}
    try:
        agent.start()
        agent.wait_driver_healthy()
        for n in a.tasks:
            r = run_elide(agent, n, a)
            out["elide"].append(r)
            print_table(r)
            sys.stdout.flush()
        if a.exec_tasks:
            r = run_exec(agent, a.exec_tasks)
            out["exec"].append(r)
            print(f"\n== Nomad's exec driver, {a.exec_tasks} tasks ==\n  start all "
                  f"{r['start_all_s']:.1f} s, executor + logmon Pss per task "
                  f"{r['helper_pss_kb_per_task'] / 1024:.1f} MiB, alloc dirs "
                  f"{r['alloc_dir_kb_per_task'] / 1024:.1f} MiB per task (real blocks), "
                  f"stop {r['stop_api_s']:.1f} s")
    finally:
        agent.stop()
        # Nomad unmounts an allocation's secrets/ and private/ only when its GC collects the
        # allocation, which a stopped agent never does: the bench leaves nothing behind.
        left = mount_leftovers(base)
        for m in sorted(left, reverse=True):
            subprocess.run(["umount", m], check=False)
        shutil.rmtree(base, ignore_errors=True)
        if os.path.isdir(agent.runtime_dir) and not os.listdir(agent.runtime_dir):
            os.rmdir(agent.runtime_dir)
        print(f"\nNomad's mounts under {base} at the end: {len(left)} (unmounted); {base} removed")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
