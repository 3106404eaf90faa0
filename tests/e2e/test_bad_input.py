"""Issue 11: hostile and careless input through a real Nomad agent, as a table.

Every case is a job on one agent (module-scoped, jobs submitted together so they run side by
side). Refused inputs must fail the task with a message that names the problem and the fix —
asserted on the text a user sees (task events, `nomad alloc status`) — and leave the plugin
serving; odd-but-valid inputs (5,000 args, a 180-character task name, a script named "-x.py")
must work. Then what cannot be a table: a shim killed with SIGKILL (nothing of its task may
survive), a tampered state.json (never kills a stranger), stray signals, secrets at rest,
the runtime dir's permissions and litter.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import textwrap

import pytest

import nomad as nm

# --------------------------------------------------------------------------- jobs


def job_hcl(name: str, config: str, *, files: dict | None = None, task: str = "",
            group: str = nm.NO_RESTART, jtype: str = "batch", memory: int = 64,
            task_name: str = "t") -> str:
    """A job with one elide task `task_name`; `config` is the body of its config block;
    `files` maps task-dir paths to (content, perms) rendered by templates."""
    templates = ""
    for dest, (content, perms) in (files or {}).items():
        templates += f"""
      template {{
        destination = "{dest}"
        perms = "{perms}"
        left_delimiter  = "[["
        right_delimiter = "]]"
        data = <<EOT
{textwrap.dedent(content).strip()}
EOT
      }}"""
    return f"""
job "{name}" {{
  datacenters = ["dc1"]
  type = "{jtype}"
  group "g" {{
    {group}
    task "{task_name}" {{
      driver = "elide"
      config {{
        {config}
      }}
      {task}
      {templates}
      resources {{
        cpu    = 100
        memory = {memory}
      }}
    }}
  }}
}}
"""


OK_APP = {"local/app.py": ("print('ok from the app', flush=True)", "644")}


def hcl_list(items: list[str]) -> str:
    return "[" + ", ".join(nm.hcl_string(i) for i in items) + "]"


# (id, job keyword arguments, what the task events must say)
REFUSED = [
    ("script-dotdot-host", dict(config='script = "../../../../../usr/bin/python3.11"'),
     r"script \.\./\.\./\.\./\.\./\.\./usr/bin/python3\.11 is outside the task dir: it leads outside .* \(\"\.\.\"\); scripts are resolved inside the task dir"),
    ("script-dotdot-inner", dict(config='script = "local/../../t/../../x.py"', files=OK_APP),
     r"script local/\.\./\.\./t/\.\./\.\./x\.py is outside the task dir"),
    ("script-is-a-directory", dict(config='script = "local/pkg.py"',
                                   files={"local/pkg.py/main.py": ("print(1)", "644")}),
     r"script local/pkg\.py \(.*/local/pkg\.py\) is a directory; name the file to run"),
    ("script-missing", dict(config='script = "local/missing.py"', files=OK_APP),
     r"script local/missing\.py not found: it does not exist .*; create it in the task dir with a template or artifact block"),
    ("script-absolute-outside", dict(config='script = "/usr/lib/python3.11/os.py"'),
     r"script /usr/lib/python3\.11/os\.py is an absolute path outside the task dir, and this node allows absolute scripts only under the plugin's absolute_script_dirs \(.*apps.*\)"),
    ("script-absolute-executable", dict(config='script = "{apps}/exec.py"'),
     r"script .*/apps/exec\.py is executable; Elide would run it as a host program .* clear its execute bits \(chmod a-x"),
    ("script-absolute-dotdot", dict(config='script = "{apps}/../escape.py"'),
     r"script .*/apps/\.\./escape\.py leads outside .*apps"),
    ("script-no-extension", dict(config='script = "local/app"', files=OK_APP),
     r"config\.script: \"local/app\" has no file extension"),
    ("script-with-equals", dict(config='script = "local/a=b.py"', files=OK_APP),
     r"config\.script: \"local/a=b\.py\" contains \"=\""),
    ("args-with-nul", dict(config='script = "local/app.py"\nargs = ["a\\u0000b"]', files=OK_APP),
     r"config\.args\[0\]: contains a NUL byte"),
    ("env-key-with-equals", dict(config='script = "local/app.py"\nenv = { "A=B" = "c" }', files=OK_APP),
     r"config\.env: \"A=B\" is not a valid environment variable name"),
    ("env-key-with-newline", dict(config='script = "local/app.py"\nenv = { "LD_PRELOAD=/tmp/x.so\\nFOO" = "bar" }',
                                  files=OK_APP),
     r"config\.env: \"LD_PRELOAD=/tmp/x\.so\\nFOO\" is not a valid environment variable name"),
    ("env-value-with-nul", dict(config='script = "local/app.py"\nenv = { A = "x\\u0000y" }', files=OK_APP),
     r"config\.env: the value of A contains a NUL byte"),
    ("env-value-too-big", dict(config='script = "local/app.py"\nenv = { BIG = "' + "x" * 200_000 + '" }',
                               files=OK_APP),
     r"config\.env: the variable BIG is 200005 bytes, over the kernel.s 131072-byte limit .*pass large data in a file"),
    ("unknown-language", dict(config='script = "local/app.py"\nelide_opts {\n  languages = ["python", "cobol"]\n}',
                              files=OK_APP),
     r"config\.elide_opts\.languages\[1\]: \"cobol\" is not a language Elide runs; use one of python"),
    ("memory-limit-negative", dict(config='script = "local/app.py"\nelide_opts {\n  memory_limit = -5\n}',
                                   files=OK_APP),
     r"config\.elide_opts\.memory_limit: .*-5"),
    ("memory-limit-over-the-task", dict(config='script = "local/app.py"\nelide_opts {\n  memory_limit = 4096\n}',
                                        files=OK_APP, memory=64),
     r"elide_opts\.memory_limit \(4096 MiB\) is more than the task's memory limit \(64 MiB\)"),
    ("memory-limit-and-xmx", dict(config='script = "local/app.py"\nruntime_options = ["-Xmx1g"]\n'
                                         'elide_opts {\n  memory_limit = 32\n}', files=OK_APP),
     r"config\.elide_opts\.memory_limit: and an -Xmx in config\.runtime_options both set the heap"),
    ("unknown-key", dict(config='script = "local/app.py"\ncolour = "blue"', files=OK_APP),
     r"colour"),
    ("args-not-a-list", dict(config='script = "local/app.py"\nargs = "not-a-list"', files=OK_APP),
     r"args|list of string|Incorrect attribute value type"),
    ("unknown-mode", dict(config='script = "local/app.py"\nmode = "debug"', files=OK_APP),
     r"config\.mode: \"debug\" is not one of \"run\", \"serve\", \"test\""),
    ("unknown-guest-env", dict(config='script = "local/app.py"\nguest_env = "all"', files=OK_APP),
     r"config\.guest_env: \"all\" is not one of \"host\", \"nomad\", \"none\""),
    ("runtime-option-not-an-option", dict(config='script = "local/app.py"\nruntime_options = ["Xmx1g"]',
                                          files=OK_APP),
     r"config\.runtime_options\[0\]: \"Xmx1g\" is not an option"),
    ("flag-double-dash", dict(config='script = "local/app.py"\nflags = ["--"]', files=OK_APP),
     r"config\.flags\[0\]: \"--\" is added by the driver"),
    ("arg-swallowed-by-graalvm", dict(config='script = "local/app.py"\nargs = ["-Dmode=fast"]', files=OK_APP),
     r"config\.args: 1 argument would never reach the guest: \[0\] \"-Dmode=fast\""),
    ("pids-limit-negative", dict(config='script = "local/app.py"\npids_limit = -1', files=OK_APP),
     r"config\.pids_limit: .*-1"),
    ("elide-binary-missing", dict(config='script = "local/app.py"\nelide_opts {\n  elide_binary = "/nonexistent/elide"\n}',
                                  files=OK_APP),
     r"config\.elide_opts\.elide_binary \"/nonexistent/elide\" is not an Elide binary the operator allows"),
    ("user-missing", dict(config='script = "local/app.py"', files=OK_APP, task='user = "no-such-user-h11"'),
     r"task user \"no-such-user-h11\" does not exist on this node"),
]

ARGV_APP = {"local/app.py": ("""
import sys
print("ARGC", len(sys.argv) - 1, sys.argv[1], sys.argv[-1], flush=True)
""", "644")}

# (id, job keyword arguments, what the task's stdout must hold)
WORKS = [
    ("five-thousand-args", dict(config='script = "local/app.py"\nargs = ' + hcl_list([f"a{i}" for i in range(5000)]),
                                files=ARGV_APP),
     "ARGC 5000 a0 a4999"),
    ("task-name-180-chars", dict(config='script = "local/app.py"', files=OK_APP, task_name="n" * 180),
     "ok from the app"),
    ("script-starting-with-dash", dict(config='script = "local/-dash.py"',
                                       files={"local/-dash.py": ("print('dash ok', flush=True)", "644")}),
     "dash ok"),
    ("script-executable-in-task-dir", dict(config='script = "local/app.py"',
                                           files={"local/app.py": ("print('exec bits cleared', flush=True)", "755")}),
     "exec bits cleared"),
    ("script-absolute-in-task-dir", dict(config='script = "${NOMAD_TASK_DIR}/app.py"', files=OK_APP),
     "ok from the app"),
    ("script-absolute-allowed", dict(config='script = "{apps}/ok.py"'), "ok from an allowed dir"),
]


def events_text(ts: dict) -> str:
    return " | ".join(f"{e['Type']}: {e.get('DisplayMessage', '')} {e.get('ValidationError', '')} "
                      f"{e.get('DriverError', '')}" for e in ts["Events"])


def case_hcl(cid: str, kw: dict, apps: str) -> str:
    kw = dict(kw)
    kw["config"] = kw["config"].replace("{apps}", apps)
    return job_hcl(cid, **kw)


# --------------------------------------------------------------------------- the agent


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    """A directory the operator allows absolute scripts in, and a setuid file outside."""
    d = tmp_path_factory.mktemp("allowed") / "apps"
    d.mkdir()
    (d / "ok.py").write_text("print('ok from an allowed dir', flush=True)\n")
    os.chmod(d / "ok.py", 0o644)
    (d / "exec.py").write_text("print('never run')\n")
    os.chmod(d / "exec.py", 0o755)
    (d.parent / "escape.py").write_text("print('escaped')\n")
    return str(d)


@pytest.fixture(scope="module")
def bad_agent(nomad_bin, binaries, tmp_path_factory, apps):
    from conftest import AgentFactory
    factory = AgentFactory(nomad_bin, binaries, str(tmp_path_factory.mktemp("badinput")),
                           lambda a: None)
    # allow_host_pid: the SIGKILL case below runs with pid_mode = "host" too.
    agent = factory({"absolute_script_dirs": [apps], "allow_host_pid": True}, name="bad")
    agent.wait_driver_healthy()
    yield agent
    problems = factory.teardown()
    if problems:
        pytest.fail("teardown of the bad-input agent:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def submitted(bad_agent, apps):
    """Every table case registered up front: they run side by side. {case id: alloc id}."""
    python_mode = os.stat("/usr/bin/python3.11").st_mode
    out = {}
    for cid, kw, _ in REFUSED + WORKS:
        job = bad_agent.run_job(case_hcl(cid, kw, apps))
        out[cid] = bad_agent.first_alloc(job["ID"])["ID"]
    yield out
    # Nothing outside the task dir was ever changed.
    assert os.stat("/usr/bin/python3.11").st_mode == python_mode
    assert stat.S_IMODE(os.stat(os.path.join(apps, "exec.py")).st_mode) == 0o755


@pytest.mark.parametrize("cid,kw,expect", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_input_fails_the_task_naming_the_problem(bad_agent, submitted, cid, kw, expect):
    aid = submitted[cid]
    name = kw.get("task_name", "t")
    ts = bad_agent.wait_task(aid, name, "dead")
    text = events_text(ts)
    assert ts["Failed"], text
    assert re.search(expect, text), f"{expect!r} not in: {text}"
    assert not any(e["Type"] == "Started" for e in ts["Events"]), f"it ran: {text}"


@pytest.mark.parametrize("cid,kw,expect", WORKS, ids=[c[0] for c in WORKS])
def test_odd_but_valid_input_works(bad_agent, submitted, cid, kw, expect):
    aid = submitted[cid]
    name = kw.get("task_name", "t")
    ts = bad_agent.wait_task(aid, name, "dead")
    assert not ts["Failed"] and nm.exit_code_of(ts) == 0, nm.describe_task(ts)
    out = bad_agent.logs(aid, name)
    assert expect in out, out
    if cid == "script-executable-in-task-dir":
        assert "Cleared the execute bits of local/app.py" in events_text(ts)


def test_the_refusals_are_shown_by_alloc_status_and_the_plugin_keeps_serving(bad_agent, submitted):
    out = bad_agent.cli("alloc", "status", submitted["script-dotdot-host"]).stdout
    assert "is outside the task dir" in out, out
    assert bad_agent.driver()["Healthy"], bad_agent.driver()


# --------------------------------------------------------------------------- the rest

SETUID_SWAP_APP = """
import os, sys
os.remove("local/app.py")
os.symlink(sys.argv[1], "local/app.py")
print("replaced my script with a symlink to", sys.argv[1], flush=True)
sys.exit(1)
"""


def test_a_task_that_swaps_its_script_for_a_symlink_to_a_setuid_binary_is_refused(bad_agent, tmp_path):
    """The issue's reproduction: the next start used to chmod the setuid binary 04755 -> 04644."""
    victim = tmp_path / "setuid-victim"
    shutil.copy("/bin/true", victim)
    os.chmod(victim, 0o4755)
    hcl = job_hcl("swap", f'script = "local/app.py"\nargs = ["{victim}"]',
                  files={"local/app.py": (SETUID_SWAP_APP, "644")},
                  group='restart {\n  attempts = 1\n  delay = "1s"\n  interval = "1h"\n  mode = "fail"\n}\n'
                        'reschedule {\n  attempts = 0\n  unlimited = false\n}')
    job = bad_agent.run_job(hcl)
    aid = bad_agent.first_alloc(job["ID"])["ID"]
    ts = bad_agent.wait_task(aid, "t", "dead", pred=lambda t: t["Failed"], timeout=120)
    text = events_text(ts)
    assert "script local/app.py is a symlink or passes through one" in text, text
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o4755, oct(os.stat(victim).st_mode)


GRANDCHILDREN_APP = """
import subprocess, sys, time
a = subprocess.Popen(["sleep", "1000"])
b = subprocess.Popen(["setsid", "sleep", "1000"])
print("children", a.pid, b.pid, flush=True)
while True:
    time.sleep(1)
"""


def cgroup_root_version() -> str:
    return "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1"


def row_of(agent, alloc_id: str) -> dict:
    return next(r for r in nm.executor_status(agent) if r["alloc_id"] == alloc_id)


@pytest.mark.parametrize("pid_mode", ["private", "host"])
def test_stray_signals_and_sigfoo_leave_the_task_alone_and_a_killed_shim_leaves_nothing(
        bad_agent, pid_mode):
    agent = bad_agent
    job = agent.run_job(job_hcl(f"kill9-{pid_mode}",
                                f'script = "local/app.py"\n pid_mode = "{pid_mode}"',
                                jtype="service",
                                files={"local/app.py": (GRANDCHILDREN_APP, "644")}))
    aid = agent.first_alloc(job["ID"])["ID"]
    agent.wait_task(aid, "t", "running")
    out = agent.wait_logs(aid, "t", "children ")
    row = row_of(agent, aid)
    assert f"--task {row['task_id']}" in nm.proc_info(row["shim_pid"]).cmdline, row
    # The app prints its children's pids as its PID namespace numbers them: find them on the
    # host below the namespace's init (the row's runtime_pid), by their NSpid.
    ns_pids = [int(p) for p in re.search(r"children (\d+) (\d+)", out).groups()]
    children = nm.in_pid_namespace_of(row["runtime_pid"], ns_pids)
    assert all(children), (ns_pids, row)
    assert all(c.cmdline == "sleep 1000" for c in children), [c.describe() for c in children]
    # And everything else of the task: the init (private), the runtime and all below them.
    task = [nm.proc_info(row["runtime_pid"])] + nm.descendants(row["runtime_pid"])
    assert len(task) >= (4 if pid_mode == "private" else 3) and all(task), task

    # `nomad alloc signal -s SIGFOO`: refused, naming the signal; the task is unharmed.
    r = agent.cli("alloc", "signal", "-s", "SIGFOO", aid, "t", check=False)
    assert r.returncode != 0 and "SIGFOO" in (r.stdout + r.stderr), r
    # Signals a careless operator or script might send the shim do not kill it.
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGPIPE):
        os.kill(row["shim_pid"], sig)
    again = row_of(agent, aid)
    assert again["reachable"] and again["state"] == "running", again
    assert again["shim_pid"] == row["shim_pid"] and again["runtime_pid"] == row["runtime_pid"]
    assert all(nm.is_alive(c) for c in children)

    # kill -9 of the shim: the runtime (or, with a private PID namespace, its init) dies of
    # PDEATHSIG, and the children (one left the group with setsid) must not live on.
    key = row["key"]
    own_cgroups = [d for d in row["cgroup"].split(",") if d.endswith(key)]
    os.kill(row["shim_pid"], signal.SIGKILL)
    ts = agent.wait_task(aid, "t", "dead")
    text = events_text(ts)
    assert "died unexpectedly" in text, text
    if pid_mode == "host":
        # Nothing but the plugin's clean-up ends the orphaned children here.
        assert "was killed so nothing is left orphaned" in text, text
    else:
        # The kernel ends the whole namespace with its init; whether the plugin still found
        # some of it dying is a race, so either account is right.
        assert ("was killed so nothing is left orphaned" in text
                or "nothing of the task was left running" in text), text
    left = nm.wait_gone(children + task, 15)
    assert not left, "outlived the shim: " + ", ".join(p.describe() for p in left)
    if os.geteuid() == 0:
        assert own_cgroups, row
    for d in own_cgroups:
        assert not os.path.exists(d), f"{d} left behind"
    for f in (f"{key}.sock", f"{key}.state"):
        assert not os.path.lexists(os.path.join(agent.runtime_dir, f)), f
    agent.stop_job(job["ID"])


def make_stranger_cgroups(tag: str) -> list[str]:
    """Cgroups of an unrelated process, the way a tampered state file would name them."""
    if cgroup_root_version() == "v2":
        dirs = [f"/sys/fs/cgroup/{tag}"]
    else:
        dirs = [f"/sys/fs/cgroup/{c}/{tag}" for c in ("memory", "freezer")]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    return dirs


def test_a_tampered_state_file_never_gets_an_unrelated_process_killed(bad_agent):
    agent = bad_agent
    stranger = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    nm.OWN_CHILDREN.add(stranger.pid)
    tag = f"h11-stranger-{stranger.pid}"
    dirs = make_stranger_cgroups(tag)
    try:
        for d in dirs:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(stranger.pid))
        job = agent.run_job(job_hcl("tamper", 'script = "local/app.py"', jtype="service",
                                    files={"local/app.py": (GRANDCHILDREN_APP, "644")}))
        aid = agent.first_alloc(job["ID"])["ID"]
        agent.wait_logs(aid, "t", "children ")
        row = row_of(agent, aid)
        with open(row["state_file"]) as f:
            st = json.load(f)
        me = nm.proc_info(stranger.pid)
        st["runtime_pid"] = stranger.pid
        st["runtime_start_time"] = me.start
        st["cgroup"] = ",".join(dirs)
        with open(row["state_file"], "w") as f:
            json.dump(st, f)
        os.kill(row["shim_pid"], signal.SIGKILL)
        ts = agent.wait_task(aid, "t", "dead")
        assert "died unexpectedly" in events_text(ts), events_text(ts)
        assert stranger.poll() is None, "an unrelated process named by a tampered state file was killed"
        assert nm.is_alive(me)
        agent.stop_job(job["ID"])
    finally:
        stranger.kill()
        stranger.wait()
        nm.OWN_CHILDREN.discard(stranger.pid)
        for d in dirs:
            os.rmdir(d)


SECRET_APP = """
import hashlib, os, time
for k in ("NOMAD_TOKEN", "VAULT_TOKEN"):
    v = os.environ.get(k, "")
    print(k, "len", len(v), "sha", hashlib.sha256(v.encode()).hexdigest()[:12], flush=True)
while True:
    time.sleep(1)
"""
VAULT_VALUE = "h11-vault-secret-9f2c7e"


def files_containing(root: str, needle: bytes, skip: tuple[str, ...] = ()) -> list[str]:
    hits = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for n in filenames:
            p = os.path.join(dirpath, n)
            try:
                st = os.lstat(p)
                if not stat.S_ISREG(st.st_mode):
                    continue
                with open(p, "rb") as f:
                    if needle in f.read():
                        hits.append(p)
            except OSError:
                pass
    return hits


def test_secrets_stay_off_the_disk_and_the_runtime_dir_is_private(bad_agent):
    agent = bad_agent
    job = agent.run_job(job_hcl("secrets", 'script = "local/app.py"', jtype="service",
                                files={"local/app.py": (SECRET_APP, "644")},
                                task=f'env {{\n  VAULT_TOKEN = "{VAULT_VALUE}"\n}}\n'
                                     'identity {\n  env = true\n}'))
    aid = agent.first_alloc(job["ID"])["ID"]
    out = agent.wait_logs(aid, "t", "VAULT_TOKEN len")
    assert f"VAULT_TOKEN len {len(VAULT_VALUE)}" in out, out
    row = row_of(agent, aid)
    # The runtime itself (the row's runtime_pid is the PID namespace's init above it).
    runtime = nm.runtime_of(row["runtime_pid"])
    assert runtime and "elide-executor" not in runtime.cmdline, (row, runtime)
    environ = open(f"/proc/{runtime.pid}/environ", "rb").read().split(b"\0")
    env = dict(e.split(b"=", 1) for e in environ if b"=" in e)
    nomad_token = env.get(b"NOMAD_TOKEN", b"")
    assert len(nomad_token) > 20 and env.get(b"VAULT_TOKEN") == VAULT_VALUE.encode(), sorted(env)
    alloc_dir = os.path.join(agent.data_dir, "alloc", aid)
    task_dir = os.path.join(alloc_dir, "t")
    skip = (os.path.join(task_dir, "secrets"), os.path.join(task_dir, "private"))
    for needle in (nomad_token, VAULT_VALUE.encode()):
        for where in (alloc_dir, agent.runtime_dir):
            hits = files_containing(where, needle, skip)
            assert not hits, f"a secret is on disk in {hits}"
        assert needle.decode() not in json.dumps(nm.executor_status(agent))
    # Only root can reach the shims.
    assert stat.S_IMODE(os.stat(agent.runtime_dir).st_mode) == 0o700
    sock = os.path.join(agent.runtime_dir, f"{row['key']}.sock")
    assert stat.S_ISSOCK(os.stat(sock).st_mode) and stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    agent.stop_job(job["ID"])


def test_no_litter_is_left_in_the_runtime_dir_after_the_tasks_end(bad_agent, submitted):
    agent = bad_agent
    agent.stop_all_jobs()
    left = sorted(os.listdir(agent.runtime_dir))
    # The running plugin's own notify socket stays while it runs (it removes it on exit).
    notify = [f for f in left if re.fullmatch(r"notify-\d+\.sock", f)]
    plugins = [p.pid for p in agent.find_processes(agent.plugin_path) if p.state not in "ZX"]
    assert notify == [f"notify-{pid}.sock" for pid in plugins], (left, plugins)
    left = [f for f in left if f not in notify]
    assert left == [], f"left in {agent.runtime_dir}: {left}"
