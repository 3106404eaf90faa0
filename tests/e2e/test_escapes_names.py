"""Issue 18 (items 2, 5, 10, 14): escapes through task names and through what a task can plant
where the shim (root) writes, rerun on a real agent.

- A task named `.elide` gets `<alloc>/.elide` — where every shim of the allocation keeps its
  state — as its writable task dir; a task named `.` gets the whole alloc dir. Next to a
  victim task, the attacker reads the victim's state dir and secrets and plants
  `state.json.tmp<shim pid>` as a symlink to a host file, which the victim's shim overwrote
  with JSON when the victim exited. The driver refuses such names at StartTask.
- With `log_collection = "nomad"` a task replaces `alloc/logs` with a symlink between runs; the
  shim appended the next run's output to a root-owned file of the FIFO's name wherever it
  pointed.
- A symlink planted as `<task>.stdout.9223372036854775807` made the rotator drop all of the
  task's stdout ("log file index exhausted").

Each case asserts the attack fails with a clear task event (or that output still arrives),
that the host file did not change, and that the victim's files stayed unread.
"""
from __future__ import annotations

import os
import textwrap

import pytest

import nomad as nm

HOST_TEXT = "precious host file\n"

# The attacker: finds every shim state dir of the allocation, reads the victim's secrets,
# plants symlinks to the host file where the shims write, then tells the victim to exit.
ATTACKER = r'''
import glob, json, os
host = os.environ["HOST_FILE"]
alloc = os.environ["NOMAD_ALLOC_DIR"].rsplit("/", 1)[0]
done = []
for d in glob.glob(alloc + "/.elide/*/"):
    try:
        with open(d + "state.json") as f:
            pid = json.load(f)["shim_pid"]
    except Exception as e:
        done.append("unreadable " + d + ": " + str(e))
        continue
    for name in ("state.json.tmp%d" % pid, "state.json.lock.tmp"):
        try:
            os.symlink(host, d + name)
            done.append("planted " + d + name)
        except OSError as e:
            done.append("cannot plant " + d + name + ": " + str(e))
for p in glob.glob(alloc + "/victim/secrets/*"):
    try:
        with open(p) as f:
            done.append("stole " + p + ": " + f.read())
    except OSError as e:
        done.append("cannot read " + p + ": " + str(e))
with open(alloc + "/alloc/stolen", "w") as f:
    f.write("\n".join(done))
open(alloc + "/alloc/planted", "w").close()
print("\n".join(done), flush=True)
'''

# The victim: holds a secret, exits once the attacker is done (or after a minute), which
# makes its shim write its state file.
VICTIM = r'''
import os, time
a = os.environ["NOMAD_ALLOC_DIR"]
for _ in range(600):
    if os.path.exists(a + "/planted"):
        break
    time.sleep(0.1)
print("victim exits", flush=True)
'''


def task_hcl(name: str, script: str, *, extra: str = "", env: dict | None = None) -> str:
    env_hcl = ""
    if env:
        env_hcl = "env {\n" + "".join(f"  {k} = {nm.hcl_string(v)}\n" for k, v in env.items()) + "}\n"
    return f"""
    task {nm.hcl_string(name)} {{
      driver = "elide"
      config {{
        script = "local/app.py"
      }}
      {env_hcl}
      {extra}
      template {{
        destination = "local/app.py"
        perms = "644"
        left_delimiter  = "[["
        right_delimiter = "]]"
        data = <<EOT
{textwrap.dedent(script).strip()}
EOT
      }}
      resources {{
        cpu    = 100
        memory = 64
      }}
    }}"""


def job_hcl(name: str, tasks: list[str], *, group: str = nm.NO_RESTART, jtype: str = "batch") -> str:
    return f"""
job "{name}" {{
  datacenters = ["dc1"]
  type = "{jtype}"
  group "g" {{
    {group}
    {''.join(tasks)}
  }}
}}
"""


def events_text(ts: dict) -> str:
    return " | ".join(f"{e['Type']}: {e.get('DisplayMessage', '')} {e.get('DriverError', '')}"
                      for e in ts["Events"])


def alloc_path(agent, alloc_id: str, *rest: str) -> str:
    return os.path.join(agent.data_dir, "alloc", alloc_id, *rest)


@pytest.fixture
def host_file(tmp_path):
    """A root-owned host file outside every allocation; the attacks aim at it."""
    p = tmp_path / "host-file"
    p.write_text(HOST_TEXT)
    os.chmod(p, 0o600)
    return str(p)


@pytest.mark.parametrize("attacker", [".elide", "."])
def test_a_task_named_like_the_alloc_dir_or_the_state_root_is_refused(shared_agent, host_file,
                                                                      attacker):
    agent = shared_agent
    # The victim is a prestart sidecar: its shim is up (and its state written) before Nomad
    # even builds the attacker's task dir.
    victim = task_hcl("victim", VICTIM, extra="""
      lifecycle {
        hook = "prestart"
        sidecar = true
      }
      template {
        destination = "secrets/secret.txt"
        data = "victim-secret-value"
      }""")
    bad = task_hcl(attacker, ATTACKER, env={"HOST_FILE": host_file})
    job = agent.run_job(job_hcl("names-" + ("dot" if attacker == "." else "elide"), [victim, bad]))
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], attacker, "dead")
    # The victim is stopped with its failed sibling (its shim writes its exit then).
    vs = agent.wait_task(alloc["ID"], "victim", "dead")
    with open(host_file) as f:
        body = f.read()
    assert body == HOST_TEXT, f"the host file was overwritten with: {body[:300]}"
    # The attacker never ran: nothing planted, nothing read.
    shared = alloc_path(agent, alloc["ID"], "alloc")
    stolen = os.path.join(shared, "stolen")
    assert not os.path.exists(stolen), open(stolen).read()
    assert not os.path.exists(os.path.join(shared, "planted"))
    assert "victim exits" not in agent.logs(alloc["ID"], "victim"), events_text(vs)
    text = events_text(ts)
    assert ts["Failed"], text
    assert f'task name "{attacker}" is refused' in text and "rename the task" in text, text
    assert not any(e["Type"] == "Started" for e in ts["Events"]), text
    root = alloc_path(agent, alloc["ID"], ".elide")
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + dirnames:
            p = os.path.join(dirpath, n)
            assert not os.path.islink(p), f"planted: {p} -> {os.readlink(p)}"
            assert ".tmp" not in n, f"temp file left: {p}"


def test_a_symlinked_alloc_logs_is_not_followed_with_log_collection_nomad(nomad_agent, tmp_path):
    agent = nomad_agent({"log_collection": "nomad"})
    agent.wait_driver_healthy()
    # A root-owned file named like the task's FIFO, outside the allocation.
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / ".t.stdout.fifo"
    target.write_text(HOST_TEXT)
    os.chmod(target, 0o600)
    app = f"""
import os, sys
logs = os.environ["NOMAD_ALLOC_DIR"] + "/logs"
if os.path.islink(logs):
    print("second run: this must not reach {target}", flush=True)
    sys.exit(0)
os.rename(logs, logs + ".old")
os.symlink({str(outside)!r}, logs)
print("first run: alloc/logs is now a symlink", flush=True)
sys.exit(1)
"""
    group = ('restart {\n  attempts = 1\n  delay = "1s"\n  mode = "fail"\n}\n'
             'reschedule {\n  attempts = 0\n  unlimited = false\n}')
    job = agent.run_job(nm.elide_job("logs-symlink", app, jtype="batch", group=group))
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead", pred=lambda t: t["Restarts"] >= 1)
    body = target.read_text()
    assert body == HOST_TEXT, f"the task's output reached the file outside: {body!r}"
    text = events_text(ts)
    assert ts["Failed"], text
    assert "symlink" in text and "refusing to write task output" in text, text
    assert not target.is_symlink() and target.is_file()


def test_a_log_file_planted_at_the_highest_index_does_not_swallow_the_output(shared_agent):
    agent = shared_agent
    plant = task_hcl("plant", """
import os
logs = os.environ["NOMAD_ALLOC_DIR"] + "/logs"
os.symlink("/etc/hostname", logs + "/t.stdout.9223372036854775807")
open(logs + "/t.stderr.9223372036854775807", "w").close()
print("planted", flush=True)
""", extra='lifecycle {\n  hook = "prestart"\n}')
    main = task_hcl("t", """
import sys
print("hello after the plant", flush=True)
print("and on stderr", file=sys.stderr, flush=True)
""")
    job = agent.run_job(job_hcl("logs-max-index", [plant, main]))
    alloc = agent.first_alloc(job["ID"])
    ps = agent.wait_task(alloc["ID"], "plant", "dead")
    assert not ps["Failed"], events_text(ps)
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    assert nm.exit_code_of(ts) == 0, nm.describe_task(ts)
    logs = alloc_path(agent, alloc["ID"], "alloc", "logs")
    with open(os.path.join(logs, "t.stdout.0")) as f:
        assert f.read() == "hello after the plant\n"
    with open(os.path.join(logs, "t.stderr.0")) as f:
        assert f.read() == "and on stderr\n"
    assert "exhausted" not in events_text(ts), events_text(ts)
    assert os.path.islink(os.path.join(logs, "t.stdout.9223372036854775807"))
