#!/usr/bin/env python3
"""Benchmark: N idle Elide tasks on one Nomad client (issue #21, "1,000 tasks on one node").
Prints the table of docs/performance.md ("At scale") with the plugin's CPU, memory and file
descriptors split out from the shims'; asserts nothing (targets are read by people).

    python3 tests/bench/scale.py --tasks 1000 [--idle 60] [--strace 10] [--json out.json]
        [--skip restart,stop] [--exec-tasks 20] [--step 500 --mem-floor 3072]
        [--payload standin|sleep] [--app-via template|artifact]

--payload sleep runs a minimal `elide` (a shell script answering the fingerprint and exec'ing
sleep) instead of the stand-in, whose Python interpreter per task (it runs the app in its
own process; ~8.5 MiB Pss idle) bounds how many tasks fit in this node's memory: the
driver's own limits at 2,000 and beyond.

One persistent agent (server + client; --topology split: a server agent and a client agent,
the restart then kills only the client, as an operator's restart of a client node does), the
client's cpu_total_compute / memory_total_mb
raised so the scheduler places N tasks of cpu = 10, memory = 40, ephemeral_disk = 10 on this
machine. Figures:

  speed     a fixed CPU loop's time before and after the run, and the CPU the hypervisor
            stole during the start: on a shared host the node's speed moves by tens of per
            cent between runs, and these say which runs compare
  start     job registration -> all N running; each task's own start (registration -> its
            Started event), median and slowest
  idle      CPU of the plugin, and of all shims + sandbox PID 1s, over --idle s with Nomad's
            default 1 s stats collection (plugin: utime + stime, which keep the time of
            threads that exited; shims: per-thread schedstat); the plugin's µs per task-stats
            sample (its CPU / (N x samples per task))
  memory    the plugin's VmRSS, Pss and open fds (by kind); shim + sandbox PID 1 Pss per task;
            Nomad's own RSS (for scale)
  perf      (--perf S) `perf record -g` of the plugin over S s, into --perf-out
  strace    (--strace S) the plugin's syscalls over S s: per task per interval, by name
  restart   (--restart-peer-tasks N: the same for N Elide and then N raw_exec tasks, polling
            every stats endpoint; ratio elide / raw_exec)
            SIGKILL of the agent -> all N running again: Nomad has every task's TaskStats
            stream open again (counted from the plugin's fds, which costs the node nothing
            much); a second kill: every stats endpoint answers (HTTP, 16 at a time); the plugin log's
            reattach lines if the plugin restarted too; whether any shim was restarted (same
            pids before and after)
  profile   (--profile-restart S) `perf record -g` of the restarted agent over its first S s,
            the functions it spent them in printed: where Nomad's own restore spends its CPU
  stop      `job stop` (DELETE /v1/job) -> every task process gone, every allocation terminal
  clean     after the stop: cgroups, mounts and runtime dir entries left behind (none expected)
  exec      (--exec-tasks N) Nomad's exec driver side by side with N Elide tasks, one job
            after the other on the same agent: start-all time, helper and payload Pss per task,
            the disk the allocation dirs take (real blocks: `du`, which counts a hard-linked
            inode once, and the blocks only the allocation dirs hold, from st_blocks), stop
            time, and what each leaves behind; ratios elide / exec
  memory    (--step S) large N in steps of S tasks: before each step the node's MemAvailable
            and the memory the tasks so far took each (its drop / tasks) say how many more fit
            above --mem-floor; the run stops rising where they no longer do (and says so), and
            stops adding if MemAvailable falls below half the floor while tasks start
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

nm = bench.nm

# exec's chroot: Nomad's default chroot_env (client/config DefaultChrootEnv, 1.6.1) plus Elide's
# install dir (the stand-in's), as an operator running Elide under exec would add it; the Elide
# driver binds the same dir into its sandbox. Only the exec driver reads chroot_env.
STANDIN_DIR = os.path.dirname(nm.STANDIN)
CHROOT_ENV = ["/bin", "/etc", "/lib", "/lib32", "/lib64", "/run/resolvconf", "/sbin", "/usr",
              "/run/systemd/resolve", STANDIN_DIR]
CLIENT_HCL = """
cpu_total_compute = 200000
memory_total_mb   = 200000
chroot_env {
""" + "".join(f'  "{d}" = "{d}"\n' for d in CHROOT_ENV) + "}\n"


# --payload sleep: a minimal `elide` for the driver's own limits at sizes the stand-in's
# Python interpreter per task (~8.5 MiB Pss idle) cannot reach on this node. It answers the
# fingerprint (`--version`, `info`) like Elide and `exec`s sleep for any command, so a task is
# one small process; the driver runs it as it runs Elide (no special case).
SLEEP_ELIDE = """#!/bin/sh
case "$1" in
  --version) echo 1.0.0-beta10 ;;
  info) printf 'Elide v1.0.0-beta10 (RELEASE)\\nPlatform: Native\\nLanguages: python\\n' ;;
  *) exec sleep 2147483647 ;;
esac
"""


# --app-via artifact: the URL the tasks' `artifact` fetches the app from (the bench serves
# it); None: a `template` writes it.
APP_URL: str | None = None


def app_stanza() -> str:
    """How local/app.py gets into each task: a `template` (the default), or an `artifact`.
    Both are what operators write; they differ in what a restarted agent redoes per
    allocation: a template's consul-template runner is started again and renders, a fetched
    artifact is not fetched again."""
    if APP_URL:
        return f"""artifact {{
        source      = "{APP_URL}"
        destination = "local/"
      }}"""
    return f"""template {{
        destination = "local/app.py"
        perms = "644"
        data = "{bench.IDLE_APP}"
      }}"""


def serve_app() -> tuple[str, str]:
    """Serves the idle app over HTTP on 127.0.0.1 from a thread (for --app-via artifact);
    returns its URL and the dir it is served from (for the caller to remove)."""
    import http.server
    d = tempfile.mkdtemp(prefix="nde-scale-app-")
    with open(os.path.join(d, "app.py"), "w") as f:
        f.write(bench.IDLE_APP.encode().decode("unicode_escape"))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kw):
            super().__init__(*args, directory=d, **kw)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_address[1]}/app.py", d


def scale_job(name: str, driver: str, count: int) -> str:
    """`count` idle tasks of `driver` (elide, or exec/raw_exec running the same stand-in)."""
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
      {app_stanza()}
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


class Braked(Exception):
    """The brake of all_running fired: `up` tasks were running."""

    def __init__(self, up: int, why: str):
        super().__init__(why)
        self.up, self.why = up, why


def running_count(agent, job_id: str) -> int:
    allocs = agent.api.get("/v1/job/" + job_id + "/allocations")
    return sum(1 for x in allocs
               if x.get("DesiredStatus") == "run"
               and ((x.get("TaskStates") or {}).get("t") or {}).get("State") == "running")


def alloc_start_times_own(alloc: dict) -> list[float]:
    """Seconds from the allocation's creation to its task's Started event."""
    ev = ((alloc.get("TaskStates") or {}).get("t") or {}).get("Events") or []
    return [e["Time"] / 1e9 - alloc["CreateTime"] / 1e9 for e in ev if e["Type"] == "Started"][:1]


def all_running(agent, job_id: str, n: int, timeout: float, brake=None) -> None:
    """Wait until `n` tasks of the job run. `brake()` (optional) returns a reason to give up
    early (raises Braked with the count running then), or None."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            up = running_count(agent, job_id)
        except (OSError, nm.ApiError) as e:  # an agent starting 1,000 tasks answers slowly
            if time.monotonic() > deadline:
                raise
            print(f"  (allocations of {job_id}: {e}; asking again)", file=sys.stderr)
            time.sleep(0.5)
            continue
        if up >= n:
            return
        why = brake() if brake else None
        if why:
            raise Braked(up, why)
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


def perf_plugin(pid: int, seconds: float, out: str) -> None:
    """`perf record -g` of every thread of `pid` over `seconds` into `out` (a profile of the
    idle plugin: read it with `perf report -i OUT`; build the plugin with symbols for it)."""
    subprocess.run(["perf", "record", "-g", "-F", "999", "-p", str(pid), "-o", out, "--",
                    "sleep", str(seconds)], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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


def collect_garbage(agent, alloc_ids: list[str]) -> dict:
    """Nomad's GC of the stopped allocations, run now: it unmounts an allocation's secrets/
    and private/ and removes its dir (exec: its chroot). PUT /v1/client/gc only starts the
    destruction and returns, so leftovers counted right after it would be Nomad's work in
    progress: this waits (up to 900 s) until every allocation dir is gone."""
    t0 = time.monotonic()
    agent.api.put("/v1/client/gc")
    dirs = [os.path.join(agent.data_dir, "alloc", x) for x in alloc_ids]
    deadline = time.monotonic() + 900
    while any(os.path.exists(d) for d in dirs) and time.monotonic() < deadline:
        time.sleep(0.2)  # no event tells when the client has removed a dir
    return {"gc_s": time.monotonic() - t0,
            "left_alloc_dirs": [d for d in dirs if os.path.exists(d)]}


def mount_leftovers(base: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if base in line.split()[4]]


def node_busy_ns() -> int:
    """CPU time the whole node spent busy (every CPU's non-idle, non-iowait time from
    /proc/stat), ns."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def node_steal_ns() -> int:
    """CPU time the hypervisor gave to others while this VM wanted it (/proc/stat's steal
    column, all CPUs), ns."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (fields[7] if len(fields) > 7 else 0) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def core_speed_ms() -> float:
    """CPU time of a fixed pure-Python loop (best of 3), ms: how fast this node's cores run
    right now. On a shared host a VM's neighbours slow it by tens of per cent from one run to
    the next, which moves every time and CPU figure alike; this says which runs compare."""
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        total = 0
        for i in range(3_000_000):
            total += i
        best = min(best, time.process_time() - t)
    return best * 1000


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


# The counter file a task's TaskStats stream holds open (cgroup v1 / v1 without usage_all / v2).
CPU_COUNTER_FILES = ("cpuacct.usage_all", "cpuacct.usage", "cpu.stat")


def watch_stats_streams(agent, plugin: int, n: int, since: float) -> dict:
    """Starts watching, before the agent's kill, for the plugin to serve a TaskStats stream
    for each of the `n` tasks again, counted from its open fds (each stream holds its task's
    CPU counter file). Nomad opens a task's stats stream once its task runner has recovered
    the task (RecoverTask, then the poststart hooks: the template re-rendered), so this is
    the moment all `n` are running again for Nomad. The old agent's streams close when its
    connection drops; the watch waits for that first (and a plugin restarted with the agent,
    another pid, starts at 0). The result's "s" (seconds from `since`) is set when done:
    join the returned thread. A poll every 20 ms costs the node a few ms each (a readlink
    per fd), where polling Nomad's 1,000 stats endpoints competes with the recovery it
    measures (`restart_api_s`)."""
    out: dict = {}

    def fd_count(pid: int) -> int:
        try:
            return len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return 0

    def watch(plugin: int) -> None:
        deadline = time.monotonic() + 600
        dropped = False
        # Streams are counted by kind (a readlink per fd, ~10 ms at 1,000 tasks) only when
        # the plain fd count (a listdir) says they may all be there: the watch polls every
        # 20 ms and must not take the CPU the recovery needs.
        total_before, cheap_floor = fd_count(plugin), 0
        while time.monotonic() < deadline:
            total = fd_count(plugin)
            if not total:  # the plugin did not survive the agent: count the new one's streams
                plugin, dropped, cheap_floor = bench.plugin_pid(agent), True, n
            elif total >= max(cheap_floor, total_before - 8) or not dropped:
                f = fds(plugin)
                open_streams = sum(f.get("cgroup:" + name, 0) for name in CPU_COUNTER_FILES)
                dropped = dropped or open_streams < n
                if dropped and open_streams >= n:
                    out["s"] = time.monotonic() - since
                    return
            time.sleep(0.02)

    th = threading.Thread(target=watch, args=(plugin,), daemon=True)
    th.start()
    out["thread"] = th
    return out


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


def timed_stop(agent, job_id: str, procs: list) -> dict:
    """`job stop` (DELETE /v1/job): seconds until every allocation is terminal and until
    every process in `procs` is gone (and how many were not); then the job is purged."""
    t0 = time.monotonic()
    agent.stop_job(job_id, wait=False)
    agent.wait_allocs(job_id, lambda al: all(x["ClientStatus"] in nm.TERMINAL_CLIENT
                                             for x in al), timeout=900, what="stopped")
    out = {"stop_api_s": time.monotonic() - t0}
    left = nm.wait_gone(procs, 300)
    out["stop_gone_s"] = time.monotonic() - t0
    out["stop_left"] = len(left)
    agent.api.delete(f"/v1/job/{job_id}", purge="true")
    return out


def log_time(line: str) -> float | None:
    """The wall-clock time of a Nomad agent log line (`2026-12-07T20:27:13.643Z [INFO] ...`)."""
    import datetime
    stamp = line.strip().split(" ", 1)[0]
    try:
        return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return None


# --profile-restart: (seconds, where) of a CPU profile of the restarted agent, or None.
PROFILE_RESTART = None
# --topology split: the server agent (the restart kills only the client agent), or None.
SERVER = None


def nomad_cpu_ns(agent) -> int:
    """CPU time of Nomad's agents: the client agent's, and with --topology split the server
    agent's too."""
    return process_cpu_ns(agent.proc.pid) + (process_cpu_ns(SERVER.proc.pid) if SERVER else 0)


def profile_agent(agent, seconds_and_path: tuple[float, str]):
    """`perf record -g` of the just started agent process over its first `seconds` (from its
    exec: the plugin managers, the first fingerprint and the restore loop run before its
    HTTP API answers, so its pprof endpoint would miss them), into `path`; prints where its
    CPU went, by function with callees (`perf report --children`). Returns the thread."""
    seconds, path = seconds_and_path
    rec = subprocess.Popen(["perf", "record", "-g", "-F", "499", "-p", str(agent.proc.pid),
                            "-o", path, "--", "sleep", f"{seconds:g}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def report() -> None:
        rec.wait()
        top = subprocess.run(["perf", "report", "-i", path, "--children", "--stdio", "-g",
                              "none", "--sort", "symbol", "--percent-limit", "1.5"],
                             capture_output=True, text=True)
        rows = []
        for ln in top.stdout.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+([\d.]+)%\s+\[.\]\s+(\S+)", ln)
            if m:
                rows.append(f"  {m[1]:>6}%  {m[2]:>6}%  {m[3]}")
        print(f"\n== the restarted agent's first {seconds:g} s, perf ({path}) ==\n"
              "  with callees / own: % of its samples\n" + "\n".join(rows[:70]), flush=True)

    th = threading.Thread(target=report, daemon=True)
    th.start()
    return th


def restart_run(agent, job_id: str, n: int, shims_before: set[int]) -> dict:
    """SIGKILL of the agent (the plugin and shims survive, as in a crash) and a new agent:
    time until every task is recovered (its stats answer), and whether any shim changed."""
    alloc_ids = [x["ID"] for x in agent.allocs(job_id) if x["ClientStatus"] == "running"]
    log_from = len(agent.log())
    plugin = bench.plugin_pid(agent)
    plugin_cpu0 = process_cpu_ns(plugin)
    server_cpu0 = process_cpu_ns(SERVER.proc.pid) if SERVER else 0
    t0, wall0 = time.monotonic(), time.time()
    watch = watch_stats_streams(agent, plugin, n, t0)
    agent.kill()
    agent.start(wait=not PROFILE_RESTART)
    profile = profile_agent(agent, PROFILE_RESTART) if PROFILE_RESTART else None
    watch["thread"].join(600)
    if profile:
        profile.join(600)
    out = {"restart_s": watch.get("s", float("nan"))}
    # Where the recovery's time goes: the CPU the new agent and the plugin spent in it (of
    # restart_s x 2 cores).
    out["restart_cpu_nomad_s"] = process_cpu_ns(agent.proc.pid) / 1e9
    if bench.plugin_pid(agent) == plugin:
        out["restart_cpu_plugin_s"] = (process_cpu_ns(plugin) - plugin_cpu0) / 1e9
    if SERVER:  # --topology split: the server agent, not restarted, serving the client
        out["restart_cpu_server_s"] = (process_cpu_ns(SERVER.proc.pid) - server_cpu0) / 1e9
    # A second kill, timed as an operator's script would: polling every stats endpoint
    # from the start (16 at a time, which competes with the recovery for the 2 cores).
    all_running(agent, job_id, n, timeout=600)
    t1 = time.monotonic()
    agent.kill()
    agent.start()
    out["restart_api_s"] = stats_answered(agent, alloc_ids, t1)
    # The plugin's side, from its log (no polling in it): kill -> the last task reattached,
    # and the first -> the last RecoverTask it answered.
    times = sorted(log_time(ln) for ln in agent.log()[log_from:].splitlines()
                   if "reattached to running shim" in ln)
    times = [t for t in times if t is not None]
    if times:
        out["restart_reattached_s"] = times[-1] - wall0
        out["restart_reattach_span_s"] = times[-1] - times[0]
        out["restart_reattached"] = len(times)
    all_running(agent, job_id, n, timeout=600)
    out["restart_shims_replaced"] = len(shims_before - set(bench.helpers(agent)["shim"]))
    return out


def mem_available_kb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def read_int(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def payload_procs(agent) -> list:
    """The task processes of this agent: the stand-in (a Python app runs in its process; a JS
    app in a node child), or --payload sleep's."""
    return [p for p in agent.processes()
            if nm.STANDIN in p.cmdline or "local/app.py" in p.cmdline
            or p.cmdline.startswith("sleep 2147483647")]


def census(agent, n: int) -> dict:
    """What N tasks take of the node's limits: threads (each one a pid) per task by process
    kind, the node's threads against kernel.pid_max / threads-max, the payload's Pss."""
    h = bench.helpers(agent)
    payload = payload_procs(agent)
    kinds = {"shim": h["shim"], "sandbox_init": h["init"], "payload": [p.pid for p in payload]}
    out = {f"threads_{k}": sum(threads(p) for p in v) for k, v in kinds.items()}
    out["procs_payload"] = len(payload)
    out["threads_plugin"] = threads(bench.plugin_pid(agent))
    out["threads_nomad"] = threads(agent.proc.pid) if agent.proc else 0
    out["threads_per_task"] = sum(out[f"threads_{k}"] for k in kinds) / max(n, 1)
    out["threads_node"] = sum(threads(int(d)) for d in os.listdir("/proc") if d.isdigit())
    out["pid_max"] = read_int("/proc/sys/kernel/pid_max")
    out["threads_max"] = read_int("/proc/sys/kernel/threads-max")
    out["payload_pss_kb_per_task"] = sum(smaps(p.pid).get("Pss", 0) for p in payload) / max(n, 1)
    out["payload_private_kb_per_task"] = sum(
        smaps(p.pid).get("Private_Dirty", 0) + smaps(p.pid).get("Private_Clean", 0)
        for p in payload) / max(n, 1)
    return out


def start_tasks(agent, job_id: str, n: int, a) -> dict:
    """Registers the job at `n` tasks (or rises to it in steps of --step while the node's
    memory allows) and waits for all of them to run. Returns the start figures."""
    res: dict = {"tasks_requested": n, "mem_available_kb_before": mem_available_kb(),
                 "steps": []}
    floor = a.mem_floor * 1024

    def brake():
        avail = mem_available_kb()
        if avail < floor // 2:
            return (f"MemAvailable {avail // 1024} MiB fell below half the floor "
                    f"({a.mem_floor // 2} MiB) while tasks started")
        return None

    step = a.step if a.step > 0 else n
    count, limit = 0, None
    # Where the start's CPU goes: Nomad's own, the plugin's, and the node's in all.
    plugin = bench.plugin_pid(agent)
    cpu0 = (nomad_cpu_ns(agent), process_cpu_ns(plugin), node_busy_ns(), node_steal_ns())
    t0 = time.monotonic()
    while count < n and limit is None:
        nxt = min(n, count + step)
        if count:
            # What the tasks so far took of the node each, and how many more fit: measured
            # after their payloads have settled (a task is "running" before its interpreter
            # has finished starting up and reached its full size).
            time.sleep(15)
            avail = mem_available_kb()
            per_task = max(res["mem_available_kb_before"] - avail, 0) / count
            fit = int((avail - floor) / per_task) if per_task else nxt - count
            if fit < nxt - count:
                limit = (f"memory: {count} tasks took {per_task / 1024:.1f} MiB each of the "
                         f"node's memory; MemAvailable {avail // 1024} MiB leaves room for "
                         f"{max(fit, 0)} more above the {a.mem_floor} MiB floor, "
                         f"{n - count} were still to start")
                nxt = count + max(fit, 0)
                if nxt <= count:
                    break
        t1 = time.monotonic()
        agent.run_job(scale_job(job_id, "elide", nxt))
        try:
            all_running(agent, job_id, nxt, timeout=1800, brake=brake)
            count = nxt
        except Braked as b:
            limit = f"memory: {b.why}; {b.up} tasks were running"
            count = b.up
            agent.run_job(scale_job(job_id, "elide", count))  # the rest are stopped
            all_running(agent, job_id, count, timeout=1800)
        res["steps"].append({"count": count, "start_s": time.monotonic() - t1,
                             "mem_available_kb": mem_available_kb()})
    res["start_all_s"] = time.monotonic() - t0
    res["start_cpu_nomad_s"] = (nomad_cpu_ns(agent) - cpu0[0]) / 1e9
    res["start_cpu_plugin_s"] = (process_cpu_ns(plugin) - cpu0[1]) / 1e9
    res["start_cpu_node_s"] = (node_busy_ns() - cpu0[2]) / 1e9
    res["start_steal_s"] = (node_steal_ns() - cpu0[3]) / 1e9
    res["tasks"] = count
    res["limit"] = limit
    return res


def run_elide(agent, n: int, a) -> dict:
    job_id = f"scale-{n}"
    # The plugin before this run's tasks: what the tasks add is the per-task share.
    rss_before = smaps(bench.plugin_pid(agent)).get("VmRSS", 0)
    t_submit = time.time()
    res = start_tasks(agent, job_id, n, a)
    res["plugin_rss_kb_before"] = rss_before
    n = res["tasks"]
    if a.step:
        # Several registrations: each task from its allocation's creation.
        starts = sorted(s for x in agent.allocs(job_id) if x["DesiredStatus"] == "run"
                        for s in alloc_start_times_own(x))
    else:
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
    res["mem_available_kb"] = mem_available_kb()
    res.update(census(agent, n))
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
    if a.perf:
        perf_plugin(plugin, a.perf, a.perf_out)
        res["perf_data"] = a.perf_out
    if a.strace:
        calls = strace_plugin(plugin, a.strace)
        res["strace_s"] = a.strace
        res["syscalls_per_task_s"] = sum(calls.values()) / (n * a.strace)
        res["syscalls_top"] = dict(sorted(calls.items(), key=lambda kv: -kv[1])[:8])
    if a.hold:
        print(f"holding {a.hold:.0f} s: plugin pid {plugin}", flush=True)
        time.sleep(a.hold)
    if "restart" not in a.skip:
        res.update(restart_run(agent, job_id, n, set(h["shim"])))
    alloc_ids = [x["ID"] for x in agent.allocs(job_id)]
    if "stop" not in a.skip:
        procs = payload_procs(agent) + [nm.proc_info(p) for p in bench.helpers(agent)["shim"]]
        procs = [p for p in procs if p]
        res.update(timed_stop(agent, job_id, procs))
        # Nomad keeps the dirs (and mounts) of terminal allocations until its GC: run it.
        res.update(collect_garbage(agent, alloc_ids))
        res["left_cgroups"] = cgroup_leftovers(alloc_ids)
        res["left_mounts"] = mount_leftovers(agent.base)
        # The running plugin's own notify socket is not a task's leftover (it removes it
        # when it exits; what is left after the agent stops is checked at the end).
        live = f"notify-{bench.plugin_pid(agent)}.sock"
        res["left_runtime_entries"] = [
            e for e in sorted(os.listdir(agent.runtime_dir)) if e != live
        ] if os.path.isdir(agent.runtime_dir) else []
    else:
        # Unmeasured, but stopped: shims and tasks outlive the agent by design, so a run that
        # skipped the stop would leave N tasks running on the machine.
        agent.stop_job(job_id, wait=False)
        agent.wait_allocs(job_id, lambda al: all(x["ClientStatus"] in nm.TERMINAL_CLIENT
                                                 for x in al), timeout=900, what="stopped")
    return res


def disk_usage(dirs: list[str]) -> dict:
    """Disk the given dirs take, by real blocks. `du -sk` counts each inode once, however many
    hard links it has in the dirs, but counts an inode linked from outside too (exec's chroot
    hard-links the host's /usr, /etc... files). From lstat's st_blocks: the blocks of every
    inode once, and the blocks only these dirs hold (directories, and files none of whose links
    is outside them: st_nlink = the links seen here), i.e. what deleting them frees."""
    du = subprocess.run(["du", "-sk", "-c", *dirs], capture_output=True, text=True).stdout
    tot = du.strip().splitlines()[-1].split() if du.strip() else ["0"]
    seen: dict[tuple[int, int], list] = {}
    entries = dirs_n = 0
    stack = list(dirs)
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                entries += 1
                key = (st.st_dev, st.st_ino)
                if e.is_dir(follow_symlinks=False):
                    dirs_n += 1
                    stack.append(e.path)
                    seen[key] = [st.st_blocks, 1, 1]  # a directory has no other link
                    continue
                rec = seen.setdefault(key, [st.st_blocks, st.st_nlink, 0])
                rec[2] += 1
    own = [r for r in seen.values() if r[2] >= r[1]]
    return {"du_kb": int(tot[0]), "entries": entries, "dirs": dirs_n, "inodes": len(seen),
            "inodes_own": len(own),
            "blocks_kb": sum(r[0] for r in seen.values()) // 2,
            "blocks_own_kb": sum(r[0] for r in own) // 2}


def run_peer(agent, driver: str, n: int) -> dict:
    """N idle tasks of `driver` (elide or exec), the same stand-in and app: start-all time,
    helper and payload memory per task, disk of the allocation dirs, stop, leftovers."""
    job_id = f"peer-{driver}-{n}"
    t_submit = time.time()
    t0 = time.monotonic()
    agent.run_job(scale_job(job_id, driver, n))
    all_running(agent, job_id, n, timeout=1800)
    res: dict = {"driver": driver, "tasks": n, "start_all_s": time.monotonic() - t0}
    starts = sorted(alloc_start_times(agent, job_id, t_submit))
    res["start_median_s"] = statistics.median(starts) if starts else 0
    res["start_max_s"] = max(starts) if starts else 0
    time.sleep(5)  # the stats streams of all tasks are up
    h = bench.helpers(agent)
    kinds = ("shim", "init") if driver == "elide" else ("executor", "logmon")
    hp = [p for k in kinds for p in h[k]]
    res["helpers"] = {k: len(h[k]) for k in kinds}
    hm = [smaps(p) for p in hp]
    res["helper_pss_kb_per_task"] = sum(m.get("Pss", 0) for m in hm) / n
    res["helper_rss_kb_per_task"] = sum(m.get("VmRSS", 0) for m in hm) / n
    if driver == "elide":
        res["plugin_rss_kb"] = smaps(bench.plugin_pid(agent)).get("VmRSS", 0)
    payload = payload_procs(agent)
    res["payload_procs"] = len(payload)
    res["payload_pss_kb_per_task"] = sum(smaps(p.pid).get("Pss", 0) for p in payload) / n
    alloc_ids = [x["ID"] for x in agent.allocs(job_id)]
    t1 = time.monotonic()
    res["disk"] = disk_usage([os.path.join(agent.data_dir, "alloc", x) for x in alloc_ids])
    res["disk_walk_s"] = time.monotonic() - t1
    procs = [p for p in payload + [nm.proc_info(p) for p in hp] if p]
    res.update(timed_stop(agent, job_id, procs))
    res.update(collect_garbage(agent, alloc_ids))
    res["left_cgroups"] = cgroup_leftovers(alloc_ids)
    res["left_mounts"] = mount_leftovers(agent.base)
    return res


def restart_peer_run(agent, driver: str, n: int) -> dict:
    """N idle tasks of `driver` (elide or raw_exec, the same stand-in and app), the agent
    SIGKILLed and started again, and the seconds until every task's stats endpoint answers
    (polled from the start, as `restart_api_s`), with the CPU the new agent spent in it; then
    stopped and collected. Nomad's own driver gives the cost of its restore on this node."""
    job_id = f"restart-{driver}-{n}"
    agent.run_job(scale_job(job_id, driver, n))
    all_running(agent, job_id, n, timeout=900)
    alloc_ids = [x["ID"] for x in agent.allocs(job_id) if x["ClientStatus"] == "running"]
    t0 = time.monotonic()
    agent.kill()
    agent.start()
    res = {"driver": driver, "tasks": n, "restart_api_s": stats_answered(agent, alloc_ids, t0),
           "restart_cpu_nomad_s": process_cpu_ns(agent.proc.pid) / 1e9}
    all_running(agent, job_id, n, timeout=600)
    agent.stop_job(job_id, wait=False)
    agent.wait_allocs(job_id, lambda al: all(x["ClientStatus"] in nm.TERMINAL_CLIENT for x in al),
                      timeout=900, what="stopped")
    res.update(collect_garbage(agent, alloc_ids))
    return res


def peer_ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}x" if b else "-"


def print_peers(e: dict, x: dict) -> None:
    n = e["tasks"]
    de, dx = e["disk"], x["disk"]
    mib = lambda kb: f"{kb / 1024:.2f} MiB"  # noqa: E731
    rows = [
        ("submit -> all running", f"{e['start_all_s']:.1f} s", f"{x['start_all_s']:.1f} s",
         e["start_all_s"], x["start_all_s"]),
        ("slowest task's start", f"{e['start_max_s']:.1f} s", f"{x['start_max_s']:.1f} s",
         e["start_max_s"], x["start_max_s"]),
        ("helper Pss per task", mib(e["helper_pss_kb_per_task"]),
         mib(x["helper_pss_kb_per_task"]), e["helper_pss_kb_per_task"],
         x["helper_pss_kb_per_task"]),
        ("helper VmRSS per task", mib(e["helper_rss_kb_per_task"]),
         mib(x["helper_rss_kb_per_task"]), e["helper_rss_kb_per_task"],
         x["helper_rss_kb_per_task"]),
        ("payload Pss per task", mib(e["payload_pss_kb_per_task"]),
         mib(x["payload_pss_kb_per_task"]), e["payload_pss_kb_per_task"],
         x["payload_pss_kb_per_task"]),
        ("alloc dirs: blocks only they hold / task", mib(de["blocks_own_kb"] / n),
         mib(dx["blocks_own_kb"] / n), de["blocks_own_kb"], dx["blocks_own_kb"]),
        (f"all {n} alloc dirs: du -sk (each inode once)", mib(de["du_kb"]), mib(dx["du_kb"]),
         de["du_kb"], dx["du_kb"]),
        ("alloc dirs: inodes only they hold / task", f"{de['inodes_own'] / n:.0f}",
         f"{dx['inodes_own'] / n:.0f}", de["inodes_own"], dx["inodes_own"]),
        ("alloc dirs: entries / task", f"{de['entries'] / n:.0f}", f"{dx['entries'] / n:.0f}",
         de["entries"], dx["entries"]),
        ("job stop -> every process gone", f"{e['stop_gone_s']:.1f} s",
         f"{x['stop_gone_s']:.1f} s", e["stop_gone_s"], x["stop_gone_s"]),
        ("client GC -> alloc dirs removed", f"{e['gc_s']:.1f} s", f"{x['gc_s']:.1f} s",
         e["gc_s"], x["gc_s"]),
    ]
    print(f"\n== {n} idle tasks: Elide against Nomad's exec driver (same agent, same run) ==")
    print(f"  {'':44} {'elide':>12} {'exec':>12} {'elide/exec':>11}")
    for k, ve, vx, a, b in rows:
        print(f"  {k:44} {ve:>12} {vx:>12} {peer_ratio(a, b):>11}")
    for r in (e, x):
        print(f"  {r['driver']}: helpers {r['helpers']}, {r['payload_procs']} payload processes, "
              f"{r['stop_left']} left after the stop, {len(r['left_alloc_dirs'])} alloc dirs, "
              f"{len(r['left_cgroups'])} cgroups, {len(r['left_mounts'])} mounts left after GC")


def print_table(r: dict) -> None:
    n = r["tasks"]
    f = r.get("plugin_fds", {})
    rows = [
        ("submit -> all running", f"{r['start_all_s']:.1f} s (median start "
         f"{r['start_median_s']:.1f} s, slowest {r['start_max_s']:.1f} s = "
         f"{r['start_max_s'] / max(r['start_median_s'], 1e-9):.1f}x median; "
         f"{r['allocs_failed']} allocations failed and were replaced)"),
        ("  CPU spent in it", f"node {r.get('start_cpu_node_s', 0):.1f} s of "
         f"{r['start_all_s'] * (os.cpu_count() or 1):.1f} s: Nomad "
         f"{r.get('start_cpu_nomad_s', 0):.1f} s, plugin {r.get('start_cpu_plugin_s', 0):.1f} s,"
         " the rest shims, sandboxes, payloads, kernel and this bench; "
         f"{r.get('start_steal_s', 0):.1f} s stolen by the hypervisor"),
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
                     f"(Nomad has every task's stats stream open again; "
                     f"{r['restart_shims_replaced']} shims replaced; CPU spent: Nomad "
                     f"{r.get('restart_cpu_nomad_s', 0):.1f} s, plugin "
                     f"{r.get('restart_cpu_plugin_s', float('nan')):.2f} s"
                     + (f", the server agent {r['restart_cpu_server_s']:.1f} s"
                        if "restart_cpu_server_s" in r else "") + ")"))
        if "restart_api_s" in r:
            rows.append(("  again: -> every stats endpoint answers", f"{r['restart_api_s']:.1f} s "
                         "(a second kill; GET /v1/client/allocation/:id/stats of each, 16 at "
                         "a time, from the start)"))
    if "restart_reattached_s" in r:
        rows.append(("  plugin: kill -9 -> last reattach", f"{r['restart_reattached_s']:.1f} s "
                     f"({r['restart_reattached']} RecoverTasks answered within "
                     f"{r['restart_reattach_span_s']:.1f} s of the first)"))
    if "stop_api_s" in r:
        rows.append(("job stop -> nothing left", f"{r['stop_gone_s']:.1f} s (allocations terminal "
                     f"{r['stop_api_s']:.1f} s; {r['stop_left']} processes left; after "
                     f"Nomad's GC ({r['gc_s']:.1f} s): {len(r['left_alloc_dirs'])} alloc dirs, "
                     f"{len(r['left_cgroups'])} cgroups, {len(r['left_mounts'])} mounts, "
                     f"{len(r['left_runtime_entries'])} runtime dir entries)"))
    rows.append(("Nomad client RSS", f"{r['client_rss_kb'] / 1024:.0f} MiB"))
    if "threads_per_task" in r:
        rows.append(("threads (pids) per task", f"{r['threads_per_task']:.2f} (shims "
                     f"{r['threads_shim']}, PID 1s {r['threads_sandbox_init']}, payload "
                     f"{r['threads_payload']} in {r['procs_payload']} processes); plugin "
                     f"{r['threads_plugin']}, Nomad {r['threads_nomad']}; node "
                     f"{r['threads_node']} of pid_max {r['pid_max']}"))
        rows.append(("payload Pss / private per task", f"{r['payload_pss_kb_per_task'] / 1024:.1f}"
                     f" / {r['payload_private_kb_per_task'] / 1024:.1f} MiB"))
        rows.append(("node MemAvailable", f"{r['mem_available_kb_before'] / 1048576:.1f} GiB "
                     f"before, {r['mem_available_kb'] / 1048576:.1f} GiB with the tasks"))
    if r.get("tasks_requested", n) != n or r.get("limit"):
        rows.append(("tasks requested / reached", f"{r['tasks_requested']} / {n}: "
                     f"{r.get('limit') or 'all'}"))
    if len(r.get("steps", [])) > 1:
        rows.append(("steps", ", ".join(f"{st['count']} ({st['start_s']:.0f} s)"
                                        for st in r["steps"])))
    print(f"\n== {n} Elide tasks on one client ==")
    for k, v in rows:
        print(f"  {k:34} {v}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, nargs="*", default=[1000],
                    help="N Elide tasks (several: one run each; none: no such run)")
    ap.add_argument("--idle", type=float, default=60, help="seconds of idle CPU measurement")
    ap.add_argument("--strace", type=float, default=0, help="seconds of strace -c on the plugin")
    ap.add_argument("--perf", type=float, default=0,
                    help="seconds of `perf record -g` on the plugin after the idle window")
    ap.add_argument("--hold", type=float, default=0,
                    help="seconds to wait after the idle figures (to inspect the plugin)")
    ap.add_argument("--perf-out", default="perf.data", help="where --perf writes")
    ap.add_argument("--skip", default="", help="comma-separated: restart,stop")
    ap.add_argument("--exec-tasks", type=int, default=0,
                    help="N tasks of Nomad's exec driver side by side with N Elide tasks")
    ap.add_argument("--step", type=int, default=0,
                    help="rise to --tasks in steps of this many tasks while memory allows")
    ap.add_argument("--mem-floor", type=int, default=3072,
                    help="MiB of MemAvailable a step must leave (half of it: stop adding)")
    ap.add_argument("--payload", choices=("standin", "sleep"), default="standin",
                    help="what `elide` the Elide tasks run: the stand-in (a Python interpreter "
                    "running the app, the default) or a shell script that execs sleep")
    ap.add_argument("--app-via", choices=("template", "artifact"), default="template",
                    help="how each task gets local/app.py: a `template` (the default) or an "
                    "`artifact` fetched from the bench over HTTP (a restarted agent starts a "
                    "template's runner again, not a fetched artifact's)")
    ap.add_argument("--restart-peer-tasks", type=int, default=0,
                    help="N tasks of Elide, then N of Nomad's raw_exec (same stand-in, same "
                    "agent): agent kill -9 -> every stats endpoint answers, side by side")
    ap.add_argument("--profile-restart", type=float, default=0, metavar="SECONDS",
                    help="`perf record -g` of the agent over SECONDS from its restart (the "
                    "first kill), written to --profile-out")
    ap.add_argument("--profile-out", default="restart.perf.data",
                    help="where --profile-restart writes")
    ap.add_argument("--topology", choices=("one-agent", "split"), default="one-agent",
                    help="one-agent: one agent is server and client (the default); split: "
                    "the server in an agent of its own, as in production, so the restart "
                    "(kill -9 of the client agent) is the client's work alone")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    global PROFILE_RESTART, SERVER
    if a.profile_restart:
        PROFILE_RESTART = (a.profile_restart, os.path.abspath(a.profile_out))
    a.skip = set(filter(None, a.skip.split(",")))
    bins = nm.build_workspace()
    base = tempfile.mkdtemp(prefix="nde-scale-")
    # --topology split: the server in an agent of its own (as in production), so a restart
    # of the client agent is the client's work alone (the node's 2 cores still share them).
    server = server_base = None
    if a.topology == "split":
        server_base = tempfile.mkdtemp(prefix="nde-scale-server-")
        server = nm.NomadAgent(nm.find_nomad(), server_base, plugin_bin=None, executor_bin=None,
                               name="scale-server", mode="server", log_level="INFO")
    agent = nm.NomadAgent(nm.find_nomad(), os.path.join(base, "a"), plugin_bin=bins["plugin"],
                          executor_bin=bins["executor"], name="scale",
                          mode="client" if server else "persistent",
                          servers=[f"127.0.0.1:{server.rpc_port}"] if server else None,
                          client_hcl=CLIENT_HCL, log_level="INFO",
                          extra_hcl=bench.RAW_EXEC_HCL if a.restart_peer_tasks else "")
    agent.plugin_config = agent.default_plugin_config()
    if a.payload == "sleep":
        inst = os.path.join(base, "elide-sleep")
        os.makedirs(inst)
        path = os.path.join(inst, "elide")
        with open(path, "w") as f:
            f.write(SLEEP_ELIDE)
        os.chmod(path, 0o755)
        agent.plugin_config["elide_binary"] = path
    global APP_URL
    app_dir = None
    if a.app_via == "artifact":
        APP_URL, app_dir = serve_app()
    out: dict = {"payload": a.payload, "app_via": a.app_via, "topology": a.topology,
                 "elide": [], "peers": [],
                 "core_speed_ms_before": core_speed_ms()}
    print(f"core speed: {out['core_speed_ms_before']:.0f} ms of CPU for the fixed loop "
          "(lower is faster; compare runs by it)", flush=True)
    # SIGTERM (`timeout`, a CI runner) ends the run through the clean-up below, not around it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    SERVER = server
    try:
        if server:
            server.start()
        agent.start()
        agent.wait_driver_healthy()
        if a.restart_peer_tasks:
            agent.wait_driver_healthy("raw_exec")
            e = restart_peer_run(agent, "elide", a.restart_peer_tasks)
            x = restart_peer_run(agent, "raw_exec", a.restart_peer_tasks)
            out["peers"] += [e, x]
            print(f"\n== agent kill -9 -> every stats endpoint answers, {e['tasks']} tasks, same "
                  f"agent ==\n  elide {e['restart_api_s']:.1f} s (Nomad's CPU "
                  f"{e['restart_cpu_nomad_s']:.1f} s); raw_exec {x['restart_api_s']:.1f} s "
                  f"(Nomad's CPU {x['restart_cpu_nomad_s']:.1f} s): elide/raw_exec "
                  f"{peer_ratio(e['restart_api_s'], x['restart_api_s'])}; left after the GC: "
                  f"{len(e['left_alloc_dirs'])} / {len(x['left_alloc_dirs'])} alloc dirs")
            sys.stdout.flush()
        if a.exec_tasks:
            agent.wait_driver_healthy("exec")
            e = run_peer(agent, "elide", a.exec_tasks)
            x = run_peer(agent, "exec", a.exec_tasks)
            out["peers"] += [e, x]
            print_peers(e, x)
            sys.stdout.flush()
        for n in a.tasks:
            r = run_elide(agent, n, a)
            out["elide"].append(r)
            print_table(r)
            sys.stdout.flush()
    finally:
        bench.leave_nothing(agent, base)
        if server:
            server.stop()
            shutil.rmtree(server_base, ignore_errors=True)
        if app_dir:
            shutil.rmtree(app_dir, ignore_errors=True)
        out["core_speed_ms_after"] = core_speed_ms()
        print(f"core speed after: {out['core_speed_ms_after']:.0f} ms", flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
