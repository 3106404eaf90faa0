"""Issue 8: the task sandbox on a real Nomad agent, with the plugin's defaults.

A probe task (Python through the Elide stand-in) reports its /proc/self/status, what it could
write and read, and the processes it sees, as one `PROBE {json}` line on stdout.
"""
from __future__ import annotations

import json
import os
import urllib.request

import nomad as nm

# The driver's default capabilities (= the plugin's default allow_caps): Nomad exec's list
# without SETFCAP(31) (test_escapes_creds.py), i.e. CAP_CHOWN(0), DAC_OVERRIDE(1), FOWNER(3),
# FSETID(4), KILL(5), SETGID(6), SETUID(7), SETPCAP(8), NET_BIND_SERVICE(10), SYS_CHROOT(18),
# MKNOD(27), AUDIT_WRITE(29).
DEFAULT_CAPS = sum(1 << b for b in (0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 27, 29))

# What the probe and the volume script share.
CAN = r'''
import os

def can(fn):
    try:
        fn()
        return True
    except OSError:
        return False

def write(path):
    def f():
        with open(path, "w") as fh:
            fh.write("probe")
    return f
'''

PROBE = CAN + r'''
import json

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = " ".join(v.split())
    return {k: out.get(k, "") for k in
            ("CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs", "Uid", "Gid", "Groups")}

def read(path):
    def f():
        with open(path) as fh:
            fh.read()
    return f

def listing(path):
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        return "error: " + e.strerror

env = os.environ
other = env.get("OTHER_TASK_DIR", "/nonexistent")
probe_name = "elide-probe-" + env["NOMAD_ALLOC_ID"]
procs = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            with open("/proc/" + p + "/cmdline", "rb") as f:
                procs[p] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            pass
result = {
    "status": status(),
    "pid": os.getpid(),
    "write": {
        "etc": can(write("/etc/" + probe_name)),
        "usr": can(write("/usr/" + probe_name)),
        "task_dir": can(write(os.getcwd() + "/probe.txt")),
        "local": can(write(env["NOMAD_TASK_DIR"] + "/probe.txt")),
        "secrets": can(write(env["NOMAD_SECRETS_DIR"] + "/probe.txt")),
        "alloc": can(write(env["NOMAD_ALLOC_DIR"] + "/data/probe.txt")),
        "tmp": can(write("/tmp/probe.txt")),
    },
    "other": {
        "read_secret": can(read(other + "/secrets/token")),
        "list_secrets": listing(other + "/secrets"),
        "read_local": can(read(other + "/local/app.py")),
        "list_local": listing(other + "/local"),
    },
    "runtime_dir": listing(env.get("RUNTIME_DIR", "/nonexistent")),
    "procs": procs,
}
print("PROBE " + json.dumps(result), flush=True)
'''

SLEEPER = """
import time
while True:
    time.sleep(1)
"""


def probe_job(name: str, *, config: str = "", task: str = "", group: str = "") -> str:
    return nm.elide_job(name, PROBE, jtype="batch", group=nm.NO_RESTART + "\n" + group,
                        config=config, task=task)


def run_probe(agent, name: str, **kw) -> tuple[dict, dict]:
    """Runs a probe to its end; returns (its report, the alloc)."""
    job = agent.run_job(probe_job(name, **kw))
    alloc = agent.first_alloc(job["ID"])
    try:
        ts = agent.wait_task(alloc["ID"], "t", "dead")
        assert not ts["Failed"], nm.describe_task(ts)
        out = agent.logs(alloc["ID"], "t")
        lines = [ln for ln in out.splitlines() if ln.startswith("PROBE ")]
        assert lines, f"no PROBE line in the task's stdout:\n{out}"
        return json.loads(lines[-1][len("PROBE "):]), alloc
    finally:
        for d in ("/etc", "/usr"):
            leaked = os.path.join(d, f"elide-probe-{alloc['ID']}")
            if os.path.exists(leaked):
                os.unlink(leaked)  # keep the host clean even when the sandbox failed


def failed_probe(agent, name: str, **kw) -> str:
    """Runs a probe that must fail before it starts; returns its task's events."""
    job = agent.run_job(probe_job(name, **kw))
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    assert ts["Failed"], nm.describe_task(ts)
    return nm.describe_task(ts)


def task_dir(agent, alloc: dict, task: str = "t") -> str:
    return os.path.join(agent.data_dir, "alloc", alloc["ID"], task)


def test_a_probe_is_confined_to_its_own_dirs_caps_and_processes(shared_agent):
    agent = shared_agent
    # Another running allocation with a rendered secret: the probe knows where it is.
    victim = agent.run_job(nm.elide_job("victim", SLEEPER, task="""
      template {
        destination = "secrets/token"
        data = "victim-secret"
      }"""))
    v_alloc = agent.first_alloc(victim["ID"])
    agent.wait_task(v_alloc["ID"], "t", "running")
    other = task_dir(agent, v_alloc)
    assert open(os.path.join(other, "secrets", "token")).read() == "victim-secret"
    assert os.listdir(agent.runtime_dir), "the victim's shim socket should be in the runtime dir"

    report, alloc = run_probe(agent, "probe", task=f"""
      env {{
        OTHER_TASK_DIR = "{other}"
        RUNTIME_DIR = "{agent.runtime_dir}"
      }}""")
    st = report["status"]
    # Capabilities within the allow list (the default one), in every set that matters.
    cap_eff, cap_bnd = int(st["CapEff"], 16), int(st["CapBnd"], 16)
    assert cap_eff & ~DEFAULT_CAPS == 0 and cap_bnd & ~DEFAULT_CAPS == 0, st
    assert cap_eff == DEFAULT_CAPS and cap_bnd == DEFAULT_CAPS, st
    assert st["NoNewPrivs"] == "1", st
    w = report["write"]
    assert (w["etc"], w["usr"]) == (False, False), report
    assert all(w[k] for k in ("task_dir", "local", "secrets", "alloc", "tmp")), report
    mine = task_dir(agent, alloc)
    assert os.path.exists(os.path.join(mine, "probe.txt"))
    assert os.path.exists(os.path.join(mine, "local", "probe.txt"))
    assert os.path.exists(os.path.join(agent.data_dir, "alloc", alloc["ID"], "alloc", "data",
                                       "probe.txt"))
    # The probe's /tmp is its own, not the host's.
    assert not os.path.exists("/tmp/probe.txt") or open("/tmp/probe.txt").read() != "probe"
    o = report["other"]
    assert o["read_secret"] is False and o["read_local"] is False, report
    assert str(o["list_secrets"]).startswith("error"), report
    assert str(o["list_local"]).startswith("error"), report
    rd = report["runtime_dir"]
    assert isinstance(rd, str) or not [e for e in rd if e.endswith(".sock")], report
    # Its own PID namespace: the sandbox's init as 1, then Elide and the guest; no agent, no
    # shim, nothing of the host.
    procs = report["procs"]
    assert procs.get("1", "").startswith("elide-executor sandbox-init"), procs
    assert not any("nomad agent" in c or "elide-executor serve" in c or "nomad-driver-elide" in c
                   for c in procs.values()), procs
    assert len(procs) <= 4, procs
    assert report["pid"] <= 4, report
    agent.stop_job(victim["ID"])


def test_cap_drop_all_leaves_no_capability(shared_agent):
    report, _ = run_probe(shared_agent, "capless", config='cap_drop = ["all"]')
    st = report["status"]
    assert int(st["CapEff"], 16) == 0 and int(st["CapBnd"], 16) == 0, st
    assert int(st["CapPrm"], 16) == 0, st


def test_cap_add_outside_allow_caps_fails_naming_it(shared_agent):
    text = failed_probe(shared_agent, "sysadmin", config='cap_add = ["sys_admin"]')
    assert "does not allow the capabilities sys_admin" in text, text
    assert "allow_caps" in text, text


def test_pid_mode_host_sees_the_hosts_processes(nomad_agent):
    # Only with the operator's consent (test_escapes_config.py: refused by default).
    agent = nomad_agent({"allow_host_pid": True})
    agent.wait_driver_healthy()
    report, _ = run_probe(agent, "hostpid", config='pid_mode = "host"')
    procs = report["procs"]
    assert any("nomad" in c and " agent" in c for c in procs.values()), sorted(procs.values())[:20]
    assert report["pid"] > 4, report


def test_user_nobody_runs_as_65534_without_root_groups(shared_agent):
    report, alloc = run_probe(shared_agent, "nobody", task='user = "nobody"')
    st = report["status"]
    assert st["Uid"].split() == ["65534"] * 4, st
    assert st["Gid"].split() == ["65534"] * 4, st
    assert "0" not in st["Groups"].split(), st
    assert st["NoNewPrivs"] == "1", st


def test_an_unknown_user_fails_the_task_clearly(shared_agent):
    text = failed_probe(shared_agent, "ghost", task='user = "no-such-user-e2e"')
    assert 'task user "no-such-user-e2e" does not exist on this node' in text, text


def test_host_volumes_read_only_and_read_write(nomad_agent, tmp_path):
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "seed.txt").write_text("from-the-host")
    agent = nomad_agent(client_hcl=f"""
host_volume "ro-vol" {{
  path      = "{ro}"
  read_only = true
}}
host_volume "rw-vol" {{
  path      = "{rw}"
  read_only = false
}}""")
    agent.wait_driver_healthy()
    script = CAN + r'''
print("seed=" + open("srv/ro/seed.txt").read(), flush=True)
print("ro_write=" + str(can(write("srv/ro/x.txt"))), flush=True)
print("rw_write=" + str(can(write("data/x.txt"))), flush=True)
'''
    hcl = nm.elide_job("volumes", script, jtype="batch", group=nm.NO_RESTART + """
    volume "ro" {
      type      = "host"
      source    = "ro-vol"
      read_only = true
    }
    volume "rw" {
      type   = "host"
      source = "rw-vol"
    }""", task="""
      volume_mount {
        volume      = "ro"
        destination = "/srv/ro"
        read_only   = true
      }
      volume_mount {
        volume      = "rw"
        destination = "/data"
      }""")
    job = agent.run_job(hcl)
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    assert not ts["Failed"], nm.describe_task(ts)
    out = agent.logs(alloc["ID"], "t")
    assert "seed=from-the-host" in out, out
    assert "ro_write=False" in out, out
    assert "rw_write=True" in out, out
    assert (rw / "x.txt").read_text() == "probe"
    assert not (ro / "x.txt").exists()


HTTP_APP = r'''
import http.server, json, os, socket, sys

def interfaces():
    with open("/proc/net/dev") as f:
        return sorted(line.split(":")[0].strip() for line in f.readlines()[2:])

def address():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("10.255.255.255", 1))
        return s.getsockname()[0]
    finally:
        s.close()

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"interfaces": interfaces(), "address": address(),
                           "netns": os.readlink("/proc/self/ns/net")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

print("listening on 8080", flush=True)
http.server.HTTPServer(("0.0.0.0", 8080), H).serve_forever()
'''


def test_bridge_mode_app_answers_on_the_mapped_port_inside_the_allocs_netns(shared_agent):
    for plugin in ("bridge", "portmap", "firewall", "host-local", "loopback"):
        if not os.access(os.path.join(nm.CNI_PATH, plugin), os.X_OK):
            raise nm.HarnessError(
                f"no CNI plugin {plugin} in {nm.CNI_PATH}: install Debian's containernetworking-plugins "
                "and iptables (apt-get install containernetworking-plugins iptables; .ci/run does)")
    agent = shared_agent
    job = agent.run_job(nm.elide_job("bridged", HTTP_APP, group="""
    network {
      mode = "bridge"
      port "http" {
        to = 8080
      }
    }"""))
    alloc = agent.first_alloc(job["ID"])
    agent.wait_task(alloc["ID"], "t", "running")
    agent.wait_logs(alloc["ID"], "t", "listening on 8080")
    alloc = agent.alloc(alloc["ID"])
    port = next(p for p in alloc["AllocatedResources"]["Shared"]["Ports"] if p["Label"] == "http")
    assert port["To"] == 8080 and port["Value"] != 8080, port
    url = f"http://{port['HostIP'] or '127.0.0.1'}:{port['Value']}/"
    with urllib.request.urlopen(url, timeout=30) as resp:
        seen = json.loads(resp.read())
    # The alloc's network namespace: its own interfaces and address, not the host's.
    assert seen["interfaces"] == ["eth0", "lo"], seen
    assert seen["netns"] != os.readlink("/proc/self/ns/net"), seen
    status = alloc.get("NetworkStatus") or {}
    assert status.get("Address") and seen["address"] == status["Address"], (seen, status)


# A probe of the network files the sandbox mounts: prints `<TAG> {json}` with the file's text
# and whether appending to it worked; the rest of the probe adds its own keys.
FILE_PROBE = r'''
import json
import socket

def seen(path, line, **more):
    with open(path) as f:
        text = f.read()
    try:
        with open(path, "a") as f:
            f.write(line)
        writable = True
    except OSError:
        writable = False
    return dict(text=text, writable=writable, **more)
'''

DNS_PROBE = FILE_PROBE + r'''
print("DNS " + json.dumps(seen("/etc/resolv.conf", "nameserver 6.6.6.6\n")), flush=True)
'''

HOSTS_PROBE = FILE_PROBE + r'''
name = socket.gethostname()
print("HOSTS " + json.dumps(seen("/etc/hosts", "6.6.6.6 evil\n", hostname=name,
                                 resolved=socket.gethostbyname(name))), flush=True)
'''


def run_network_probe(agent, name, probe, tag, network):
    """Runs `probe` as a batch task of a group with the given network block; the alloc and
    the probe's last `<tag> {json}` line."""
    job = agent.run_job(nm.elide_job(name, probe, jtype="batch", group=nm.NO_RESTART + network))
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    assert not ts["Failed"], nm.describe_task(ts)
    out = agent.logs(alloc["ID"], "t")
    lines = [ln for ln in out.splitlines() if ln.startswith(tag + " ")]
    assert lines, f"no {tag} line in the task's stdout:\n{out}"
    return alloc, json.loads(lines[-1][len(tag) + 1:])


def test_the_groups_dns_block_is_the_tasks_read_only_resolv_conf(shared_agent):
    """Nomad's network { dns {} } reaches the task as exactly exec's resolv.conf, read-only,
    and the host's file is untouched."""
    agent = shared_agent
    with open("/etc/resolv.conf", "rb") as f:
        host_before = f.read()
    _, seen = run_network_probe(agent, "dns", DNS_PROBE, "DNS", """
    network {
      mode = "bridge"
      dns {
        servers  = ["10.9.8.7"]
        searches = ["example.internal"]
        options  = ["ndots:2"]
      }
    }""")
    assert seen["text"] == "search example.internal\nnameserver 10.9.8.7\noptions ndots:2\n", seen
    assert seen["writable"] is False, seen
    with open("/etc/resolv.conf", "rb") as f:
        assert f.read() == host_before


def test_bridge_mode_gives_the_task_a_read_only_etc_hosts_with_the_allocs_address(shared_agent):
    """In the group's network namespace the task's /etc/hosts maps the alloc's address (what
    Nomad reports as its network status) to the task's hostname (the node's: no UTS namespace,
    as exec), so the hostname resolves to the alloc, not to the host; read-only; the host's
    file is untouched."""
    agent = shared_agent
    with open("/etc/hosts", "rb") as f:
        host_before = f.read()
    alloc, seen = run_network_probe(agent, "hosts", HOSTS_PROBE, "HOSTS", """
    network {
      mode = "bridge"
    }""")
    status = agent.alloc(alloc["ID"]).get("NetworkStatus") or {}
    address = status.get("Address")
    assert address, status
    assert seen["hostname"] == os.uname().nodename, seen
    entries = [ln.split() for ln in seen["text"].splitlines() if ln and not ln.startswith("#")]
    assert ["127.0.0.1", "localhost"] in entries, seen
    # The node's own entries are kept (like podman), without any name equal to the hostname.
    for ln in host_before.decode().splitlines():
        fields = ln.split("#")[0].split()
        kept = [n for n in fields[1:] if n != seen["hostname"]]
        if kept:
            assert [fields[0], *kept] in entries, (ln, seen)
    assert entries[-1] == [address, seen["hostname"]], seen
    assert seen["resolved"] == address, seen
    assert seen["writable"] is False, seen
    with open("/etc/hosts", "rb") as f:
        assert f.read() == host_before
