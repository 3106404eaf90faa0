"""Nomad 1.7 → 2.0's cgroup layouts, made as its client makes them, on a real kernel.

Nomad >= 1.7's client creates a task's cgroups before StartTask and passes the path in
`LinuxResources.cpuset_cgroup` (docs/executor.md, "Cgroups"; platform-and-security.md):

- v2: `<parent>.slice/{share,reserve}.slice/<alloc>.<task>.scope`, `+cpuset +cpu +io +memory
  +pids` enabled down to it; the executor writes the limits and the scope's `cpuset.cpus`.
- v1: `{cpu,memory,freezer}/<parent>/<alloc>.<task>` and the cpuset `cpuset/<parent>/share`
  (shared cores) or `cpuset/<parent>/reserve/<alloc>.<task>` (`cgroup.clone_children` 0,
  only `cpuset.mems` copied: the executor writes `cpuset.cpus`, or joining fails ENOSPC).

At stop the client writes `cgroup.kill` (v2), removes the task's cgroups and gives the
reserved cores back (rewrites the reserve partition's `cpuset.cpus`; hashicorp/nomad#23405:
a process left behind makes that fail). This harness makes exactly those layouts (under its own
parent name, so it never meets a real agent's `nomad`), drives the plugin binary through
StartTask / InspectTask / TaskStats / StopTask / WaitTask / DestroyTask with the fields 2.0.5
sends (the go-plugin client of tests/compat/test_nomad2_protocol.py), then tears down as the
client does. It runs on this host's cgroup v1 (`scripts/test cgroup2` runs it here) and on
a real cgroup v2 kernel in the VM lane (scripts/test-cgroup2).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import uuid

import grpc
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "compat"))

# The 2.0 agent stand-in: generated client, plugin process, helpers (fixtures pb, plugins,
# workdir are used by name below).
from test_nomad2_protocol import (  # noqa: E402,F401
    RPC_TIMEOUT, TASK_TIMEOUT, alive, pb, plugins, task_config, wait_for, workdir)

ROOT = "/sys/fs/cgroup"
V2 = os.path.exists(os.path.join(ROOT, "cgroup.controllers"))


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def write(path: str, value: str):
    with open(path, "w") as f:
        f.write(value)


def cpus_of(text: str) -> set[int]:
    out: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def online() -> set[int]:
    return cpus_of(read("/sys/devices/system/cpu/online"))


class Layout:
    """The cgroups Nomad >= 1.7's client makes for one task, and its teardown."""

    def __init__(self, alloc_task: str, reserved: str):
        self.parent = f"nde-layout-{uuid.uuid4().hex[:8]}"
        self.alloc_task = alloc_task
        self.reserved = reserved  # "" = shared cores
        cores = sorted(online())
        assert len(cores) >= 2, "the layouts need two cores (one shared, one reserved)"
        self.share_cpus, self.reserve_cpus = str(cores[0]), ",".join(map(str, cores[1:]))
        self.made: list[str] = []  # every dir made, in creation order
        if V2:
            self._v2()
        else:
            self._v1()

    def _mkdir(self, path: str):
        os.mkdir(path)
        self.made.append(path)

    def _v2(self):
        ctl = "+cpuset +cpu +io +memory +pids"
        have = set(read(f"{ROOT}/cgroup.controllers").split())
        missing = {"cpuset", "cpu", "io", "memory", "pids"} - have
        assert not missing, f"this cgroup v2 root lacks {missing}"
        for c in ctl.split():
            write(f"{ROOT}/cgroup.subtree_control", c)
        self.top = f"{ROOT}/{self.parent}.slice"
        self._mkdir(self.top)
        for c in ctl.split():
            write(f"{self.top}/cgroup.subtree_control", c)
        self.share = f"{self.top}/share.slice"
        self.reserve = f"{self.top}/reserve.slice"
        for part, cpus in ((self.share, self.share_cpus), (self.reserve, self.reserve_cpus)):
            self._mkdir(part)
            write(f"{part}/cpuset.cpus", cpus)
            for c in ctl.split():
                write(f"{part}/cgroup.subtree_control", c)
        part = self.reserve if self.reserved else self.share
        self.scope = f"{part}/{self.alloc_task}.scope"
        self._mkdir(self.scope)
        self.cpuset_cgroup = self.scope
        self.task_dirs = {"memory": self.scope, "cpu": self.scope, "pids": self.scope}

    def _v1(self):
        for c in ("cpu", "memory", "freezer", "cpuset"):
            assert os.path.isdir(f"{ROOT}/{c}"), f"no v1 {c} hierarchy at {ROOT}/{c}"
        for c in ("cpu", "memory", "freezer"):
            self._mkdir(f"{ROOT}/{c}/{self.parent}")
            self._mkdir(f"{ROOT}/{c}/{self.parent}/{self.alloc_task}")
        top = f"{ROOT}/cpuset/{self.parent}"
        mems = read(f"{ROOT}/cpuset/cpuset.mems")
        self._mkdir(top)
        write(f"{top}/cpuset.mems", mems)
        write(f"{top}/cpuset.cpus", read(f"{ROOT}/cpuset/cpuset.cpus"))
        self.share, self.reserve = f"{top}/share", f"{top}/reserve"
        for part, cpus in ((self.share, self.share_cpus), (self.reserve, self.reserve_cpus)):
            self._mkdir(part)
            write(f"{part}/cpuset.mems", mems)
            write(f"{part}/cpuset.cpus", cpus)
        if self.reserved:
            # As the client does: no inherited cpus, only the mems copied; cpus are the
            # executor's to write.
            write(f"{self.reserve}/cgroup.clone_children", "0")
            self.cpuset_cgroup = f"{self.reserve}/{self.alloc_task}"
            self._mkdir(self.cpuset_cgroup)
            write(f"{self.cpuset_cgroup}/cpuset.mems", mems)
            assert read(f"{self.cpuset_cgroup}/cpuset.cpus") == ""
        else:
            self.cpuset_cgroup = self.share
        self.task_dirs = {c: f"{ROOT}/{c}/{self.parent}/{self.alloc_task}"
                          for c in ("cpu", "memory", "freezer")}

    def task_cgroups(self) -> list[str]:
        """What the client removes at stop (the task's own, not the partitions)."""
        if V2:
            return [self.scope]
        out = list(self.task_dirs.values())
        if self.reserved:
            out.append(self.cpuset_cgroup)
        return out

    def teardown_as_nomad(self) -> list[str]:
        """The client's stop: cgroup.kill (v2), rmdir the task's cgroups, give the reserved
        cores back. Returns what failed (anything the driver left in the way)."""
        problems = []
        if V2:
            write(f"{self.scope}/cgroup.kill", "1")
        for d in self.task_cgroups():
            try:
                os.rmdir(d)
                self.made.remove(d)
            except OSError as e:
                procs = read(f"{d}/cgroup.procs") if os.path.exists(d) else ""
                kids = [k for k in os.listdir(d) if os.path.isdir(os.path.join(d, k))] \
                    if os.path.isdir(d) else []
                problems.append(f"rmdir {d}: {e} (procs {procs.split()}, child cgroups {kids})")
        try:  # nomad#23405: the reserve partition's cpus rewritten once the task is gone
            write(f"{self.reserve}/cpuset.cpus", self.reserve_cpus)
        except OSError as e:
            problems.append(f"rewriting {self.reserve}/cpuset.cpus: {e}")
        return problems

    def remove_all(self):
        for d in reversed(self.made):
            for _ in range(2):
                try:
                    if V2 and os.path.exists(f"{d}/cgroup.kill"):
                        write(f"{d}/cgroup.kill", "1")
                    os.rmdir(d)
                    break
                except OSError:
                    pass


def runtime_pids(state: dict) -> list[int]:
    """The runtime, and below the sandbox's namespace init the process it runs."""
    pid = state["runtime_pid"]
    out = [pid]
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        if f.read().startswith(b"elide-executor\0sandbox-init"):
            with open(f"/proc/{pid}/task/{pid}/children") as c:
                out += [int(x) for x in c.read().split()]
    return out


def cgroups_of(pid: int) -> dict[str, str]:
    """controller (v1) or "" (v2) -> the path of pid's cgroup."""
    out = {}
    for line in read(f"/proc/{pid}/cgroup").splitlines():
        _, ctls, path = line.split(":", 2)
        for c in (ctls.split(",") if ctls else [""]):
            out[c] = path
    return out


def status_field(pid: int, name: str) -> str:
    for line in read(f"/proc/{pid}/status").splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in /proc/{pid}/status")


APP = (
    "import time\n"
    "data = bytearray(24 * 1024 * 1024)\n"   # resident: TaskStats must see it
    "for i in range(0, len(data), 4096):\n"
    "    data[i] = 1\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    sum(range(20000))\n"                 # a little CPU for the cpu counters
    "    time.sleep(0.05)\n"
)


@pytest.mark.parametrize("cores", ["reserved", "shared"])
def test_nomad_17_layout_limits_cores_stats_and_a_teardown_nothing_blocks(
        pb, plugins, workdir, cores):
    d = pb.driver
    alloc_id = str(uuid.uuid4())
    alloc_task = f"{alloc_id}.web"
    alloc_dir = os.path.join(workdir, "alloc", alloc_id)
    task_dir = os.path.join(alloc_dir, "web")
    for sub in ("local", "secrets", "tmp"):
        os.makedirs(os.path.join(task_dir, sub))
    os.makedirs(os.path.join(alloc_dir, "alloc", "logs"))
    for stream in ("stdout", "stderr"):
        open(os.path.join(alloc_dir, "alloc", "logs", f"web.{stream}.0"), "w").close()
    with open(os.path.join(task_dir, "local", "app.py"), "w") as f:
        f.write(APP)
    os.chmod(os.path.join(task_dir, "local", "app.py"), 0o644)

    layout = Layout(alloc_task, reserved="yes" if cores == "reserved" else "")
    want_cpus = layout.reserve_cpus if cores == "reserved" else layout.share_cpus
    memory_mb, memory_max_mb, shares = 128, 256, 700
    task = d.TaskConfig(
        id=f"{alloc_id}/web/{uuid.uuid4().hex[:8]}",
        name="web",
        msgpack_driver_config=task_config(script="local/app.py"),
        env={"NOMAD_ALLOC_ID": alloc_id, "NOMAD_TASK_NAME": "web",
             "PATH": "/usr/local/bin:/usr/bin:/bin"},
        resources=d.Resources(
            allocated_resources=d.AllocatedTaskResources(
                cpu=d.AllocatedCpuResources(cpu_shares=shares),
                memory=d.AllocatedMemoryResources(memory_mb=memory_mb,
                                                  memory_max_mb=memory_max_mb)),
            # What 2.0.5's client fills in: the limits, the cores (reserved, or the shared
            # partition's), and the cgroup it made.
            linux_resources=d.LinuxResources(
                cpu_shares=shares, memory_limit_bytes=memory_max_mb << 20,
                cpuset_cpus=want_cpus, PercentTicks=0.1,
                cpuset_cgroup=layout.cpuset_cgroup)),
        alloc_dir=alloc_dir,
        stdout_path=os.path.join(alloc_dir, "alloc", "logs", "web.stdout.0"),
        stderr_path=os.path.join(alloc_dir, "alloc", "logs", "web.stderr.0"),
        task_group_name="group", job_name="job", job_id="job", alloc_id=alloc_id,
        namespace="default", node_name="node", node_id=str(uuid.uuid4()))

    p = plugins("layout")
    p.configure(plugins.config)
    handle = None
    try:
        started = p.driver.StartTask(d.StartTaskRequest(task=task), timeout=RPC_TIMEOUT)
        handle = started.handle
        assert handle.state == d.RUNNING, p.log()
        state = json.loads(handle.driver_state)
        out = os.path.join(alloc_dir, "alloc", "logs", "web.stdout.0")
        wait_for("the app to start", lambda: "ready" in read(out))

        # The app (and the sandbox's init) run in the client's cgroups, on the right cores;
        # the shim stays outside (whatever is in the scope dies with it at stop).
        pids = runtime_pids(state)
        for pid in pids:
            assert cpus_of(status_field(pid, "Cpus_allowed_list")) == cpus_of(want_cpus), \
                f"pid {pid} may run on {status_field(pid, 'Cpus_allowed_list')}, not {want_cpus}"
            cg = cgroups_of(pid)
            if V2:
                assert ROOT + cg[""] == layout.scope, cg
            else:
                for c, dir_ in layout.task_dirs.items():
                    assert ROOT + "/" + c + cg[c] == dir_, (c, cg)
                assert ROOT + "/cpuset" + cg["cpuset"] == layout.cpuset_cgroup, cg
        # The cgroups of its own the driver added (v1: cpuacct, pids), to be gone at the end.
        own = sorted({f"{ROOT}/{c}{path}" for c, path in cgroups_of(pids[0]).items()
                      if c in ("cpuacct", "pids") and "/nomad-elide/" in path})
        shim_cg = cgroups_of(state["shim_pid"])
        assert all(alloc_task not in path for path in shim_cg.values()), shim_cg

        # The limits are in the client's cgroups, not in cgroups of our own.
        if V2:
            s = layout.scope
            assert read(f"{s}/memory.max") == str(memory_max_mb << 20)
            assert read(f"{s}/memory.low") == str(memory_mb << 20)
            assert int(read(f"{s}/cpu.weight")) == 1 + ((shares - 2) * 9999) // 262142
            assert cpus_of(read(f"{s}/cpuset.cpus.effective")) == cpus_of(want_cpus)
        else:
            m, c = layout.task_dirs["memory"], layout.task_dirs["cpu"]
            assert read(f"{m}/memory.limit_in_bytes") == str(memory_max_mb << 20)
            assert read(f"{m}/memory.soft_limit_in_bytes") == str(memory_mb << 20)
            assert read(f"{c}/cpu.shares") == str(shares)
            if cores == "reserved":
                assert cpus_of(read(f"{layout.cpuset_cgroup}/cpuset.cpus")) == cpus_of(want_cpus)
            else:  # the shared partition is every task's: never rewritten by a driver
                assert read(f"{layout.share}/cpuset.cpus") == layout.share_cpus

        inspected = p.driver.InspectTask(d.InspectTaskRequest(task_id=task.id),
                                         timeout=RPC_TIMEOUT)
        assert inspected.task.state == d.RUNNING

        # TaskStats as the client streams it: the app's resident memory and some CPU.
        req = d.TaskStatsRequest(task_id=task.id)
        req.collection_interval.FromMilliseconds(200)
        stream = p.driver.TaskStats(req, timeout=TASK_TIMEOUT)
        seen, last = None, None
        try:
            for msg in stream:
                last = msg.stats.agg_resource_usage
                if last.memory.rss >= 20 << 20 and last.cpu.total_ticks > 0:
                    seen = last
                    break
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
        stream.cancel()
        assert seen is not None, f"TaskStats never showed the app's 24 MiB and its CPU: {last}"
        assert seen.memory.usage >= seen.memory.rss

        results = []
        waiter = threading.Thread(target=lambda: results.append(p.driver.WaitTask(
            d.WaitTaskRequest(task_id=task.id), timeout=TASK_TIMEOUT)))
        waiter.start()
        stop = d.StopTaskRequest(task_id=task.id, signal="SIGTERM")
        stop.timeout.FromSeconds(5)
        p.driver.StopTask(stop, timeout=RPC_TIMEOUT)
        waiter.join(TASK_TIMEOUT)
        assert results and results[0].result.exit_code == 143, results
        p.driver.DestroyTask(d.DestroyTaskRequest(task_id=task.id, force=True),
                             timeout=RPC_TIMEOUT)
        wait_for("the shim to leave", lambda: not alive(state["shim_pid"]), timeout=20)
        assert not any(alive(pid) for pid in pids)

        # Nothing the driver made is left, and nothing blocks the client's teardown.
        for dir_ in layout.task_cgroups():
            kids = [k for k in os.listdir(dir_) if os.path.isdir(os.path.join(dir_, k))]
            assert kids == [], f"the driver left child cgroups in {dir_}: {kids}"
            assert read(f"{dir_}/cgroup.procs") == "", f"processes left in {dir_}"
        assert V2 or own, "v1: the driver adds cpuacct and pids cgroups of its own"
        assert [o for o in own if os.path.exists(o)] == [], f"our own cgroups left: {own}"
        problems = layout.teardown_as_nomad()
        assert problems == [], problems
        assert p.exit() == 0
    finally:
        if handle is not None:
            st = json.loads(handle.driver_state or b"{}")
            for pid in (st.get("runtime_pid"), st.get("shim_pid")):
                if pid and alive(pid):
                    os.kill(pid, signal.SIGKILL)
        layout.remove_all()
