"""Issue 18, items 6, 7 and 9, on a real Nomad agent with the plugin's defaults.

Each hostile job below reruns a reproduction from the issue and reports, as one `RESULT {json}`
line, what every attempt got back (`ok` or the errno's name); the test asserts that the attack
was refused, that the host did not change and that the victim's data stayed unread:

- item 6: a `user = "nobody"` task calls `setresuid(0, 0, 0)` — refused (it has no
  capabilities at all), so `denied_host_uids` cannot be walked around;
- item 7: a root task (the driver's default capabilities, CAP_SETUID among them) becomes the uid of
  a host user and reads that user's keyring key; creates a user namespace; mounts; the same
  attempts through `nomad alloc exec`; ordinary work (threads, subprocesses, Node) still runs;
- item 9: a root task plants a setuid/setgid root shell in `local/` (chmod, open with a mode,
  mknod, `chmod u+s`) — no file with either bit is left on the host's disk; nor can it give a
  copy of python3 a file capability (`security.capability` = cap_setuid+ep, which a local
  account running that file would turn into root): CAP_SETFCAP is not in the driver's
  defaults, only with the operator's `allow_caps` and the job's `cap_add`.
"""
from __future__ import annotations

import ctypes
import json
import os
import platform
import secrets
import stat
import struct
import subprocess

import nomad as nm

X86 = platform.machine() == "x86_64"
ADD_KEY, KEYCTL = (248, 250) if X86 else (217, 219)
KEY_SPEC_USER_KEYRING = -4
KEYCTL_SEARCH, KEYCTL_READ, KEYCTL_INVALIDATE = 10, 11, 21
# The host user whose keyring the attacker goes after (no account needed: keyrings are per uid).
VICTIM_UID = 4242

# What every probe shares: each attempt in a child process, its errno by name.
ATTEMPTS = r'''
import ctypes, errno, json, os, platform, stat, subprocess, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
X86 = platform.machine() == "x86_64"
NR = {"add_key": 248 if X86 else 217, "keyctl": 250 if X86 else 219,
      "clone": 56 if X86 else 220, "clone3": 435}
result = {}

def attempt(label, f):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code, out = 254, ""
        try:
            ctypes.set_errno(0)
            v = f()
            if isinstance(v, str):
                code, out = 0, v
            elif v is None or v >= 0:
                code = 0
            else:
                code = ctypes.get_errno() or 255
        except OSError as x:
            code = x.errno or 255
        except BaseException as x:
            out = repr(x)
        os.write(w, out.encode())
        os._exit(code)
    os.close(w)
    out = os.read(r, 65536).decode()
    os.close(r)
    _, st = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(st)
    result[label] = ("ok" if code == 0 else errno.errorcode.get(code, str(code)))
    if out:
        result[label + "_out"] = out

def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        out[k] = " ".join(v.split())
    return {k: out.get(k, "") for k in ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd",
                                         "Uid", "NoNewPrivs", "Seccomp")}

def read_key_of(uid):
    def f():
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        kid = libc.syscall(NR["keyctl"], 10, ctypes.c_long(-4), b"user", b"e2e-victim", 0)
        if kid < 0:
            return -1
        buf = ctypes.create_string_buffer(256)
        n = libc.syscall(NR["keyctl"], 11, kid, buf, 256)
        return buf.raw[:n].decode() if n >= 0 else -1
    return f

def common_attempts():
    attempt("keyctl", lambda: libc.syscall(NR["keyctl"], 0, ctypes.c_long(-4), 0))
    attempt("add_key", lambda: libc.syscall(NR["add_key"], b"user", b"probe", b"x", 1,
                                            ctypes.c_long(-2)))
    attempt("unshare_user", lambda: libc.unshare(0x10000000))
    attempt("clone_newuser", lambda: libc.syscall(NR["clone"], 0x10000000 | 17, 0, 0, 0, 0))
    attempt("clone3", lambda: libc.syscall(NR["clone3"], None, 0))
    attempt("mount", lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
    attempt("spawn", lambda: subprocess.run(["/bin/sh", "-c", "exit 0"]).returncode)
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    result["thread"] = "ok"
'''


def probe_job(name: str, body: str, *, task: str = "", config: str = "",
              jtype: str = "batch") -> str:
    group = nm.NO_RESTART if jtype == "batch" else ""
    return nm.elide_job(name, ATTEMPTS + body, jtype=jtype, group=group, task=task,
                        config=config)


def run_probe(agent, name: str, body: str, **kw) -> tuple[dict, dict, dict]:
    """Runs a batch probe to its end; returns (its RESULT, the alloc, its task state)."""
    job = agent.run_job(probe_job(name, body, **kw))
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    out = agent.logs(alloc["ID"], "t")
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert lines, (f"no RESULT line:\n{out}\n{agent.logs(alloc['ID'], 't', 'stderr')}\n"
                   + nm.describe_task(ts))
    return json.loads(lines[-1][len("RESULT "):]), alloc, ts


def setid_files(top: str) -> list[str]:
    """Every file below `top` with the setuid or setgid bit (symlinks not followed)."""
    found = []
    for d, dirs, files in os.walk(top):
        for n in dirs + files:
            p = os.path.join(d, n)
            m = os.lstat(p).st_mode
            if not stat.S_ISDIR(m) and m & (stat.S_ISUID | stat.S_ISGID):
                found.append(p)
    return found


def fcap_files(top: str) -> list[str]:
    """Every file below `top` with a file capability (`security.capability`; symlinks not
    followed)."""
    found = []
    for d, dirs, files in os.walk(top):
        for n in dirs + files:
            p = os.path.join(d, n)
            try:
                names = os.listxattr(p, follow_symlinks=False)
            except OSError:
                continue
            if "security.capability" in names:
                found.append(p)
    return found


def as_uid(uid: int, fn):
    """Runs `fn` in a child process as `uid`; returns what it returned (an int or a str)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.write(w, json.dumps(fn()).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    data = os.read(r, 65536)
    os.close(r)
    return json.loads(data)


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def victim_key(payload: str) -> int:
    """The host user VICTIM_UID's key `e2e-victim` in its user keyring; returns its serial."""
    def add():
        return _libc().syscall(ADD_KEY, b"user", b"e2e-victim", payload.encode(),
                               len(payload), ctypes.c_long(KEY_SPEC_USER_KEYRING))
    serial = as_uid(VICTIM_UID, add)
    assert serial > 0, "could not add the victim's key to its keyring"
    return serial


def victim_key_payload() -> str:
    def read():
        libc = _libc()
        kid = libc.syscall(KEYCTL, KEYCTL_SEARCH, ctypes.c_long(KEY_SPEC_USER_KEYRING),
                           b"user", b"e2e-victim", 0)
        buf = ctypes.create_string_buffer(256)
        n = libc.syscall(KEYCTL, KEYCTL_READ, kid, buf, 256)
        return buf.raw[:n].decode() if kid > 0 and n >= 0 else ""
    return as_uid(VICTIM_UID, read)


def drop_victim_key(serial: int) -> None:
    as_uid(VICTIM_UID, lambda: _libc().syscall(KEYCTL, KEYCTL_INVALIDATE, serial))


def test_nobody_cannot_become_root_and_has_no_capabilities(shared_agent):
    report, _, ts = run_probe(shared_agent, "nobody-setuid", r'''
attempt("setresuid0", lambda: libc.setresuid(0, 0, 0))
result["status"] = status()
print("RESULT " + json.dumps(result), flush=True)
''', task='user = "nobody"')
    st = report["status"]
    assert st["Uid"].split() == ["65534"] * 4, report
    assert report["setresuid0"] == "EPERM", report
    for k in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert int(st[k], 16) == 0, (k, report)
    assert not ts["Failed"], nm.describe_task(ts)


def test_a_root_task_cannot_read_a_host_users_keyring_or_make_a_user_namespace(shared_agent):
    agent = shared_agent
    secret = "victim-" + secrets.token_hex(8)
    serial = victim_key(secret)
    try:
        report, alloc, ts = run_probe(agent, "keyring-thief", rf'''
attempt("steal_key", read_key_of({VICTIM_UID}))
common_attempts()
result["status"] = status()
print("RESULT " + json.dumps(result), flush=True)
''')
        assert report["steal_key"] == "EPERM", report
        assert secret not in json.dumps(report), report
        for k in ("keyctl", "add_key", "unshare_user", "clone_newuser", "mount"):
            assert report[k] == "EPERM", (k, report)
        # clone3 cannot be checked: ENOSYS, and libc falls back to clone (spawn works).
        assert report["clone3"] == "ENOSYS", report
        assert (report["spawn"], report["thread"]) == ("ok", "ok"), report
        assert report["status"]["Seccomp"] == "2", report
        assert not ts["Failed"], nm.describe_task(ts)
        logs = agent.logs(alloc["ID"], "t") + agent.logs(alloc["ID"], "t", "stderr")
        assert secret not in logs
        # The host did not change: the victim's key is still there, as it was.
        assert victim_key_payload() == secret
    finally:
        drop_victim_key(serial)


def test_alloc_exec_commands_get_the_same_filter(shared_agent):
    agent = shared_agent
    job = agent.run_job(nm.elide_job("exec-filtered", """
import time
print("ready", flush=True)
while True:
    time.sleep(1)
"""))
    alloc = agent.first_alloc(job["ID"])
    agent.wait_task(alloc["ID"], "t", "running")
    agent.wait_logs(alloc["ID"], "t", "ready")
    env = {**os.environ, "NOMAD_ADDR": agent.addr, "NO_COLOR": "1"}
    script = ATTEMPTS + r'''
common_attempts()
result["status"] = status()
print("RESULT " + json.dumps(result), flush=True)
'''
    proc = subprocess.run(
        [agent.nomad_bin, "alloc", "exec", "-t=false", "-task", "t", alloc["ID"],
         "python3", "-c", script],
        capture_output=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    out = proc.stdout.decode()
    assert proc.returncode == 0, (proc.returncode, out, proc.stderr)
    report = json.loads(next(ln for ln in out.splitlines()
                             if ln.startswith("RESULT "))[len("RESULT "):])
    assert report["status"]["Seccomp"] == "2", report
    for k in ("keyctl", "add_key", "unshare_user", "clone_newuser", "mount"):
        assert report[k] == "EPERM", (k, report)
    assert report["clone3"] == "ENOSYS", report
    assert report["spawn"] == "ok", report
    agent.stop_job(job["ID"])


def test_no_setuid_or_setgid_file_survives_on_the_host(shared_agent):
    agent = shared_agent
    report, alloc, ts = run_probe(agent, "setuid-planter", r'''
local = os.environ["NOMAD_TASK_DIR"]
sh = open("/bin/sh", "rb").read()
def plant(name, mode):
    def f():
        p = os.path.join(local, name)
        with open(p, "wb") as fh:
            fh.write(sh)
        os.chmod(p, mode)
    return f
attempt("chmod_4755", plant("rootsh", 0o4755))
attempt("chmod_2755", plant("rootsh-g", 0o2755))
attempt("open_4755", lambda: os.close(os.open(os.path.join(local, "rootsh-open"),
                                               os.O_CREAT | os.O_WRONLY, 0o4755)))
attempt("mknod_4755", lambda: os.mknod(os.path.join(local, "rootsh-mknod"),
                                        stat.S_IFREG | 0o4755))
attempt("chmod_cli", lambda: "done" if subprocess.run(
    ["/bin/sh", "-c", "cp /bin/sh \"$NOMAD_TASK_DIR/rootsh-cli\" && chmod u+s \"$NOMAD_TASK_DIR/rootsh-cli\""]
).returncode == 0 else -1)
attempt("plain_chmod", plant("plain", 0o755))
result["status"] = status()
print("RESULT " + json.dumps(result), flush=True)
''')
    for k in ("chmod_4755", "chmod_2755", "open_4755", "mknod_4755"):
        assert report[k] == "EPERM", (k, report)
    assert report["chmod_cli"] != "ok", report
    assert report["plain_chmod"] == "ok", report
    assert report["status"]["Uid"].split() == ["0"] * 4, report
    alloc_dir = os.path.join(agent.data_dir, "alloc", alloc["ID"])
    local = os.path.join(alloc_dir, "t", "local")
    assert os.path.exists(os.path.join(local, "plain")), os.listdir(local)
    assert setid_files(alloc_dir) == [], setid_files(alloc_dir)
    assert not ts["Failed"], nm.describe_task(ts)


def test_node_runs_under_the_filter(shared_agent):
    agent = shared_agent
    job = agent.run_job(nm.elide_job("node-filtered", r"""
const cp = require("child_process");
const fs = require("fs");
fs.writeFileSync("local/out.txt", "node-ok");
const r = cp.spawnSync("/bin/sh", ["-c", "echo child-ok"]);
console.log("NODE " + fs.readFileSync("local/out.txt", "utf8") + " " + r.stdout.toString().trim());
""", script_name="app.js", jtype="batch", group=nm.NO_RESTART))
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    out = agent.logs(alloc["ID"], "t")
    assert "NODE node-ok child-ok" in out, (out, agent.logs(alloc["ID"], "t", "stderr"),
                                             nm.describe_task(ts))
    assert nm.exit_code_of(ts) == 0, nm.describe_task(ts)


CAP_SETUID = 7
# The plugin's default allow_caps (common/src/capabilities.rs DRIVER_DEFAULTS).
DRIVER_DEFAULT_CAPS = ["audit_write", "chown", "dac_override", "fowner", "fsetid", "kill",
                       "mknod", "net_bind_service", "setgid", "setpcap", "setuid", "sys_chroot"]
# struct vfs_cap_data, revision 2 (linux/capability.h): magic_etc = VFS_CAP_REVISION_2 |
# VFS_CAP_FLAGS_EFFECTIVE, then {permitted, inheritable} for capabilities 0-31 and 32-63:
# cap_setuid+ep, what `setcap cap_setuid+ep` writes.
SETUID_EP = struct.pack("<5I", 0x02000000 | 0x1, 1 << CAP_SETUID, 0, 0, 0)

FCAP_PROBE = rf"""
import shutil, sys
local = os.environ["NOMAD_TASK_DIR"]
target = os.path.join(local, "py-setuid")
shutil.copy(os.path.realpath(sys.executable), target)
attempt("setfcap", lambda: os.setxattr(target, "security.capability", {SETUID_EP!r}))
attempt("setcap_cli", lambda: "done" if shutil.which("setcap") and subprocess.run(
    ["setcap", "cap_setuid+ep", target], stderr=subprocess.DEVNULL).returncode == 0 else -1)
result["status"] = status()
print("RESULT " + json.dumps(result), flush=True)
"""


def test_no_file_capability_survives_on_the_host(shared_agent):
    # A root task has the driver's default capabilities, which are Nomad's without setfcap.
    agent = shared_agent
    report, alloc, ts = run_probe(agent, "fcap-planter", FCAP_PROBE)
    assert report["setfcap"] == "EPERM", report
    assert report["setcap_cli"] != "ok", report
    assert report["status"]["Uid"].split() == ["0"] * 4, report
    assert int(report["status"]["CapEff"], 16) & (1 << 31) == 0, report
    alloc_dir = os.path.join(agent.data_dir, "alloc", alloc["ID"])
    copy = os.path.join(alloc_dir, "t", "local", "py-setuid")
    assert os.path.exists(copy), os.listdir(os.path.dirname(copy))
    assert fcap_files(alloc_dir) == [], fcap_files(alloc_dir)
    assert not ts["Failed"], nm.describe_task(ts)


def test_file_capabilities_take_allow_caps_and_cap_add(nomad_agent):
    # The operator's consent: allow_caps with setfcap. Even then only a job that asks for it
    # (cap_add) gets it; a job that does not keeps the defaults.
    agent = nomad_agent({"allow_caps": DRIVER_DEFAULT_CAPS + ["setfcap"]})
    agent.wait_driver_healthy()
    report, alloc, ts = run_probe(agent, "fcap-not-asked", FCAP_PROBE)
    assert report["setfcap"] == "EPERM", report
    assert fcap_files(os.path.join(agent.data_dir, "alloc", alloc["ID"])) == []

    report, alloc, ts = run_probe(agent, "fcap-consented", FCAP_PROBE,
                                  config='cap_add = ["setfcap"]')
    assert report["setfcap"] == "ok", report
    assert int(report["status"]["CapEff"], 16) & (1 << 31), report
    copy = os.path.join(agent.data_dir, "alloc", alloc["ID"], "t", "local", "py-setuid")
    try:
        assert fcap_files(os.path.join(agent.data_dir, "alloc", alloc["ID"])) == [copy]
        assert os.getxattr(copy, "security.capability") == SETUID_EP
    finally:
        # Do not leave a cap_setuid+ep python on the host until the alloc dir goes.
        os.removexattr(copy, "security.capability")
    assert not ts["Failed"], nm.describe_task(ts)
