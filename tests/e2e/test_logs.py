"""Issue 10: the shim writes the task's log files itself (log_collection = "executor", the
default), so Nomad runs no logmon for Elide tasks; "nomad" keeps logmon and its FIFOs.
`nomad alloc logs` (-f, -tail, -n, -stderr) reads the shim's files unchanged."""
import os
import re
import subprocess
import threading
import time

import pytest

import nomad as nm

#: 200,000 lines of 75 bytes: 15 MB at once.
BURST_LINES = 200_000
BURST_APP = """
import sys
out = sys.stdout
pad = "x" * 62
for start in range(0, 200000, 1000):
    out.write("".join(f"line {i:06d} {pad}\\n" for i in range(start, start + 1000)))
out.flush()
print("to stderr", file=sys.stderr, flush=True)
"""

SEQ_APP = """
import itertools, time
for i in itertools.count():
    print(f"seq {i}", flush=True)
    time.sleep(0.1)
"""


def burst_lines() -> str:
    pad = "x" * 62
    return "".join(f"line {i:06d} {pad}\n" for i in range(BURST_LINES))


def seqs(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"^seq (\d+)$", text, re.M)]


def logs_dir(agent, alloc_id: str) -> str:
    d = os.path.join(agent.data_dir, "alloc", alloc_id, "alloc", "logs")
    assert os.path.isdir(d), f"no logs dir at {d}"
    return d


def log_files(d: str, base: str) -> list[tuple[int, str]]:
    """(index, path) of `<base>.<N>` in d, by index."""
    out = []
    for name in os.listdir(d):
        m = re.fullmatch(re.escape(base) + r"\.(\d+)", name)
        if m:
            out.append((int(m.group(1)), os.path.join(d, name)))
    return sorted(out)


def logmons(agent) -> list[nm.Proc]:
    return [p for p in agent.processes() if re.search(r"(^|/)nomad logmon", p.cmdline)]


@pytest.mark.parametrize("mode", ["executor", "nomad"])
def test_logmon_runs_only_with_log_collection_nomad_and_logs_read_the_same(nomad_agent, mode):
    agent = nomad_agent({"log_collection": mode})
    agent.wait_driver_healthy()
    job = agent.run_job(nm.elide_job("who-logs", """
import sys, time
print("hello stdout", flush=True)
print("hello stderr", file=sys.stderr, flush=True)
time.sleep(3600)
""", script_name="app.py"))
    alloc = agent.first_alloc(job["ID"])
    agent.wait_task(alloc["ID"], "t", "running")
    agent.wait_logs(alloc["ID"], "t", "hello stdout")
    agent.wait_logs(alloc["ID"], "t", "hello stderr", stream="stderr")
    found = logmons(agent)
    if mode == "executor":
        assert not found, "Nomad started a logmon for an Elide task:\n" + "\n".join(
            p.describe() for p in found)
        # The shim is the only per-task helper, and says where the logs go.
        row = nm.executor_status(agent)[0]
        assert row["logs"] == "executor" and row["log_bytes_dropped"] == 0, row
        d = logs_dir(agent, alloc["ID"])
        names = sorted(os.listdir(d))
        assert names == ["t.stderr.0", "t.stdout.0"], names
        assert oct(os.stat(os.path.join(d, "t.stdout.0")).st_mode & 0o777) == "0o644"
    else:
        assert len(found) == 1, f"expected one logmon, found {len(found)}"
        assert nm.executor_status(agent)[0]["logs"] == "fifo"
    err = agent.cli("alloc", "logs", "-stderr", alloc["ID"], "t").stdout
    assert err == "hello stderr\n", err


def test_a_15mb_burst_arrives_whole_in_order_and_tail_and_follow_work(shared_agent):
    agent = shared_agent
    job = agent.run_job(nm.elide_job("burst", BURST_APP, jtype="batch", group=nm.NO_RESTART))
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead", timeout=300)
    assert nm.exit_code_of(ts) == 0, nm.describe_task(ts)
    want = burst_lines()
    got = agent.logs(alloc["ID"], "t")
    assert len(got) == len(want), f"{len(got)} bytes of {len(want)}"
    assert got == want, "lines lost, repeated or out of order"
    assert agent.logs(alloc["ID"], "t", stream="stderr") == "to stderr\n"
    last = want.splitlines()[-1]
    tail = agent.cli("alloc", "logs", "-tail", "-n", "1", alloc["ID"], "t").stdout
    assert tail.strip() == last, tail[-200:]
    tail3 = agent.cli("alloc", "logs", "-tail", "-n", "3", alloc["ID"], "t").stdout
    assert tail3.splitlines() == want.splitlines()[-3:]
    # Default rotation (10 MiB files): two files, nothing removed.
    files = log_files(logs_dir(agent, alloc["ID"]), "t.stdout")
    assert [i for i, _ in files] == [0, 1], files
    assert all(os.path.getsize(p) <= 10 << 20 for _, p in files)


def test_follow_streams_new_lines(shared_agent):
    agent = shared_agent
    job = agent.run_job(nm.elide_job("follow", SEQ_APP))
    alloc = agent.first_alloc(job["ID"])
    agent.wait_logs(alloc["ID"], "t", "seq 2")
    env = {**os.environ, "NOMAD_ADDR": agent.addr}
    f = subprocess.Popen([agent.nomad_bin, "alloc", "logs", "-f", alloc["ID"], "t"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen: list[int] = []
    done = threading.Event()

    def read():
        for line in f.stdout:
            if line.startswith("seq "):
                seen.append(int(line.split()[1]))
                if len(seen) > 1 and seen[-1] >= seen[0] + 15:
                    done.set()
                    return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        assert done.wait(60), f"`nomad alloc logs -f` stopped streaming: {seen[-5:]}"
    finally:
        f.kill()
        f.wait()
    assert seen == list(range(seen[0], seen[0] + len(seen))), seen


def test_rotation_from_the_task_config_keeps_three_files_of_one_mib(shared_agent):
    agent = shared_agent
    job = agent.run_job(nm.elide_job(
        "rotate", BURST_APP, jtype="batch", group=nm.NO_RESTART,
        config="log_max_files = 3\n        log_max_file_size = 1"))
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead", timeout=300)
    assert nm.exit_code_of(ts) == 0, nm.describe_task(ts)
    files = log_files(logs_dir(agent, alloc["ID"]), "t.stdout")
    assert len(files) == 3, files
    assert all(os.path.getsize(p) <= 1 << 20 for _, p in files), [
        (i, os.path.getsize(p)) for i, p in files]
    want = burst_lines()
    with open(files[-1][1]) as fh:
        assert fh.read().endswith(want.splitlines()[-1] + "\n")
    # What Nomad shows is the tail of the output, whole lines in order.
    got = agent.logs(alloc["ID"], "t")
    assert got and want.endswith(got), "the kept files are not the tail of the output"
    assert agent.cli("alloc", "logs", "-tail", "-n", "1", alloc["ID"], "t").stdout.strip() == \
        want.splitlines()[-1]


def test_agent_kill9_and_restart_loses_and_repeats_no_line(nomad_agent):
    agent = nomad_agent(mode="persistent", name="kill9")
    agent.wait_driver_healthy()
    job = agent.run_job(nm.elide_job("seq", SEQ_APP))
    alloc = agent.first_alloc(job["ID"])
    agent.wait_logs(alloc["ID"], "t", "seq 5")
    files = log_files(logs_dir(agent, alloc["ID"]), "t.stdout")
    agent.kill()
    # Lines keep going to the files while there is no agent and no plugin.
    size = os.path.getsize(files[-1][1])
    deadline = time.monotonic() + 30
    while os.path.getsize(files[-1][1]) < size + 200:
        assert time.monotonic() < deadline, "nothing was written while the agent was down"
        time.sleep(0.1)
    agent.start()
    agent.wait_driver_healthy()
    agent.wait_task(alloc["ID"], "t", "running")
    mark = max(seqs(agent.logs(alloc["ID"], "t")))
    agent.wait_logs(alloc["ID"], "t", f"seq {mark + 5}")
    got = seqs(agent.logs(alloc["ID"], "t"))
    assert got == list(range(len(got))), f"gap or duplicate: {got[:5]}…{got[-5:]}"
    assert not logmons(agent)
    agent.stop_job(job["ID"])


def test_a_read_only_logs_dir_keeps_the_task_running_and_the_loss_is_reported(nomad_agent):
    agent = nomad_agent()
    agent.wait_driver_healthy()
    # A prestart task holds the main task back until the test has put a read-only bind
    # mount over the allocation's alloc/logs (and written alloc/data/go).
    job = agent.run_job(f"""
job "ro-logs" {{
  datacenters = ["dc1"]
  group "g" {{
    task "gate" {{
      driver = "elide"
      lifecycle {{
        hook = "prestart"
      }}
      config {{
        script = "local/gate.py"
      }}
      template {{
        destination = "local/gate.py"
        perms = "644"
        data = <<EOT
import os, time
go = os.path.join(os.environ["NOMAD_ALLOC_DIR"], "data", "go")
while not os.path.exists(go):
    time.sleep(0.1)
EOT
      }}
    }}
    task "t" {{
      driver = "elide"
      config {{
        script = "local/app.py"
      }}
      template {{
        destination = "local/app.py"
        perms = "644"
        data = <<EOT
{SEQ_APP}
EOT
      }}
    }}
  }}
}}
""")
    alloc = agent.first_alloc(job["ID"])
    shared = os.path.join(agent.data_dir, "alloc", alloc["ID"], "alloc")
    logs = os.path.join(shared, "logs")
    agent.wait_task(alloc["ID"], "gate", "running")
    subprocess.run(["mount", "--bind", logs, logs], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", logs], check=True)
        with open(os.path.join(shared, "data", "go"), "w"):
            pass
        agent.wait_task(alloc["ID"], "t", "running")
        ev = agent.wait_task_event(alloc["ID"], "t", lambda e: "cannot write the task's" in (
            e.get("DisplayMessage") or e.get("Message") or ""))
        msg = ev.get("DisplayMessage") or ev.get("Message")
        assert "Read-only file system" in msg and "keeps running" in msg, msg

        def lost():
            rows = [r for r in nm.executor_status(agent) if r["task_name"] == "t"]
            return rows[0] if rows and rows[0]["log_bytes_dropped"] > 20 else None
        deadline = time.monotonic() + 60
        while not (row := lost()):
            assert time.monotonic() < deadline, nm.executor_status(agent)
            time.sleep(0.2)
        assert row["state"] == "running" and "Read-only" in row["log_error"], row
        out = subprocess.run([agent.executor_path, "status", "--state-dir", agent.runtime_dir],
                             capture_output=True, text=True, timeout=30)
        assert "files, lost" in out.stdout and "could not be written" in out.stderr, out
        assert agent.wait_task(alloc["ID"], "t", "running")["State"] == "running"
    finally:
        subprocess.run(["umount", "-l", logs], check=False)
    agent.stop_job(job["ID"])
    agent.wait_task(alloc["ID"], "t", "dead")


def test_a_symlink_planted_as_the_next_log_file_is_not_followed(shared_agent, tmp_path):
    agent = shared_agent
    outside = tmp_path / "outside-the-alloc"
    outside.write_text("precious\n")
    os.chmod(tmp_path, 0o755)
    job = agent.run_job(nm.elide_job("plant", f"""
import os, sys
os.symlink({str(outside)!r}, os.path.join(os.environ["NOMAD_ALLOC_DIR"], "logs", "t.stdout.1"))
pad = "y" * 70
for i in range(15000):
    sys.stdout.write(f"line {{i:06d}} {{pad}}\\n")
sys.stdout.flush()
""", jtype="batch", group=nm.NO_RESTART, config="log_max_file_size = 1"))
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead", timeout=120)
    assert nm.exit_code_of(ts) == 0, nm.describe_task(ts)
    assert outside.read_text() == "precious\n"
    d = logs_dir(agent, alloc["ID"])
    assert os.path.islink(os.path.join(d, "t.stdout.1"))
    assert [i for i, _ in log_files(d, "t.stdout")] == [0, 1, 2]


def test_a_task_started_with_logmon_keeps_it_after_the_switch_and_it_goes_with_the_task(
        nomad_agent):
    agent = nomad_agent({"log_collection": "nomad"}, mode="persistent", name="switch")
    agent.wait_driver_healthy()
    job = agent.run_job(nm.elide_job("switch", SEQ_APP))
    alloc = agent.first_alloc(job["ID"])
    agent.wait_logs(alloc["ID"], "t", "seq 3")
    old = logmons(agent)
    assert len(old) == 1, [p.describe() for p in old]
    # The operator (or an upgrade from a release before the shim wrote logs) switches to
    # the default; the agent restarts with the task running.
    agent.stop()
    agent.plugin_config.pop("log_collection")
    agent.start()
    agent.wait_driver_healthy()
    agent.wait_task(alloc["ID"], "t", "running")
    assert nm.executor_status(agent)[0]["logs"] == "fifo"
    mark = max(seqs(agent.logs(alloc["ID"], "t")))
    agent.wait_logs(alloc["ID"], "t", f"seq {mark + 5}")
    # Restarted, the task moves to the shim's files (same names, the index continues), and
    # the old logmon goes with the old task.
    agent.restart_alloc(alloc["ID"], "t")
    agent.wait_task(alloc["ID"], "t", "running", pred=lambda ts: ts.get("Restarts", 0) >= 1)
    deadline = time.monotonic() + 30
    while logmons(agent):
        assert time.monotonic() < deadline, "the logmon of the old task is still running: " + \
            "; ".join(p.describe() for p in logmons(agent))
        time.sleep(0.2)
    assert nm.executor_status(agent)[-1]["logs"] == "executor"
    text = agent.logs(alloc["ID"], "t")
    deadline = time.monotonic() + 60
    while seqs(text).count(3) < 2:
        assert time.monotonic() < deadline, text[-500:]
        time.sleep(0.2)
        text = agent.logs(alloc["ID"], "t")
    got = seqs(text)
    restart = got.index(0, 1)
    assert got[:restart] == list(range(restart)), "first run: gap or duplicate"
    assert got[restart:] == list(range(len(got) - restart)), "second run: gap or duplicate"
    agent.stop_job(job["ID"])
