"""Issue 4: tasks survive agent restarts (graceful and kill -9), plugin and shim crashes;
the elide-executor operator CLI. Real Nomad agent in persistent (non -dev) mode."""
import os
import re
import signal
import subprocess
import time

import pytest

import nomad as nm

SEQ_APP = """
import itertools, sys, time
for i in itertools.count():
    print(f"seq {i}", flush=True)
    time.sleep(0.1)
"""


def running_allocs(agent, job_id: str, n: int) -> list[dict]:
    allocs = agent.wait_allocs(
        job_id, lambda a: len([x for x in a if x["ClientStatus"] == "running"]) >= n and
        all((x.get("TaskStates") or {}).get("t", {}).get("State") == "running"
            for x in a if x["ClientStatus"] == "running"),
        timeout=120, what=f"{n} running allocations of {job_id}")
    return [a for a in allocs if a["ClientStatus"] == "running"]


def seqs(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"^seq (\d+)$", text, re.M)]


def plugin_pids(agent) -> list[int]:
    return [p.pid for p in agent.find_processes("nomad-driver-elide")
            if p.state not in ("Z", "X") and "plugins/nomad-driver-elide" in (p.cmdline or p.exe)]


def test_ten_tasks_survive_three_agent_restarts_without_losing_a_line(nomad_agent):
    agent = nomad_agent(mode="persistent", name="restarts")
    agent.wait_driver_healthy()
    job = agent.run_job(nm.elide_job("seq", SEQ_APP, count=10))
    allocs = running_allocs(agent, job["ID"], 10)
    for a in allocs:
        agent.wait_logs(a["ID"], "t", "seq 5")
    before = {r["alloc_id"]: r["runtime_pid"] for r in nm.executor_status(agent)}
    assert len(before) == 10 and all(before.values()), before

    for graceful in (True, False, True):
        t0 = time.monotonic()
        agent.restart(graceful=graceful)
        agent.wait_driver_healthy()
        # Every task is recovered and keeps printing after the restart.
        for a in allocs:
            agent.wait_task(a["ID"], "t", "running")
        marks = {a["ID"]: max(seqs(agent.logs(a["ID"], "t"))) for a in allocs}
        for a in allocs:
            agent.wait_logs(a["ID"], "t", f"seq {marks[a['ID']] + 3}")
        print(f"restart ({'graceful' if graceful else 'kill -9'}): tasks recovered and "
              f"logging again after {time.monotonic() - t0:.2f}s")

    rows = nm.executor_status(agent)
    after = {r["alloc_id"]: r["runtime_pid"] for r in rows}
    assert after == before, "runtime pids changed across restarts"
    assert all(r["state"] == "running" and r["reachable"] for r in rows), rows
    for a in allocs:
        got = seqs(agent.logs(a["ID"], "t"))
        assert got == list(range(len(got))), f"gap or duplicate in {a['ID']}: {got[:5]}…{got[-5:]}"
    # Stats flow through the recovered handles.
    usage = agent.api.get(f"/v1/client/allocation/{allocs[0]['ID']}/stats")
    assert usage["ResourceUsage"]["MemoryStats"]["RSS"] > 0, usage
    procs = [p for a in allocs for p in nm.alloc_procs(a["ID"])]
    assert len(procs) >= 3 * len(allocs), [p.describe() for p in procs]  # shim, init, runtime
    agent.stop_job(job["ID"])
    for a in allocs:
        assert agent.wait_task(a["ID"], "t", "dead")["State"] == "dead"
    assert not nm.wait_gone(procs, 15)


def test_exit_while_agent_is_down_is_reported_after_restart(nomad_agent):
    agent = nomad_agent(mode="persistent", name="downexit")
    agent.wait_driver_healthy()
    app = """
import os, sys, time
print("waiting for local/go", flush=True)
while not os.path.exists("local/go"):
    time.sleep(0.05)
sys.exit(7)
"""
    job = agent.run_job(nm.elide_job("exit7", app, jtype="batch",
                                group='restart {\n  attempts = 0\n  mode = "fail"\n}\n'
                                        'reschedule {\n  attempts = 0\n  unlimited = false\n}'))
    alloc = running_allocs(agent, job["ID"], 1)[0]
    agent.wait_logs(alloc["ID"], "t", "waiting for local/go")
    row = next(r for r in nm.executor_status(agent) if r["alloc_id"] == alloc["ID"])
    runtime = nm.proc_info(row["runtime_pid"])
    agent.stop()
    open(os.path.join(agent.data_dir, "alloc", alloc["ID"], "t", "local", "go"), "w").close()
    assert not nm.wait_gone([runtime], 15), "the task did not exit while the agent was down"
    agent.start()
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    assert nm.exit_code_of(ts) == 7, nm.describe_task(ts)
    assert ts["Failed"]


def test_plugin_kill_9_is_relaunched_and_wait_resumes(nomad_agent):
    agent = nomad_agent(mode="persistent", name="pluginkill")
    agent.wait_driver_healthy()
    job = agent.run_job(nm.elide_job("seq1", SEQ_APP))
    alloc = running_allocs(agent, job["ID"], 1)[0]
    agent.wait_logs(alloc["ID"], "t", "seq 3")
    row = next(r for r in nm.executor_status(agent) if r["alloc_id"] == alloc["ID"])
    old = plugin_pids(agent)
    assert old, "no plugin process found"
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    # Nomad notices (WaitTask breaks), relaunches the plugin and recovers the task.
    agent.wait_log(r"reattached to running shim", timeout=60)
    new = plugin_pids(agent)
    assert new and not set(new) & set(old), (old, new)
    assert agent.wait_task(alloc["ID"], "t", "running")
    row2 = next(r for r in nm.executor_status(agent) if r["alloc_id"] == alloc["ID"])
    assert row2["runtime_pid"] == row["runtime_pid"]
    # WaitTask resumed on the new plugin: a stop is seen through it.
    agent.stop_job(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    assert nm.exit_code_of(ts) == 143, nm.describe_task(ts)


def test_shim_kill_9_fails_the_task_clearly_restarts_it_and_leaves_no_orphan(nomad_agent):
    agent = nomad_agent(mode="persistent", name="shimkill")
    agent.wait_driver_healthy()
    job = agent.run_job(nm.elide_job("seqk", SEQ_APP,
                                group='restart {\n  attempts = 3\n  delay = "1s"\n  mode = "fail"\n}'))
    alloc = running_allocs(agent, job["ID"], 1)[0]
    agent.wait_logs(alloc["ID"], "t", "seq 3")
    row = next(r for r in nm.executor_status(agent) if r["alloc_id"] == alloc["ID"])
    runtime = nm.proc_info(row["runtime_pid"])
    os.kill(row["shim_pid"], signal.SIGKILL)
    assert not nm.wait_gone([runtime], 15), "the runtime outlived its killed shim"
    ts = agent.wait_task(alloc["ID"], "t", "running", pred=lambda t: t["Restarts"] >= 1)
    text = " ".join(f"{e['Type']}: {e.get('DisplayMessage', '')}" for e in ts["Events"])
    assert "elide-executor" in text and "died unexpectedly" in text, text
    rows = [r for r in nm.executor_status(agent) if r["alloc_id"] == alloc["ID"] and r["state"] == "running"]
    assert len(rows) == 1 and rows[0]["runtime_pid"] != row["runtime_pid"], rows
    agent.stop_job(job["ID"])


def test_status_cli_lists_exactly_the_running_tasks(nomad_agent):
    agent = nomad_agent(name="statuscli")
    agent.wait_driver_healthy()
    job = agent.run_job(nm.elide_job("st", SEQ_APP, count=2))
    allocs = running_allocs(agent, job["ID"], 2)
    rows = nm.executor_status(agent)
    assert sorted(r["alloc_id"] for r in rows) == sorted(a["ID"] for a in allocs)
    for r in rows:
        p = nm.runtime_of(r["runtime_pid"])
        assert p is not None and "elide" in p.cmdline and "elide-executor" not in p.cmdline, r
        assert r["reachable"] and r["state"] == "running" and r["memory_bytes"] > 0
    table = subprocess.run([agent.executor_path, "status", "--state-dir", agent.runtime_dir],
                           capture_output=True, text=True, check=True).stdout
    assert "ALLOC" in table and "running" in table, table
    # stop/signal through the CLI, with an error that names the fix for an unknown task.
    bad = subprocess.run([agent.executor_path, "signal", "SIGUSR1", "--state-dir", agent.runtime_dir,
                          "no-such-task"], capture_output=True, text=True)
    assert bad.returncode != 0 and "elide-executor status" in bad.stderr, bad.stderr
    agent.stop_job(job["ID"])
