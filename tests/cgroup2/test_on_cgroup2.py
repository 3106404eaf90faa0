"""What cgroup v2 changes, on a real v2 kernel, through a real Nomad 1.6.1 agent: the files the
limits land in, OOM kills read from `memory.events`, reserved cores as the task's
`cpuset.cpus.effective`, and a crashed shim's task cgroup emptied with `cgroup.kill`.

Run by scripts/test-cgroup2 inside the VM lane (tests/cgroup2/guest.sh); on a host whose
/sys/fs/cgroup is not cgroup2fs every test fails (never skipped: this module exists to prove v2).
"""
import os
import signal
import subprocess

import pytest

import nomad as nm

ROOT = nm.CGROUP_ROOT


@pytest.fixture(autouse=True)
def _on_cgroup2():
    fs = subprocess.run(["stat", "-f", "-c", "%T", ROOT], capture_output=True, text=True).stdout
    assert fs.strip() == "cgroup2fs", f"{ROOT} is {fs.strip()!r}, not cgroup2fs: run scripts/test-cgroup2"


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def keyed(text: str, key: str) -> int:
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v)
    raise AssertionError(f"no {key} in {text!r}")


def shares_to_weight(shares: int) -> int:
    s = min(max(shares, 2), 262144)
    return 1 + ((s - 2) * 9999) // 262142


def row_of(agent, alloc_id: str) -> dict:
    return next(r for r in nm.executor_status(agent) if r["alloc_id"] == alloc_id)


def task_cgroup(row: dict) -> str:
    dirs = row["cgroup"].split(",")
    assert len(dirs) == 1 and dirs[0].startswith(ROOT + "/"), f"one v2 cgroup expected: {dirs}"
    return dirs[0]


def cgroup_of(pid: int) -> str:
    lines = read(f"/proc/{pid}/cgroup").splitlines()
    assert len(lines) == 1 and lines[0].startswith("0::"), lines  # v2 only: one line
    return ROOT + lines[0][3:]


def status_field(pid: int, name: str) -> str:
    for line in read(f"/proc/{pid}/status").splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(name)


SLEEPER = "import time\nwhile True:\n    time.sleep(1)\n"


def start(agent, name, script, **kw):
    job = agent.run_job(nm.elide_job(name, script, group=nm.NO_RESTART, **kw))
    alloc = agent.first_alloc(job["ID"])
    agent.wait_task(alloc["ID"], "t", "running")
    return job, alloc


def test_limits_land_in_the_v2_files_of_the_scope_nomad_made(shared_agent):
    agent = shared_agent
    job, alloc = start(agent, "v2limits", SLEEPER, cpu=500, memory=64,
                       config="pids_limit = 64")
    row = row_of(agent, alloc["ID"])
    d = task_cgroup(row)
    # Nomad 1.6.1 on v2 makes nomad.slice/<alloc>.<task>.scope and passes it: adopted.
    assert os.path.basename(d) == f"{alloc['ID']}.t.scope", d
    assert read(f"{d}/memory.max") == str(64 << 20)
    assert read(f"{d}/memory.swap.max") == "0"
    assert int(read(f"{d}/cpu.weight")) == shares_to_weight(500)
    assert read(f"{d}/pids.max") == "64"
    procs = [int(p) for p in read(f"{d}/cgroup.procs").split()]
    assert row["runtime_pid"] in procs
    assert row["shim_pid"] not in procs, "the shim must not be charged to the task"
    assert cgroup_of(row["runtime_pid"]) == d


def test_memory_max_sets_memory_low_to_the_reservation(shared_agent):
    agent = shared_agent
    # memory_max needs memory oversubscription enabled in the scheduler.
    cfg = agent.api.get("/v1/operator/scheduler/configuration")["SchedulerConfig"]
    cfg["MemoryOversubscriptionEnabled"] = True
    agent.api.put("/v1/operator/scheduler/configuration", cfg)
    hcl = nm.elide_job("v2low2", SLEEPER, group=nm.NO_RESTART, memory=64).replace(
        "memory = 64", "memory = 64\n        memory_max = 160")
    assert "memory_max = 160" in hcl
    job = agent.run_job(hcl)
    alloc = agent.first_alloc(job["ID"])
    agent.wait_task(alloc["ID"], "t", "running")
    d = task_cgroup(row_of(agent, alloc["ID"]))
    assert read(f"{d}/memory.max") == str(160 << 20)
    assert read(f"{d}/memory.low") == str(64 << 20)


HOG = """
chunks = []
for i in range(64):
    chunks.append(bytearray(8 * 1024 * 1024))
    print(f"allocated {8 * (i + 1)} MiB", flush=True)
print("survived", flush=True)
"""


def test_an_oom_kill_is_read_from_memory_events_and_reported_as_on_v1(shared_agent):
    agent = shared_agent
    job = agent.run_job(nm.elide_job("v2oom", HOG, group=nm.NO_RESTART, memory=48,
                                     jtype="batch"))
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    assert ts["Failed"], nm.describe_task(ts)
    term = [e for e in ts["Events"] if e["Type"] == "Terminated"][-1]
    assert term["Details"].get("oom_killed") == "true", term
    out = agent.cli("alloc", "status", alloc["ID"]).stdout
    assert "OOM killed: the task exceeded its memory limit of 48 MiB" in out, out
    assert "survived" not in agent.logs(alloc["ID"], "t")


def test_cores_1_is_the_tasks_cpuset_cpus_effective(shared_agent):
    agent = shared_agent
    hcl = nm.elide_job("v2cores", SLEEPER, group=nm.NO_RESTART).replace(
        "cpu    = 100", "cores  = 1")
    assert "cores  = 1" in hcl
    job = agent.run_job(hcl)
    alloc = agent.first_alloc(job["ID"])
    agent.wait_task(alloc["ID"], "t", "running")
    row = row_of(agent, alloc["ID"])
    d = task_cgroup(row)
    effective = read(f"{d}/cpuset.cpus.effective")
    assert effective in ("0", "1"), f"one reserved core expected, got {effective!r}"
    rt = nm.runtime_of(row["runtime_pid"])
    for pid in (row["runtime_pid"], rt.pid):
        assert status_field(pid, "Cpus_allowed_list") == effective, pid


def test_a_killed_shims_scope_is_emptied_and_nothing_is_left(nomad_agent):
    agent = nomad_agent(mode="persistent", name="v2shimkill")
    agent.wait_driver_healthy()
    job = agent.run_job(nm.elide_job(
        "v2seq", "import os, time\nif os.fork() == 0:\n    os.setsid()\n"
        "while True:\n    time.sleep(1)\n",
        group='restart {\n  attempts = 2\n  delay = "1s"\n  mode = "fail"\n}'))
    alloc = agent.first_alloc(job["ID"])
    agent.wait_task(alloc["ID"], "t", "running")
    row = row_of(agent, alloc["ID"])
    d = task_cgroup(row)
    inside = [int(p) for p in read(f"{d}/cgroup.procs").split()]
    assert len(inside) >= 2, f"the app and its detached child: {inside}"
    old = [nm.proc_info(p) for p in inside]
    # The agent restarts (graceful) and the task is recovered in place ...
    agent.restart()
    agent.wait_driver_healthy()
    assert row_of(agent, alloc["ID"])["runtime_pid"] == row["runtime_pid"]
    # ... then its shim dies: every process of the old run is killed through the cgroup
    # (cgroup.kill), the detached child included, and the task restarts.
    os.kill(row["shim_pid"], signal.SIGKILL)
    assert not nm.wait_gone([p for p in old if p], 20), "processes outlived the killed shim"
    ts = agent.wait_task(alloc["ID"], "t", "running", pred=lambda t: t["Restarts"] >= 1)
    rows = [r for r in nm.executor_status(agent) if r["alloc_id"] == alloc["ID"]
            and r["state"] == "running"]
    assert len(rows) == 1 and rows[0]["runtime_pid"] != row["runtime_pid"], rows
    agent.stop_job(job["ID"])
    agent.wait_alloc_stopped(alloc["ID"])
    # Nothing under any cgroup of this allocation, no cgroup of ours left.
    for top, _, _ in os.walk(ROOT):
        if alloc["ID"] in top:
            assert read(f"{top}/cgroup.procs") == "", f"processes left in {top}"
    ours = f"{ROOT}/elide.slice"
    if os.path.isdir(ours):
        assert [x for x in os.listdir(ours) if os.path.isdir(f"{ours}/{x}")] == []
