"""Issue 12: a cluster of real Nomad agents -- one server, three clients on this machine, the
plugin installed on each client from the release .deb. Scheduling by the driver's attributes,
a node drain, a client crash, and an in-place upgrade of plugin and shim with tasks running.

The cluster is shared by the module (fixture `cluster`, conftest.py); each test leaves it as it
found it (no jobs, every node eligible)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

import nomad as nm

SEQ_APP = """
import itertools, os, signal, time
signal.signal(signal.SIGUSR1, lambda *_: os.write(1, b"got USR1\\n"))
for i in itertools.count():
    print(f"seq {i}", flush=True)
    time.sleep(0.2)
"""

# Fast migrations and deployments: the defaults wait 10 s of health per allocation.
FAST = """
    migrate {
      max_parallel     = 3
      health_check     = "task_states"
      min_healthy_time = "1s"
      healthy_deadline = "1m"
    }
    update {
      max_parallel      = 6
      health_check      = "task_states"
      min_healthy_time  = "1s"
      healthy_deadline  = "1m"
      progress_deadline = "2m"
    }
"""

ON_ELIDE_NODES = """
    constraint {
      attribute = "${attr.driver.elide.version}"
      operator  = "is_set"
    }
"""


def on_node(client) -> str:
    return f"""
    constraint {{
      attribute = "${{node.unique.name}}"
      value     = "{client.node_name}"
    }}
"""


def running(server, job_id: str, n: int) -> list[dict]:
    """Wait until the job has exactly n running allocations whose task runs; returns them."""
    def ok(allocs):
        live = [a for a in allocs or [] if a["ClientStatus"] == "running"
                and a["DesiredStatus"] == "run"
                and (a.get("TaskStates") or {}).get("t", {}).get("State") == "running"]
        pending = [a for a in allocs or [] if a["ClientStatus"] == "pending"
                   and a["DesiredStatus"] == "run"]
        return live if len(live) == n and not pending else None
    return server.wait_allocs(job_id, ok, timeout=120, what=f"{n} running allocations of {job_id}")


def rows_by_alloc(client) -> dict[str, dict]:
    return {r["alloc_id"]: r for r in nm.executor_status(client)}


def seqs(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"^seq (\d+)$", text, re.M)]


@pytest.fixture
def fresh(cluster):
    """The cluster, left clean after the test: jobs stopped and purged, nodes eligible."""
    yield cluster
    server = cluster.server
    if not server.running:
        return
    server.stop_all_jobs()
    for j in server.api.get("/v1/jobs") or []:
        server.api.delete(f"/v1/job/{j['ID']}", purge="true")
    for c in cluster.clients:
        if c.running and c.node_id:
            server.cli("node", "eligibility", "-enable", c.node_id)


def test_placement_follows_the_driver_attribute_and_spreads_over_elide_nodes(fresh):
    cluster = fresh
    c1, c2, c3 = cluster.clients
    for c in (c1, c2):
        driver = c.wait_driver_healthy()
        attrs = driver["Attributes"]
        assert attrs["driver.elide.version"], attrs
        # The plugin reports its own build, as `--version` prints it.
        out = subprocess.run([c.plugin_path, "--version"], capture_output=True,
                                text=True).stdout
        assert out.startswith(f"nomad-driver-elide {attrs['driver.elide.plugin_version']} "
                              f"(revision {attrs['driver.elide.plugin_revision']},"), (out, attrs)
        assert attrs["driver.elide.executor_version"] == attrs["driver.elide.plugin_version"]
    # c3 has the plugin but no Elide: not detected, and none of the driver's attributes.
    none = c3.wait_driver(lambda d: d.get("HealthDescription"))
    assert (none["Detected"], none["Healthy"]) == (False, False), none
    assert "Elide not found" in none["HealthDescription"], none
    assert "driver.elide.version" not in (c3.node().get("Attributes") or {})

    job = cluster.server.run_job(nm.elide_job(
        "spread", SEQ_APP, count=6, memory=48, cpu=50,
        group=ON_ELIDE_NODES + 'spread {\n  attribute = "${node.unique.name}"\n}\n'
        + 'network {\n  port "http" {}\n}\n' + FAST))
    allocs = running(cluster.server, job["ID"], 6)
    assert cluster.placement(allocs) == {"c1": 3, "c2": 3, "c3": 0}
    for a in allocs:
        # Each client hands out ports from its own dynamic range.
        c = cluster.by_node(a["NodeID"])
        full = cluster.server.alloc(a["ID"])
        ports = [p["Value"] for p in full["AllocatedResources"]["Shared"]["Ports"]]
        lo, hi = c.dynamic_ports
        assert len(ports) == 1 and lo <= ports[0] <= hi, (c.name, ports, c.dynamic_ports)
    # Each client's shims answer in its own runtime_dir, and its tasks' cgroups (Nomad's
    # cpuset share) live under its own cgroup_parent.
    for c in (c1, c2):
        rows = rows_by_alloc(c)
        assert sorted(rows) == sorted(a["ID"] for a in allocs if a["NodeID"] == c.node_id)
        assert all(r["state"] == "running" and r["socket"].startswith(c.runtime_dir + "/")
                   for r in rows.values()), rows
        if not nm.CGROUP_V2:
            for r in rows.values():
                nomad_cg = [d for d in r["cgroup"].split(",") if "/cpuset/" in d]
                assert nomad_cg and all(c.cgroup_parent.strip("/") in d for d in nomad_cg), r
    # c3 never started a shim: its runtime_dir was never even made.
    assert not os.path.exists(c3.runtime_dir)


def test_drain_moves_tasks_and_leaves_nothing_on_the_drained_node(fresh):
    cluster = fresh
    c1, c2, _ = cluster.clients
    job = cluster.server.run_job(nm.elide_job(
        "drain", SEQ_APP, count=6, memory=48, cpu=50,
        group=ON_ELIDE_NODES + 'spread {\n  attribute = "${node.unique.name}"\n}\n' + FAST))
    allocs = running(cluster.server, job["ID"], 6)
    assert cluster.placement(allocs) == {"c1": 3, "c2": 3, "c3": 0}
    on_c1 = [a["ID"] for a in allocs if a["NodeID"] == c1.node_id]
    rows = rows_by_alloc(c1)
    procs = [p for aid in on_c1 for p in nm.alloc_procs(aid)]
    shims = {rows[aid]["shim_pid"] for aid in on_c1}
    runtimes = {rows[aid]["runtime_pid"] for aid in on_c1}
    assert shims <= {p.pid for p in procs} and runtimes <= {p.pid for p in procs}
    cgroups = [d for aid in on_c1 for d in rows[aid]["cgroup"].split(",") if d]
    assert cgroups and all(os.path.isdir(d) for d in cgroups), cgroups

    t0 = time.monotonic()
    out = cluster.server.cli("node", "drain", "-enable", "-yes", "-deadline", "2m",
                             c1.node_id, timeout=180).stdout
    assert "drain complete" in out.lower(), out
    moved = running(cluster.server, job["ID"], 6)
    print(f"drain: 3 tasks moved to c2 in {time.monotonic() - t0:.1f}s")
    assert cluster.placement(moved) == {"c1": 0, "c2": 6, "c3": 0}
    for aid in on_c1:
        a = cluster.server.wait_alloc_stopped(aid)
        assert a["DesiredStatus"] == "stop", a["DesiredStatus"]
        assert a["TaskStates"]["t"]["State"] == "dead"
    # Nothing of them is left on c1: no shim, no runtime, no socket or index entry, no cgroup
    # with a process in it (the shim removes the cgroups it made; Nomad's own go with the alloc).
    left = nm.wait_gone(procs, 15)
    assert not left, "\n".join(p.describe() for p in left)
    assert nm.executor_status(c1) == []
    assert c1.runtime_entries() == []
    busy = [d for d in cgroups if os.path.isdir(d) and nm.cgroup_procs(d)]
    assert not busy, busy
    owned = [d for d in cgroups if "/nomad-elide/" in d or "/elide.slice/" in d]
    assert owned and not [d for d in owned if os.path.isdir(d)], owned
    assert len(nm.executor_status(c2)) == 6


def test_client_kill_9_and_restart_recovers_tasks_with_the_same_pids(fresh):
    cluster = fresh
    c1 = cluster.client("c1")
    job = cluster.server.run_job(nm.elide_job(
        "crash", SEQ_APP, count=2, memory=48, cpu=50, group=on_node(c1) + FAST))
    allocs = running(cluster.server, job["ID"], 2)
    for a in allocs:
        cluster.server.wait_logs(a["ID"], "t", "seq 3")
    before = rows_by_alloc(c1)
    assert sorted(before) == sorted(a["ID"] for a in allocs)

    t0 = time.monotonic()
    assert c1.kill() == -signal.SIGKILL
    c1.start()
    c1.wait_driver_healthy()
    for a in allocs:
        cluster.server.wait_task(a["ID"], "t", "running")
    marks = {a["ID"]: max(seqs(cluster.server.logs(a["ID"], "t"))) for a in allocs}
    for a in allocs:
        cluster.server.wait_logs(a["ID"], "t", f"seq {marks[a['ID']] + 2}")
    print(f"kill -9 of client c1: tasks recovered and logging in {time.monotonic() - t0:.1f}s")
    after = rows_by_alloc(c1)
    assert {k: (r["shim_pid"], r["runtime_pid"]) for k, r in after.items()} == \
        {k: (r["shim_pid"], r["runtime_pid"]) for k, r in before.items()}
    assert all(r["state"] == "running" and r["reachable"] for r in after.values()), after
    # Nomad did not replace them either: still the same allocations, never restarted.
    assert running(cluster.server, job["ID"], 2) and all(
        cluster.server.alloc(a["ID"])["TaskStates"]["t"]["Restarts"] == 0 for a in allocs)


def test_upgrade_in_place_keeps_old_tasks_controllable_and_new_tasks_get_the_new_shim(
        fresh, release, release_b):
    cluster = fresh
    server = cluster.server
    c2 = cluster.client("c2")
    va, vb = release["version"], release_b["version"]
    assert c2.wait_driver_healthy()["Attributes"]["driver.elide.plugin_version"] == va
    job = server.run_job(nm.elide_job(
        "old", SEQ_APP, count=2, memory=48, cpu=50, group=on_node(c2) + FAST,
        task='kill_timeout = "5s"'))
    allocs = running(server, job["ID"], 2)
    for a in allocs:
        server.wait_logs(a["ID"], "t", "seq 2")
    before = rows_by_alloc(c2)
    assert {r["executor_version"] for r in before.values()} == {va}

    # Upgrade: unpack build B over the installed A (as dpkg does), restart the agent.
    t0 = time.monotonic()
    nm.install_deb(release_b["deb"], c2.install_root)
    for r in before.values():
        # The old shims keep running their old (now replaced) binary.
        assert nm.proc_info(r["shim_pid"]).exe.endswith(" (deleted)"), r
    c2.restart(graceful=True)
    driver = c2.wait_driver(lambda d: d["Healthy"] and d["Attributes"].get(
        "driver.elide.plugin_version") == vb)
    assert driver["Attributes"]["driver.elide.executor_version"] == vb
    for a in allocs:
        server.wait_task(a["ID"], "t", "running")
    print(f"upgrade {va} -> {vb}: agent back with plugin B in {time.monotonic() - t0:.1f}s")
    plugins = [p for p in c2.find_processes(nm.PLUGIN_NAME) if p.exe == c2.plugin_path]
    assert plugins, "the agent does not run the new plugin binary:\n" + "\n".join(
        p.describe() for p in c2.processes())

    # The old tasks: same shims and runtimes, still version A, and fully under control.
    after = rows_by_alloc(c2)   # (asked with the new elide-executor CLI)
    assert {k: (r["shim_pid"], r["runtime_pid"], r["executor_version"])
            for k, r in after.items()} == \
        {k: (r["shim_pid"], r["runtime_pid"], va) for k, r in before.items()}
    old = allocs[0]["ID"]
    mark = max(seqs(server.logs(old, "t")))
    server.wait_logs(old, "t", f"seq {mark + 2}")                       # logs
    server.signal(old, "SIGUSR1", task="t")                              # signal
    server.wait_logs(old, "t", "got USR1")
    stats = server.api.get(f"/v1/client/allocation/{old}/stats")        # stats
    assert stats["ResourceUsage"]["MemoryStats"]["RSS"] > 0, stats

    # A new task on the upgraded node runs on shim B.
    job_b = server.run_job(nm.elide_job(
        "new", SEQ_APP, memory=48, cpu=50, group=on_node(c2) + FAST))
    new = running(server, job_b["ID"], 1)[0]["ID"]
    rows = rows_by_alloc(c2)
    assert rows[new]["executor_version"] == vb and rows[new]["api_level"] >= 1, rows[new]
    assert not nm.proc_info(rows[new]["shim_pid"]).exe.endswith(" (deleted)")

    # Stop through plugin B: the old tasks exit on SIGTERM and leave nothing behind.
    procs = [p for a in allocs for p in nm.alloc_procs(a["ID"])]
    server.stop_job(job["ID"])
    for a in allocs:
        ts = server.wait_task(a["ID"], "t", "dead")
        assert nm.exit_code_of(ts) == 143, nm.describe_task(ts)
    left = nm.wait_gone(procs, 15)
    assert not left, "\n".join(p.describe() for p in left)
    assert sorted(rows_by_alloc(c2)) == [new]
