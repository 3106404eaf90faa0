"""Issue #18 items 1, 3, 4, 11, 13 (and the operator options behind them) through a real agent.

Each reproduction from the issue is rerun as a hostile job, next to a victim job where the
attack needs one, and must now fail with a task event that names the rule (and the plugin
option that would allow it), while nothing on the host changes and the victim's files and
environment stay unread:

- item 3: `elide_opts.elide_binary` naming a host program (a root-only reader under /root),
  another allocation's `local/` file, or /bin/cat; the operator's `elide_versions` still work;
- item 4: `pid_mode = "host"` reading a victim's SECRET_TOKEN from /proc/<pid>/environ,
  `ipc_mode = "host"` reading a host process's 0600 SysV shared memory; both work where the
  operator allows them; a job's `pids_limit = 0` under the operator's 50;
- item 11: log rotation larger than the operator's budget;
- item 13: `user = "--service=files"` (getent would answer root);
- item 1: the fingerprint never runs an Elide in a world-writable directory.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import stat
import uuid

import pytest

import nomad as nm

SECRET = "e2e-secret-" + uuid.uuid4().hex[:12]
ALT_VERSION = "1.1.0-e2e"


def events_text(ts: dict) -> str:
    return " | ".join(f"{e['Type']}: {e.get('DisplayMessage', '')} {e.get('DriverError', '')}"
                      for e in ts["Events"])


def refused(agent, job_hcl: str) -> tuple[str, str]:
    """Runs a job whose task must be refused before anything runs: (events, stdout)."""
    job = agent.run_job(job_hcl)
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    text = events_text(ts)
    assert ts["Failed"], text
    assert not any(e["Type"] == "Started" for e in ts["Events"]), f"it ran: {text}"
    return text, log_files(agent, alloc["ID"])


def log_files(agent, alloc_id: str) -> str:
    """Whatever the task wrote to its log files (none for a task that never ran)."""
    d = os.path.join(agent.data_dir, "alloc", alloc_id, "alloc", "logs")
    out = ""
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        if name.startswith("t.std") and not name.endswith(".fifo"):
            with open(os.path.join(d, name), errors="replace") as f:
                out += f.read()
    return out


def job(name: str, script: str, **kw) -> str:
    kw.setdefault("jtype", "batch")
    kw["group"] = nm.NO_RESTART + "\n" + kw.get("group", "")
    return nm.elide_job(name, script, **kw)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def host_secret():
    """A root-only file under /root and a reader script next to it (the issue's item 3)."""
    d = f"/root/nde-e2e-{uuid.uuid4().hex[:8]}"
    os.mkdir(d, 0o700)
    secret = os.path.join(d, "secret")
    with open(secret, "w") as f:
        f.write(SECRET + "-host\n")
    os.chmod(secret, 0o600)
    reader = os.path.join(d, "reader")
    with open(reader, "w") as f:
        f.write(f"#!/bin/sh\ncat {secret}\n")
    os.chmod(reader, 0o755)
    yield {"dir": d, "secret": secret, "reader": reader}
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def alt_elide(tmp_path_factory):
    """An operator-listed second Elide: a self-contained, root-owned install dir (only
    that dir is visible in the sandbox) holding a copy of the stand-in and a wrapper that
    reports its own version and runs that copy."""
    d = tmp_path_factory.mktemp("elide-alt") / "elide-1.1"
    d.mkdir(mode=0o755)
    os.chmod(d.parent, 0o755)
    standin_src = os.path.dirname(nm.STANDIN)
    copy = d / "standin"
    copy.mkdir(mode=0o755)
    shutil.copy2(nm.STANDIN, copy / "elide")
    shutil.copytree(os.path.join(standin_src, "support"), copy / "support")
    b = d / "elide"
    b.write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then echo {ALT_VERSION}; exit 0; fi\n'
                 f'exec {copy / "elide"} "$@"\n')
    os.chmod(b, 0o755)
    return str(b)


@pytest.fixture(scope="module")
def strict(nomad_bin, binaries, tmp_path_factory, alt_elide):
    """The default isolation, with an operator pids_limit and one extra Elide version."""
    from conftest import AgentFactory
    factory = AgentFactory(nomad_bin, binaries, str(tmp_path_factory.mktemp("strict")),
                           lambda a: None)
    agent = factory({"pids_limit": 50, "elide_versions": {"1.1": alt_elide}}, name="strict")
    agent.wait_driver_healthy()
    yield agent
    problems = factory.teardown()
    if problems:
        pytest.fail("teardown of the strict agent:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def victim(strict):
    """A running job with a secret in its env, its secrets/ and its local/, and a helper
    script in local/ that prints them."""
    hcl = nm.elide_job("victim", "import time\nwhile True:\n    time.sleep(1)\n", task=f"""
      env {{
        SECRET_TOKEN = "{SECRET}-env"
      }}
      template {{
        destination = "secrets/token"
        perms = "600"
        data = "{SECRET}-secrets"
      }}
      template {{
        destination = "local/secret.txt"
        perms = "600"
        data = "{SECRET}-local"
      }}
      template {{
        destination = "local/show.sh"
        perms = "755"
        data = <<EOT
#!/bin/sh
cat "$(dirname "$0")/secret.txt" "$(dirname "$0")/../secrets/token"
EOT
      }}""")
    j = strict.run_job(hcl)
    alloc = strict.first_alloc(j["ID"])
    strict.wait_task(alloc["ID"], "t", "running")
    task_dir = os.path.join(strict.data_dir, "alloc", alloc["ID"], "t")
    before = {p: (os.stat(p).st_mtime_ns, open(p).read())
              for p in (os.path.join(task_dir, "local/secret.txt"),
                        os.path.join(task_dir, "secrets/token"))}
    yield {"alloc": alloc, "task_dir": task_dir}
    # The victim's files are as they were, and it is still running.
    for p, (mtime, content) in before.items():
        assert (os.stat(p).st_mtime_ns, open(p).read()) == (mtime, content), p
    ts = strict.alloc(alloc["ID"])["TaskStates"]["t"]
    assert ts["State"] == "running", nm.describe_task(ts)


def assert_unread(agent, text: str, out: str) -> None:
    assert SECRET not in text + out, f"a secret leaked: {text}\n{out}"
    assert agent.driver()["Healthy"], agent.driver()


# --------------------------------------------------------------------------- item 3


ELIDE_BINARY_CASES = [
    ("root-reader", lambda s, v: s["reader"]),
    ("other-alloc", lambda s, v: os.path.join(v["task_dir"], "local/show.sh")),
    ("bin-cat", lambda s, v: "/bin/cat"),
    ("relative", lambda s, v: "local/elide"),
]


@pytest.mark.parametrize("cid,path", ELIDE_BINARY_CASES, ids=[c[0] for c in ELIDE_BINARY_CASES])
def test_a_job_cannot_pick_a_program_as_its_elide(strict, victim, host_secret, alt_elide, cid, path):
    p = path(host_secret, victim)
    text, out = refused(strict, job(f"bin-{cid}", "print('never')", config=f"""
        elide_opts {{
          elide_binary = {nm.hcl_string(p)}
        }}"""))
    assert re.search(re.escape(f'config.elide_opts.elide_binary "{p}" is not an Elide binary '
                               "the operator allows"), text), text
    assert f'use elide_version = one of "1.1" ({alt_elide})' in text, text
    assert "Starting Elide" not in text, text
    assert_unread(strict, text, out)
    assert stat.S_IMODE(os.stat(host_secret["secret"]).st_mode) == 0o600


def test_an_unknown_version_name_is_refused_naming_the_choices(strict):
    text, _ = refused(strict, job("ver-unknown", "print('never')", config="""
        elide_opts {
          elide_version = "9.9"
        }"""))
    assert 'config.elide_opts.elide_version "9.9" is not an Elide version of this node' in text, text
    assert 'one of "1.1"' in text, text


def test_an_operator_listed_version_runs_and_the_event_names_its_version(strict, alt_elide):
    attrs = strict.driver()["Attributes"]
    assert attrs.get("driver.elide.versions") == "1.1", attrs
    assert attrs.get("driver.elide.version.1.1") == ALT_VERSION, attrs
    j = strict.run_job(job("ver-alt", "print('alt ran', flush=True)", config="""
        elide_opts {
          elide_version = "1.1"
        }"""))
    alloc = strict.first_alloc(j["ID"])
    ts = strict.wait_task(alloc["ID"], "t", "dead")
    assert not ts["Failed"], nm.describe_task(ts)
    assert "alt ran" in strict.logs(alloc["ID"], "t")
    text = events_text(ts)
    assert f"Starting Elide {ALT_VERSION}: local/app.py" in text, text
    # The default still names the default's version.
    j = strict.run_job(job("ver-default", "print('default ran', flush=True)"))
    alloc = strict.first_alloc(j["ID"])
    ts = strict.wait_task(alloc["ID"], "t", "dead")
    assert re.search(r"Starting Elide 1\.0\.0-beta10: local/app\.py", events_text(ts)), events_text(ts)


# --------------------------------------------------------------------------- item 4

ENVIRON_THIEF = f"""
import os
found = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            with open(f"/proc/{{pid}}/environ", "rb") as f:
                if b"{SECRET}" in f.read():
                    found.append(pid)
        except OSError:
            pass
print("STOLEN" if found else "NOTHING", found, flush=True)
"""


def test_pid_mode_host_is_refused_by_default_naming_the_option(strict, victim):
    text, out = refused(strict, job("pid-thief", ENVIRON_THIEF, config='pid_mode = "host"'))
    assert 'config.pid_mode = "host" is not allowed on this node' in text, text
    assert "allow_host_pid = true" in text, text
    assert_unread(strict, text, out)


SHM_KEY = 0x4E44E2E0 + (os.getpid() & 0xF)
SHM_THIEF = f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shmid = libc.shmget({SHM_KEY}, 0, 0)
if shmid < 0:
    print("NOTHING", ctypes.get_errno(), flush=True)
else:
    addr = libc.shmat(shmid, None, 0)
    data = ctypes.string_at(addr, 64)
    print("STOLEN", data.split(b"\\0")[0].decode(), flush=True)
    ctypes.memmove(addr, b"overwritten\\0", 12)
"""


@pytest.fixture
def host_shm():
    """A 0600 SysV shared-memory segment of a host process (this test, root) with a secret."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    shmid = libc.shmget(SHM_KEY, 4096, 0o1000 | 0o2000 | 0o600)  # IPC_CREAT | IPC_EXCL
    assert shmid >= 0, f"shmget: errno {ctypes.get_errno()}"
    addr = libc.shmat(shmid, None, 0)
    payload = (SECRET + "-shm").encode() + b"\0"
    ctypes.memmove(addr, payload, len(payload))
    yield addr, payload
    libc.shmdt(ctypes.c_void_p(addr))
    libc.shmctl(shmid, 0, None)  # IPC_RMID


def test_ipc_mode_host_is_refused_by_default_and_host_shm_stays_untouched(strict, host_shm):
    addr, payload = host_shm
    text, out = refused(strict, job("ipc-thief", SHM_THIEF, config='ipc_mode = "host"'))
    assert 'config.ipc_mode = "host" is not allowed on this node' in text, text
    assert "allow_host_ipc = true" in text, text
    assert_unread(strict, text, out)
    assert ctypes.string_at(addr, len(payload)) == payload


def test_host_namespaces_work_where_the_operator_allows_them(nomad_agent, host_shm):
    agent = nomad_agent({"allow_host_pid": True, "allow_host_ipc": True})
    agent.wait_driver_healthy()
    j = agent.run_job(job("pid-allowed", "import os\nprint('PID', os.getpid(), flush=True)",
                          config='pid_mode = "host"'))
    alloc = agent.first_alloc(j["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    assert not ts["Failed"], nm.describe_task(ts)
    pid = int(re.search(r"PID (\d+)", agent.logs(alloc["ID"], "t")).group(1))
    assert pid > 4, "a host pid, not one of a private namespace"
    j = agent.run_job(job("ipc-allowed", SHM_THIEF, config='ipc_mode = "host"'))
    alloc = agent.first_alloc(j["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    assert not ts["Failed"], nm.describe_task(ts)
    # With the operator's consent the host's segment is reachable: the option is real.
    assert "STOLEN" in agent.logs(alloc["ID"], "t")


FORKER = """
import os, signal
pids = []
for _ in range(150):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        signal.pause()
        os._exit(0)
    pids.append(pid)
print("SPAWNED", len(pids), flush=True)
for p in pids:
    os.kill(p, 9)
    os.waitpid(p, 0)
"""


def test_a_jobs_pids_limit_cannot_lift_the_operators(strict):
    text, _ = refused(strict, job("pids-lift", FORKER, config="pids_limit = 0"))
    assert "config.pids_limit = 0 would lift the plugin's pids_limit = 50" in text, text
    text, _ = refused(strict, job("pids-raise", FORKER, config="pids_limit = 500"))
    assert "config.pids_limit = 500 would lift the plugin's pids_limit = 50" in text, text
    # Without its own value the job gets the operator's 50 processes, not 150.
    j = strict.run_job(job("pids-capped", FORKER, jtype="batch"))
    alloc = strict.first_alloc(j["ID"])
    strict.wait_task(alloc["ID"], "t", "dead")
    n = int(re.search(r"SPAWNED (\d+)", strict.logs(alloc["ID"], "t")).group(1))
    assert n < 50, n


# --------------------------------------------------------------------------- items 11, 13


def test_log_rotation_beyond_the_operators_budget_is_refused(strict):
    text, _ = refused(strict, job("logs-huge", "print('never')",
                                  config="log_max_files = 100\nlog_max_file_size = 1024"))
    assert ("config.log_max_files × config.log_max_file_size = 100 × 1024 MiB = 102400 MiB"
            in text), text
    assert "10 × 10 MiB = 100 MiB" in text, text


def test_a_user_that_is_an_option_is_refused_naming_the_rule(strict):
    text, out = refused(strict, job("user-option", "import os\nprint('UID', os.getuid())",
                                    task='user = "--service=files"'))
    assert 'user "--service=files" is not a valid user name: it starts with \'-\'' in text, text
    assert "UID" not in out, out


# --------------------------------------------------------------------------- item 1


def test_the_fingerprint_never_runs_an_elide_in_a_world_writable_dir(nomad_agent, tmp_path):
    d = tmp_path / "shared-bin"
    d.mkdir()
    os.chmod(d, 0o777)
    marker = tmp_path / "ran-as-root"
    b = d / "elide"
    b.write_text(f"#!/bin/sh\ntouch {marker}\nexec {nm.STANDIN} \"$@\"\n")
    os.chmod(b, 0o755)
    agent = nomad_agent({"elide_binary": str(b)})
    info = agent.wait_driver(lambda d: d.get("HealthDescription", "") not in ("", "Healthy")
                             or d.get("Healthy"))
    assert not info["Healthy"], info
    desc = info["HealthDescription"]
    assert f"elide_binary: {b} is not safe to run as root: {d} is world-writable (mode 0777)" in desc, desc
    assert "chmod go-w" in desc, desc
    assert not marker.exists(), "the plugin ran a binary others could have replaced"
