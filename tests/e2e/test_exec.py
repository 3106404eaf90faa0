"""Issue 9: `nomad alloc exec` and ExecTask on a real Nomad agent.

Commands run inside the running task's sandbox (its namespaces, cgroup, user, environment and
dir) through the shim's Exec: separate streams and exit codes, binary stdin, a terminal,
concurrency, agent restarts and plugin crashes, a missing command, the caller going away, the
task stopping, and template change scripts (ExecTask) with and without fail_on_error.
"""
from __future__ import annotations

import hashlib
import os
import re
import select
import signal
import struct
import subprocess
import termios
import fcntl  # noqa: I001 - with termios: the terminal size

import nomad as nm

APP = """
import time
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def running(agent, name: str, **kw) -> dict:
    job = agent.run_job(nm.elide_job(name, APP, **kw))
    alloc = agent.first_alloc(job["ID"])
    agent.wait_task(alloc["ID"], "t", "running")
    agent.wait_logs(alloc["ID"], "t", "ready")
    return alloc


def exec_cli(agent, alloc_id: str, *command: str, stdin: bytes | None = None,
             task: str = "t", timeout: float = 120) -> tuple[int, bytes, bytes]:
    """`nomad alloc exec` without a terminal; returns (exit code, stdout, stderr)."""
    env = {**os.environ, "NOMAD_ADDR": agent.addr, "NO_COLOR": "1"}
    proc = subprocess.run(
        [agent.nomad_bin, "alloc", "exec", "-t=false", "-task", task, alloc_id, *command],
        input=stdin if stdin is not None else b"", capture_output=True, env=env,
        timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def exec_popen(agent, alloc_id: str, *command: str) -> subprocess.Popen:
    env = {**os.environ, "NOMAD_ADDR": agent.addr, "NO_COLOR": "1"}
    return subprocess.Popen(
        [agent.nomad_bin, "alloc", "exec", "-t=false", "-task", "t", alloc_id, *command],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def exec_tty(agent, alloc_id: str, *command: str, rows: int = 30, cols: int = 100,
             timeout: float = 60) -> tuple[int, bytes]:
    """`nomad alloc exec -t` on a pseudo-terminal of the given size; returns (exit code,
    everything the terminal showed)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {**os.environ, "NOMAD_ADDR": agent.addr, "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [agent.nomad_bin, "alloc", "exec", "-t", "-task", "t", alloc_id, *command],
        stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    nm.OWN_CHILDREN.add(proc.pid)
    os.close(slave)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                raise TimeoutError(f"nomad alloc exec -t printed nothing for {timeout}s: {out!r}")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the CLI closed the terminal (it exited)
                break
            if not chunk:
                break
            out += chunk
        return proc.wait(timeout), out
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def runtime_row(agent, alloc_id: str) -> dict:
    return next(r for r in nm.executor_status(agent) if r["alloc_id"] == alloc_id)


def app_pid(alloc_id: str) -> int:
    """The app (Elide running local/app.py) of an allocation, as the host sees it."""
    for p in nm.alloc_procs(alloc_id):
        if "local/app.py" in p.cmdline and "elide" in p.cmdline:
            return p.pid
    raise AssertionError(f"no Elide process of {alloc_id} found")


def exec_started(agent, marker: str) -> nm.Proc:
    """The process of a running exec whose command line holds `marker`, from the plugin's
    "exec started" log line (its pid as the host sees it)."""
    m = agent.wait_log(r"exec started:[^\n]*" + marker + r"[^\n]*")
    pid = int(re.search(r"\bpid=(\d+)", m.group(0)).group(1))
    p = nm.proc_info(pid)
    assert p is not None and marker in p.cmdline, (m.group(0), p)
    return p


def test_exec_streams_stay_separate_with_the_exit_code_env_and_binary_stdin(shared_agent):
    agent = shared_agent
    alloc = running(agent, "exec-basic")
    rc, out, err = exec_cli(agent, alloc["ID"], "/bin/sh", "-c",
                            "echo $NOMAD_ALLOC_ID; echo e >&2; exit 3")
    assert (rc, out, err) == (3, f"{alloc['ID']}\n".encode(), b"e\n"), (rc, out, err)
    # 6 MB of arbitrary bytes in and back out, byte for byte.
    data = os.urandom(6 * 1024 * 1024)
    rc, out, err = exec_cli(agent, alloc["ID"], "cat", stdin=data)
    assert rc == 0, err
    assert len(out) == len(data) and hashlib.sha256(out).digest() == hashlib.sha256(data).digest()


def test_exec_with_t_gets_a_terminal_of_the_callers_size(shared_agent):
    agent = shared_agent
    alloc = running(agent, "exec-tty")
    rc, out = exec_tty(agent, alloc["ID"], "/bin/sh", "-c", "tty; stty size; echo err >&2")
    text = out.decode("utf-8", "replace")
    assert rc == 0, text
    lines = text.split("\r\n")
    assert lines[0].startswith("/dev/pts/"), text
    assert lines[1:3] == ["30 100", "err"], text


def test_an_exec_lands_in_the_apps_cgroup_and_sandbox(shared_agent):
    agent = shared_agent
    alloc = running(agent, "exec-sandbox")
    with open(f"/proc/{app_pid(alloc['ID'])}/cgroup") as f:
        app_cgroup = f.read()
    rc, out, err = exec_cli(agent, alloc["ID"], "cat", "/proc/self/cgroup")
    assert rc == 0, err
    assert out.decode() == app_cgroup
    # Inside the task's PID namespace: its init as 1, none of the host's processes.
    rc, out, err = exec_cli(agent, alloc["ID"], "/bin/sh", "-c",
                            "ls /proc | grep -E '^[0-9]+$'; tr '\\0' ' ' < /proc/1/cmdline")
    assert rc == 0, err
    lines = out.decode().split("\n")
    pids = [int(x) for x in lines if x.isdigit()]
    assert 1 in pids and agent.proc.pid not in pids and os.getpid() not in pids, out
    assert len(pids) < 15, f"host processes are visible: {pids}"
    assert "elide-executor sandbox-init" in lines[-1], out
    # The task's view: the host read-only, its own dir writable.
    rc, _, _ = exec_cli(agent, alloc["ID"], "touch", "/etc/elide-exec-probe")
    assert rc != 0 and not os.path.exists("/etc/elide-exec-probe")
    rc, out, err = exec_cli(agent, alloc["ID"], "/bin/sh", "-c",
                            "touch $NOMAD_TASK_DIR/probe && pwd")
    assert rc == 0, err
    task_dir = out.decode().strip()
    assert os.path.exists(os.path.join(task_dir, "local", "probe")), task_dir


def test_eight_concurrent_execs_all_answer(shared_agent):
    agent = shared_agent
    alloc = running(agent, "exec-many")
    procs = [exec_popen(agent, alloc["ID"], "/bin/sh", "-c", "sleep 1; echo $0", str(i))
             for i in range(8)]
    for i, p in enumerate(procs):
        out, err = p.communicate(b"", timeout=120)
        assert (p.returncode, out) == (0, f"{i}\n".encode()), (i, p.returncode, out, err)


def test_a_missing_command_is_a_clear_error_and_the_task_keeps_running(shared_agent):
    agent = shared_agent
    alloc = running(agent, "exec-bad")
    before = runtime_row(agent, alloc["ID"])
    rc, out, err = exec_cli(agent, alloc["ID"], "no-such-command")
    assert rc == 127, (rc, out, err)
    assert b'elide: "no-such-command" was not found inside the task' in err, err
    rc, out, err = exec_cli(agent, alloc["ID"], "/bin/sh", "-c",
                            "printf '#!/bin/sh\\necho x\\n' > local/noexec.sh")
    assert rc == 0, err
    rc, out, err = exec_cli(agent, alloc["ID"], "local/noexec.sh")
    assert rc == 126 and b"permission denied" in err, (rc, out, err)
    # The task did not notice.
    ts = agent.wait_task(alloc["ID"], "t", "running")
    assert ts["Restarts"] == 0, nm.describe_task(ts)
    after = runtime_row(agent, alloc["ID"])
    assert after["runtime_pid"] == before["runtime_pid"] and after["state"] == "running"
    rc, out, _ = exec_cli(agent, alloc["ID"], "echo", "still", "here")
    assert (rc, out) == (0, b"still here\n")


def test_a_command_is_killed_when_the_client_goes_away_and_execs_die_with_the_task(shared_agent):
    agent = shared_agent
    alloc = running(agent, "exec-gone")
    # Nomad cancels an exec once its client is gone and the command's output has nowhere to
    # go (a silent command: once the CLI's heartbeats stop; unit-tested in the plugin).
    cli = exec_popen(agent, alloc["ID"], "/bin/sh", "-c", "while :; do echo tick; sleep 0.2; done",
                     "ticker1001")
    ticker = exec_started(agent, "ticker1001")
    assert cli.stdout.readline() == b"tick\n"
    cli.kill()
    cli.wait()
    assert not nm.wait_gone([ticker], 30), "the command outlived its disconnected client"
    assert agent.wait_task(alloc["ID"], "t", "running")["Restarts"] == 0
    # An exec that is still running when the task stops goes with it.
    cli = exec_popen(agent, alloc["ID"], "sleep", "1002")
    sleeper = exec_started(agent, "1002")
    agent.stop_job(alloc["JobID"])
    assert not nm.wait_gone([sleeper], 30), "the exec outlived its task"
    cli.communicate(timeout=60)
    assert cli.returncode != 0


def test_exec_works_after_an_agent_restart_and_a_plugin_crash(nomad_agent):
    agent = nomad_agent(mode="persistent", name="execrestart")
    agent.wait_driver_healthy()
    alloc = running(agent, "exec-restart")
    assert exec_cli(agent, alloc["ID"], "echo", "before")[:2] == (0, b"before\n")
    agent.restart()
    agent.wait_task(alloc["ID"], "t", "running")
    agent.wait_log(r"reattached to running shim", timeout=60)
    rc, out, err = exec_cli(agent, alloc["ID"], "/bin/sh", "-c", "echo after $NOMAD_TASK_NAME")
    assert (rc, out) == (0, b"after t\n"), err
    # The plugin dies: Nomad relaunches it, recovers the task, and exec goes through the new one.
    plugins = [p for p in agent.find_processes("nomad-driver-elide")
               if "plugins/nomad-driver-elide" in (p.cmdline or p.exe)]
    assert plugins
    seen = agent.log().count("reattached to running shim")
    for p in plugins:
        os.kill(p.pid, signal.SIGKILL)
    assert not nm.wait_gone(plugins, 30)
    # Nomad sees its WaitTask break, relaunches the plugin and recovers the task through it.
    agent.wait_log(r"(?s)(?:reattached to running shim.*?){%d}" % (seen + 1), timeout=60)
    rc, out, err = exec_cli(agent, alloc["ID"], "echo", "recovered")
    assert (rc, out) == (0, b"recovered\n"), (rc, out, err)
    agent.stop_job(alloc["JobID"])


def template_job(name: str, script_args: list[str], fail_on_error: bool) -> str:
    args = "[" + ", ".join(nm.hcl_string(a) for a in script_args) + "]"
    task = f"""
      template {{
        data        = <<EOT
{{{{ with nomadVar "nomad/jobs/{name}" }}}}{{{{ .color }}}}{{{{ end }}}}
EOT
        destination = "local/color.txt"
        change_mode = "script"
        change_script {{
          command       = "/bin/sh"
          args          = {args}
          timeout       = "20s"
          fail_on_error = {"true" if fail_on_error else "false"}
        }}
      }}
"""
    return nm.elide_job(name, APP, task=task, group=nm.NO_RESTART)


def put_var(agent, name: str, color: str) -> None:
    agent.cli("var", "put", "-force", f"nomad/jobs/{name}", f"color={color}")


def events_text(ts: dict) -> str:
    return nm.describe_task(ts)


def test_a_template_change_script_runs_in_the_task_and_the_task_keeps_running(shared_agent):
    agent = shared_agent
    name = "exec-tmpl"
    put_var(agent, name, "blue")
    job = agent.run_job(template_job(
        name, ["-c", 'echo "now $(cat local/color.txt) in $NOMAD_ALLOC_ID" >> local/changes.log'],
        fail_on_error=False))
    alloc = agent.first_alloc(job["ID"])
    agent.wait_task(alloc["ID"], "t", "running")
    agent.wait_logs(alloc["ID"], "t", "ready")
    before = runtime_row(agent, alloc["ID"])
    put_var(agent, name, "green")
    ev = agent.wait_task_event(alloc["ID"], "t", lambda e: "Template successfully ran script"
                               in (e.get("DisplayMessage") or ""))
    assert "/bin/sh" in ev["DisplayMessage"], ev
    task_dir = os.path.join(agent.data_dir, "alloc", alloc["ID"], "t")
    with open(os.path.join(task_dir, "local", "changes.log")) as f:
        assert f.read() == f"now green in {alloc['ID']}\n"
    ts = agent.wait_task(alloc["ID"], "t", "running")
    assert ts["Restarts"] == 0 and not ts["Failed"], events_text(ts)
    assert runtime_row(agent, alloc["ID"])["runtime_pid"] == before["runtime_pid"]


def test_a_failing_change_script_with_fail_on_error_kills_the_task_as_nomad_documents(shared_agent):
    agent = shared_agent
    name = "exec-tmpl-fail"
    put_var(agent, name, "blue")
    job = agent.run_job(template_job(name, ["-c", "echo broken >&2; exit 4"], fail_on_error=True))
    alloc = agent.first_alloc(job["ID"])
    agent.wait_task(alloc["ID"], "t", "running")
    agent.wait_logs(alloc["ID"], "t", "ready")
    put_var(agent, name, "red")
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    text = events_text(ts)
    # Nomad's template hook: a "Task hook failed" event naming the script and its exit code,
    # then the kill that fails the task.
    assert "Task hook failed: Template ran script /bin/sh with arguments [-c echo broken >&2; " \
           "exit 4] on change but it exited with code code: 4" in text, text
    assert "Template script failed, task is being killed" in text, text
    assert ts["Failed"], text
