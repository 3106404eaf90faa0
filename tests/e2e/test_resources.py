"""Issue 5: cgroup limits, OOM reporting and real TaskStats (cgroup v1 on this machine)."""
import os
import time

import nomad as nm


def job_hcl(name: str, script: str, **kw) -> str:
    """A task that is never restarted (an OOM kill must stay the last word)."""
    return nm.elide_job(name, script, group=nm.NO_RESTART, **kw)


def row_of(agent, alloc_id: str) -> dict:
    return next(r for r in nm.executor_status(agent) if r["alloc_id"] == alloc_id)


def cgroup_dir(row: dict, controller: str) -> str:
    for d in row["cgroup"].split(","):
        if any(controller in part.split(",") for part in d.split("/")):
            return d
    raise AssertionError(f"no {controller} cgroup in {row['cgroup']!r}")


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def start(agent, name: str, script: str, **kw) -> dict:
    job = agent.run_job(job_hcl(name, script, **kw))
    alloc = agent.first_alloc(job["ID"])
    agent.wait_task(alloc["ID"], "t", "running")
    return alloc


HOG = """
import time
chunks = []
for i in range(64):
    chunks.append(bytearray(8 * 1024 * 1024))
    print(f"allocated {8 * (i + 1)} MiB", flush=True)
print("survived", flush=True)
"""


def test_memory_over_the_limit_is_oom_killed_and_reported(shared_agent):
    agent = shared_agent
    job = agent.run_job(job_hcl("oom", HOG, memory=64, jtype="batch"))
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    assert ts["Failed"], nm.describe_task(ts)
    term = [e for e in ts["Events"] if e["Type"] == "Terminated"][-1]
    # ExitResult.oom_killed reaches Nomad (1.6 keeps it in the event details) ...
    assert term["Details"].get("oom_killed") == "true", term
    # ... and a Driver event, shown by `nomad alloc status`, names the limit.
    out = agent.cli("alloc", "status", alloc["ID"]).stdout
    assert "OOM killed: the task exceeded its memory limit of 64 MiB" in out, out
    assert "survived" not in agent.logs(alloc["ID"], "t")


def test_memory_under_the_limit_is_not_oom(shared_agent):
    agent = shared_agent
    small = HOG.replace("range(64)", "range(2)")
    job = agent.run_job(job_hcl("nooom", small, memory=128, jtype="batch"))
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    assert not ts["Failed"], nm.describe_task(ts)
    term = [e for e in ts["Events"] if e["Type"] == "Terminated"][-1]
    assert term["Details"].get("oom_killed") != "true", term
    assert "survived" in agent.logs(alloc["ID"], "t")


def test_busy_task_shows_cpu_and_memory_idle_task_near_zero(shared_agent):
    agent = shared_agent
    busy = start(agent, "busy", "while True:\n    pass\n")
    idle = start(agent, "idle", "import time\nwhile True:\n    time.sleep(1)\n")

    def usage(alloc_id, pred, what):
        deadline = time.monotonic() + 60
        last = None
        while time.monotonic() < deadline:
            try:
                last = agent.api.get(f"/v1/client/allocation/{alloc_id}/stats")["ResourceUsage"]
            except nm.ApiError:
                last = None
            if last and pred(last):
                return last
            time.sleep(0.5)  # stats are sampled every second; nothing to await
        raise AssertionError(f"{what}: last {last}")

    u = usage(busy["ID"], lambda u: u["CpuStats"]["Percent"] > 30, "busy task CPU")
    assert u["CpuStats"]["TotalTicks"] > 0
    assert u["MemoryStats"]["RSS"] > 0 and "RSS" in u["MemoryStats"]["Measured"]
    assert "Percent" in u["CpuStats"]["Measured"]
    # The first samples may still hold the interpreter's start (on a loaded node it spreads
    # over more than one interval): an idle task is one whose samples settle near zero.
    u = usage(idle["ID"], lambda u: "Percent" in u["CpuStats"]["Measured"]
              and u["MemoryStats"]["RSS"] > 0 and u["CpuStats"]["Percent"] < 10,
              "idle task stats near zero CPU")
    assert u["CpuStats"]["Percent"] < 10, u["CpuStats"]
    # `nomad alloc status -stats` shows them too.
    out = agent.cli("alloc", "status", "-stats", busy["ID"]).stdout
    assert "CPU" in out and "Memory" in out, out


def test_cpu_shares_follow_cpu_and_the_shim_stays_outside_the_task_cgroup(shared_agent):
    agent = shared_agent
    sleeper = "import time\nwhile True:\n    time.sleep(1)\n"
    a = start(agent, "cpu500", sleeper, cpu=500, config="pids_limit = 64")
    b = start(agent, "cpu1000", sleeper, cpu=1000)
    ra, rb = row_of(agent, a["ID"]), row_of(agent, b["ID"])
    sa = int(read(os.path.join(cgroup_dir(ra, "cpu"), "cpu.shares")))
    sb = int(read(os.path.join(cgroup_dir(rb, "cpu"), "cpu.shares")))
    assert (sa, sb) == (500, 1000)
    assert read(os.path.join(cgroup_dir(ra, "pids"), "pids.max")) == "64"
    assert int(read(os.path.join(cgroup_dir(ra, "memory"), "memory.limit_in_bytes"))) == 64 << 20
    procs = [int(p) for p in read(os.path.join(cgroup_dir(ra, "memory"), "cgroup.procs")).split()]
    assert ra["runtime_pid"] in procs
    assert ra["shim_pid"] not in procs, "the shim must not be charged to the task's limit"
