"""Issue #18, items 1, 8 and 12, rerun through a real agent: the task's file system view.

1. A race during volume setup made read-only host mounts writable: one job keeps swapping a
   dir of a shared host volume with a symlink (`renameat2(RENAME_EXCHANGE)`) while another
   job's tasks start again and again with that volume at /data and a second one nested at
   /data/sub/<the Elide install dir's name>. No start may leave the Elide install dir
   writable: each start either runs with it read-only or fails with a clear task event.
8. Root-only host secrets (TLS keys in /etc/ssl/private, SSH host keys, /etc/shadow) are not
   in a root task's view: the view is an allow-list.
12. /proc/self/mountinfo in a task names no other allocation (the task's root is a new one,
   pivot_root'ed into).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time

import nomad as nm

# The swapper: makes data/evil a symlink to the dir holding the Elide install dir (as the
# victim's view shows it: at its host path), then swaps data/sub and data/evil forever.
SWAPPER = r'''
import ctypes, os, sys
parent = os.environ["ELIDE_PARENT"]
os.makedirs("data/sub", exist_ok=True)
if not os.path.islink("data/evil"):
    os.symlink(parent, "data/evil")
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
print("swapping", flush=True)
n = 0
while True:
    if libc.renameat2(AT_FDCWD, b"data/sub", AT_FDCWD, b"data/evil", RENAME_EXCHANGE) != 0:
        print("renameat2 failed: " + os.strerror(ctypes.get_errno()), flush=True)
        sys.exit(1)
    n += 1
'''

# The main task: what it may do to the Elide install dir it sees read-only.
MAIN = r'''
import os
home = os.environ["ELIDE_HOME"]
try:
    with open(os.path.join(home, "pwned"), "w") as f:
        f.write("pwned")
    print("wrote=yes", flush=True)
except OSError as e:
    print("wrote=no " + e.strerror, flush=True)
'''


def tree_digest(root: str) -> str:
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(d, f)
            h.update(p.encode())
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_swapping_a_volume_dir_for_a_symlink_never_makes_the_elide_dir_writable(
        nomad_agent, tmp_path):
    # A copy of the Elide (stand-in) install dir, so the test owns it.
    home = tmp_path / "elide-home"
    shutil.copytree(os.path.dirname(nm.STANDIN), home)
    hv, inner = tmp_path / "hv", tmp_path / "inner"
    hv.mkdir()
    inner.mkdir()
    os.chmod(hv, 0o777)
    agent = nomad_agent({"elide_binary": str(home / "elide")}, client_hcl=f"""
host_volume "hv" {{
  path      = "{hv}"
  read_only = false
}}
host_volume "inner" {{
  path      = "{inner}"
  read_only = false
}}""")
    agent.wait_driver_healthy()
    before = tree_digest(str(home))
    swapper = agent.run_job(nm.elide_job("swapper", SWAPPER, group="""
    volume "hv" {
      type   = "host"
      source = "hv"
    }""", task=f"""
      env {{
        ELIDE_PARENT = "{tmp_path}"
      }}
      volume_mount {{
        volume      = "hv"
        destination = "/data"
      }}"""))
    s_alloc = agent.first_alloc(swapper["ID"])
    agent.wait_logs(s_alloc["ID"], "t", "swapping")

    main_group = nm.NO_RESTART + """
    volume "hv" {
      type   = "host"
      source = "hv"
    }
    volume "inner" {
      type   = "host"
      source = "inner"
    }"""
    main_task = f"""
      env {{
        ELIDE_HOME = "{home}"
      }}
      volume_mount {{
        volume      = "hv"
        destination = "/data"
      }}
      volume_mount {{
        volume      = "inner"
        destination = "/data/sub/{home.name}"
      }}"""
    started, refused = 0, 0
    deadline = time.monotonic() + 25
    rnd = 0
    while time.monotonic() < deadline:
        rnd += 1
        job = agent.run_job(nm.elide_job(f"main-{rnd}", MAIN, jtype="batch", count=3,
                                         group=main_group, task=main_task))
        allocs = agent.wait_allocs(job["ID"], lambda a: len(a) == 3 and all(
            x["ClientStatus"] in nm.TERMINAL_CLIENT for x in a) and a)
        for a in allocs:
            ts = agent.alloc(a["ID"])["TaskStates"]["t"]
            if ts["Failed"]:
                text = nm.describe_task(ts)
                # A symlink met on the way: refused, saying which step.
                assert "file system view" in text, text
                refused += 1
            else:
                out = agent.logs(a["ID"], "t")
                assert "wrote=no" in out, out
                started += 1
            assert not (home / "pwned").exists(), \
                f"the Elide dir was written on the host (round {rnd})"
        agent.stop_job(job["ID"], purge=True)
    # The swapper never stopped (it exits on any renameat2 failure) and the host's Elide
    # dir is byte for byte what it was.
    ts = agent.alloc(s_alloc["ID"])["TaskStates"]["t"]
    assert ts["State"] == "running", nm.describe_task(ts)
    agent.stop_job(swapper["ID"])
    assert tree_digest(str(home)) == before
    assert started + refused >= 9, (started, refused)
    print(f"{started} started, {refused} refused in {rnd} rounds")


# A root task (Nomad's default capabilities, DAC_OVERRIDE included) looking for host secrets
# and other allocations.
PROBE = r'''
import glob, json, os

def read(p):
    try:
        with open(p, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as e:
        return "error: " + e.strerror

victim = os.environ["VICTIM_ALLOC"]
with open("/proc/self/mountinfo") as f:
    mountinfo = f.read()
r = {
    "tls": {p: read(p) for p in sorted(glob.glob("/etc/ssl/private/*"))},
    "tls_listing": sorted(os.listdir("/etc/ssl/private")) if os.path.isdir("/etc/ssl/private") else [],
    "ssh": {p: read(p) for p in sorted(glob.glob("/etc/ssh/ssh_host_*_key"))},
    "planted": {p: read(p) for p in os.environ["PLANTED"].split(",")},
    "shadow": read("/etc/shadow"),
    "passwd_ok": read("/etc/passwd").startswith("root:"),
    "victim_in_mountinfo": victim in mountinfo,
    "self_in_mountinfo": os.environ["NOMAD_ALLOC_ID"] in mountinfo,
    "mountinfo_lines": len(mountinfo.splitlines()),
    "victim_secret": read(os.environ["VICTIM_DIR"] + "/secrets/token"),
    "root": sorted(os.listdir("/")),
}
print("PROBE " + json.dumps(r), flush=True)
'''

SLEEPER = """
import time
while True:
    time.sleep(1)
"""


def test_root_only_host_secrets_and_other_allocations_are_out_of_a_root_tasks_view(agent):
    import json
    agent.wait_driver_healthy()
    # Secrets the host may lack, planted for the test (unique names), removed after.
    tag = f"elide-e2e-{os.getpid()}"
    planted, made_dirs = [], []
    for path, mode in ((f"/etc/ssl/private/{tag}.key", 0o640),
                       (f"/etc/ssh/ssh_host_{tag.replace('-', '')}_key", 0o600)):
        d = os.path.dirname(path)
        if not os.path.isdir(d):
            os.makedirs(d)
            made_dirs.append(d)
        with open(path, "w") as f:
            f.write("host-secret-" + tag)
        os.chmod(path, mode)
        planted.append(path)
    try:
        victim = agent.run_job(nm.elide_job("victim", SLEEPER, task="""
      template {
        destination = "secrets/token"
        data = "victim-secret"
      }"""))
        v_alloc = agent.first_alloc(victim["ID"])
        agent.wait_task(v_alloc["ID"], "t", "running")
        v_dir = os.path.join(agent.data_dir, "alloc", v_alloc["ID"], "t")
        job = agent.run_job(nm.elide_job("probe", PROBE, jtype="batch", group=nm.NO_RESTART,
                                         task=f"""
      env {{
        VICTIM_ALLOC = "{v_alloc['ID']}"
        VICTIM_DIR = "{v_dir}"
        PLANTED = "{','.join(planted)}"
      }}"""))
        alloc = agent.first_alloc(job["ID"])
        ts = agent.wait_task(alloc["ID"], "t", "dead")
        assert not ts["Failed"], nm.describe_task(ts)
        out = agent.logs(alloc["ID"], "t")
        lines = [ln for ln in out.splitlines() if ln.startswith("PROBE ")]
        assert lines, out
        r = json.loads(lines[-1][len("PROBE "):])
    finally:
        for p in planted:
            os.unlink(p)
        for d in reversed(made_dirs):
            os.rmdir(d)
    # Item 8: no root-only secret is readable, the planted ones included.
    # ssl/private is an empty dir in the view; a root-only file reads as /dev/null (empty).
    assert r["tls"] == {} and r["tls_listing"] == [], r
    for p, got in {**r["ssh"], **r["planted"]}.items():
        assert got == "" or got.startswith("error"), (p, got)
    assert "root:" not in r["shadow"], r["shadow"]
    assert r["passwd_ok"], r
    # The view is the allow-list: nothing of the host's other top-level dirs (the stand-in's
    # install dir, in the repo, brings the path to it).
    for host_only in ("home", "root", "srv", "opt", "mnt", "boot", "var"):
        assert host_only not in r["root"], r["root"]
    # Item 12: the victim's allocation is not named in the task's mount table (its own is).
    assert r["self_in_mountinfo"], r
    assert not r["victim_in_mountinfo"], r
    assert r["victim_secret"].startswith("error"), r
    # Nothing changed on the host: the victim's secret is intact and it still runs.
    assert open(os.path.join(v_dir, "secrets", "token")).read() == "victim-secret"
    assert agent.alloc(v_alloc["ID"])["TaskStates"]["t"]["State"] == "running"
    agent.stop_job(victim["ID"])
