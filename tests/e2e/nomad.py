"""A real Nomad agent for end-to-end tests of nomad-driver-elide (standard library only).

`NomadAgent` starts `nomad agent` on 127.0.0.1 with its own free ports, data dir, plugin dir
(holding only a copy of nomad-driver-elide) and an HCL config rendered from a Python dict, and
talks to it over the HTTP API. Modes:

* ``dev``: ``nomad agent -dev`` (in-memory server; allocations are destroyed when it stops).
* ``persistent``: a server+client agent with a ``data_dir``, restartable gracefully
  (``stop()``) or by crash (``kill()``) and started again on the same data dir (``start()``),
  so tasks keep running across agent restarts.
* ``server`` / ``client``: the parts of a `Cluster` -- one server and several clients on this
  machine, each client with its own data dir, ports, ``cgroup_parent``, dynamic port range,
  plugin ``runtime_dir`` and, with ``install_root``, the plugin and shim installed from the
  release .deb (``dpkg-deb -x`` into a per-client root, see `install_deb`).

Waiting is done with Nomad's blocking queries (``?index=&wait=``) or by following a log
stream, never with fixed sleeps. Every process the agent starts (plugin, shims, tasks) is
tracked so the tests can prove that none is left behind (`Processes`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGIN_NAME = "nomad-driver-elide"
EXECUTOR_NAME = "elide-executor"
DRIVER = "elide"
STANDIN = os.path.join(REPO, "tests", "elide-standin", "elide")
MARKER_ENV = "NDE_E2E_AGENT"
CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP_V2 = os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers"))
# Debian's containernetworking-plugins (.ci/run installs them): bridge networking works.
CNI_PATH = "/usr/lib/cni"
# The PATH an agent gets as a systemd service (systemd's default), which Nomad hands on to
# the tasks of drivers without an image (the agent's environment). Not the shell's: on the
# build machines it starts with pyenv's shims, so every `python3` the stand-in's
# `#!/usr/bin/env` line found was a chain of about 15 shell processes (60 ms and 50 ms of
# CPU per task start, 3x the stand-in's own start) ending in the same /usr/bin/python3.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Generous deadlines: they bound a wait that normally ends on an event within seconds.
START_TIMEOUT = float(os.environ.get("NDE_E2E_START_TIMEOUT", "90"))
WAIT_TIMEOUT = float(os.environ.get("NDE_E2E_WAIT_TIMEOUT", "90"))


class HarnessError(AssertionError):
    """A test-environment failure: says what went wrong and where to look."""


# --------------------------------------------------------------------------- building


def _run_logged(cmd: list[str], what: str, cwd: str = REPO, env: Optional[dict] = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError as e:
        raise HarnessError(f"{what}: {e.filename} is not installed") from e
    if proc.returncode != 0:
        raise HarnessError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                           f"{proc.stdout[-8000:]}")
    return proc.stdout


def build_workspace() -> dict[str, str]:
    """`scripts/build-release`: the plugin and the shim as they ship (the shim static, in
    target/release/shim); returns their paths.

    NDE_E2E_NO_BUILD=1 skips the build (scripts/test builds first) but still checks the
    binaries exist. NDE_E2E_PLUGIN and NDE_E2E_EXECUTOR (both, with NDE_E2E_NO_BUILD=1) name
    other binaries to test instead: `scripts/test --coverage` passes its instrumented ones.
    """
    script = os.path.join(REPO, "scripts", "build-release")
    plugin, executor = os.environ.get("NDE_E2E_PLUGIN"), os.environ.get("NDE_E2E_EXECUTOR")
    if plugin or executor:
        if not (plugin and executor) or os.environ.get("NDE_E2E_NO_BUILD") != "1":
            raise HarnessError("NDE_E2E_PLUGIN and NDE_E2E_EXECUTOR go together, with "
                               "NDE_E2E_NO_BUILD=1: set both (or neither)")
    elif os.environ.get("NDE_E2E_NO_BUILD") != "1":
        if shutil.which("cargo") is None:
            raise HarnessError(
                "cargo is not installed: install Rust with rustup (https://rustup.rs, "
                "`curl --proto '=https' -sSf https://sh.rustup.rs | sh -s -- -y`) or run .ci/run, "
                "which installs everything the tests need")
        out = _run_logged([script], "scripts/build-release (the plugin and the static shim)")
    else:
        out = _run_logged([script, "--print"], "scripts/build-release --print")
    if not plugin:
        plugin, executor = out.strip().splitlines()[-2:]
    for name, path in ((PLUGIN_NAME, plugin), (EXECUTOR_NAME, executor)):
        if not os.access(path, os.X_OK):
            raise HarnessError(f"{path} was not built: scripts/build-release must produce {name}")
    return {"plugin": plugin, "executor": executor}


def find_nomad() -> str:
    """$NOMAD_BIN, else the cached real Nomad built by tests/nomad/build-nomad.sh."""
    env_bin = os.environ.get("NOMAD_BIN")
    if env_bin:
        if not os.access(env_bin, os.X_OK):
            raise HarnessError(f"NOMAD_BIN={env_bin} is not an executable file")
        return env_bin
    script = os.path.join(REPO, "tests", "nomad", "build-nomad.sh")
    if shutil.which("go") is None:
        cached = _cached_nomad()
        if cached:
            return cached
        raise HarnessError(
            "no Nomad agent: Go is not installed, so tests/nomad/build-nomad.sh cannot build "
            "one. Install Go >= 1.21 (apt-get install golang-go, or the tarball from go.dev) "
            "or set NOMAD_BIN to a Nomad 1.6.x binary; .ci/run installs everything")
    proc = subprocess.run(["bash", script], cwd=REPO, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0 or not os.access(path, os.X_OK):
        raise HarnessError(f"tests/nomad/build-nomad.sh could not build Nomad (exit "
                           f"{proc.returncode}):\n{proc.stderr[-6000:]}")
    return path


def _cached_nomad() -> Optional[str]:
    cache = os.environ.get("NOMAD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nomad-driver-elide")
    for v in ("1.6.5", "1.6.4", "1.6.3", "1.6.2", "1.6.1", "1.6.0"):
        p = os.path.join(cache, f"nomad-{v}", "nomad")
        if os.access(p, os.X_OK):
            return p
    return None


# --------------------------------------------------------------------------- release packages

# Where the .deb puts the plugin and the shim (driver/Cargo.toml, [package.metadata.deb]).
DEB_PLUGIN_DIR = "opt/nomad/data/plugins"
DEB_EXECUTOR = "usr/libexec/nomad-driver-elide/elide-executor"


def read_release(dist: str) -> dict:
    """The packages `packaging/release` left in `dist`: {"deb", "tarball", "version"}. Fails
    unless there is exactly one of each."""
    if not os.path.isdir(dist):
        raise HarnessError(f"no release in {dist}: run packaging/release --out {dist}")
    debs = sorted(f for f in os.listdir(dist) if f.endswith(".deb"))
    tars = sorted(f for f in os.listdir(dist) if f.endswith(".tar.gz"))
    if len(debs) != 1 or len(tars) != 1:
        raise HarnessError(f"{dist} must hold one .deb and one .tar.gz from packaging/release, "
                           f"has {debs + tars}")
    deb = os.path.join(dist, debs[0])
    version = _run_logged(["dpkg-deb", "-f", deb, "Version"], "reading the .deb version").strip()
    return {"deb": deb, "tarball": os.path.join(dist, tars[0]),
            "version": version.rsplit("-", 1)[0]}


def build_release(out_dir: str, version: Optional[str] = None) -> dict:
    """`packaging/release --out out_dir`, with NDE_VERSION=version when given (the binaries
    are then rebuilt with that version: only the two binary crates recompile)."""
    if shutil.which("dpkg-deb") is None:
        raise HarnessError("dpkg-deb is not installed: apt-get install dpkg (.ci/run does)")
    env = {**os.environ}
    if version:
        env["NDE_VERSION"] = version
    os.makedirs(out_dir, exist_ok=True)
    _run_logged([os.path.join(REPO, "packaging", "release"), "--out", out_dir],
                f"packaging/release{' (NDE_VERSION=' + version + ')' if version else ''}",
                env=env)
    rel = read_release(out_dir)
    if version and rel["version"] != version:
        raise HarnessError(f"packaging/release built {rel['version']}, not {version}")
    return rel


def install_deb(deb: str, root: str) -> None:
    """Unpack a .deb into `root` like dpkg does: existing files are replaced by new inodes,
    so processes running the old binaries (shims) keep them."""
    os.makedirs(root, exist_ok=True)
    _run_logged(["dpkg-deb", "-x", deb, root], f"unpacking {os.path.basename(deb)}")
    for rel in (DEB_PLUGIN_DIR + "/" + PLUGIN_NAME, DEB_EXECUTOR):
        if not os.access(os.path.join(root, rel), os.X_OK):
            raise HarnessError(f"{deb} did not install /{rel}")


# --------------------------------------------------------------------------- HCL


@dataclass
class Block:
    """An HCL block (`name { ... }`) rather than a map attribute (`name = { ... }`)."""
    body: dict


@dataclass
class Raw:
    """HCL expression text inserted verbatim, e.g. Raw('"5s"') or Raw('5').'"""
    text: str


def hcl_string(s: str) -> str:
    out = json.dumps(s, ensure_ascii=False)
    return out.replace("${", "$${").replace("%{", "%%{")


def hcl_value(v: Any, indent: int = 0) -> str:
    pad = "  " * (indent + 1)
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return hcl_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(hcl_value(x, indent) for x in v) + "]"
    if isinstance(v, dict):
        if not v:
            return "{}"
        items = "".join(f"{pad}{hcl_string(str(k))} = {hcl_value(x, indent + 1)}\n"
                        for k, x in v.items())
        return "{\n" + items + "  " * indent + "}"
    raise TypeError(f"cannot render {type(v).__name__} as HCL: {v!r}")


def hcl_body(d: dict, indent: int = 0) -> str:
    """Render a dict as an HCL body: Block values (or lists of Blocks) become blocks."""
    pad = "  " * indent
    out = []
    for k, v in d.items():
        blocks = v if isinstance(v, list) and v and all(isinstance(b, Block) for b in v) else (
            [v] if isinstance(v, Block) else None)
        if blocks is not None:
            for b in blocks:
                out.append(f"{pad}{k} {{\n{hcl_body(b.body, indent + 1)}{pad}}}\n")
        else:
            out.append(f"{pad}{k} = {hcl_value(v, indent)}\n")
    return "".join(out)


def plugin_block(config: Optional[dict], args: Optional[list[str]] = None) -> str:
    body: dict = {}
    if args:
        body["args"] = args
    if config is not None:
        body["config"] = Block(config)
    return f'plugin "{PLUGIN_NAME}" {{\n{hcl_body(body, 1)}}}\n'


# --------------------------------------------------------------------------- processes


PR_SET_CHILD_SUBREAPER = 36
# PIDs of processes the harness itself waits for (agents): never reaped by reap_orphans(),
# or their Popen would lose the exit status.
OWN_CHILDREN: set[int] = set()


def become_subreaper() -> None:
    """Make this process the reaper of orphaned descendants, so detached shims and tasks
    stay in our process tree and can be accounted for.

    A subreaper must also reap them: an adopted process that exits stays a zombie until
    we do, and a zombie still "exists" for kill(pid, 0) -- go-plugin would then wait
    forever for a reattached plugin to exit. Adopted children announce their death with
    SIGCHLD; the handler reaps exactly those (see reap_orphans)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    signal.signal(signal.SIGCHLD, lambda _sig, _frame: reap_orphans())


@dataclass(frozen=True)
class Proc:
    pid: int
    start: int          # /proc/<pid>/stat field 22, guards against PID reuse
    ppid: int
    state: str
    sid: int
    cmdline: str
    exe: str

    def describe(self) -> str:
        return f"pid {self.pid} (ppid {self.ppid}, state {self.state}): {self.cmdline or self.exe}"


def _read(path: str, binary: bool = False):
    try:
        with open(path, "rb") as f:
            data = f.read()
        return data if binary else data.decode("utf-8", "replace")
    except OSError:
        return None


def proc_info(pid: int) -> Optional[Proc]:
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    rest = stat[stat.rfind(")") + 2:].split()
    cmd = _read(f"/proc/{pid}/cmdline", binary=True) or b""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = ""
    return Proc(pid=pid, state=rest[0], ppid=int(rest[1]), sid=int(rest[3]), start=int(rest[19]),
                cmdline=cmd.replace(b"\0", b" ").decode("utf-8", "replace").strip(), exe=exe)


def all_procs() -> dict[int, Proc]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            p = proc_info(int(name))
            if p:
                out[p.pid] = p
    return out


def descendants(root: int, procs: Optional[dict[int, Proc]] = None) -> list[Proc]:
    procs = procs if procs is not None else all_procs()
    children: dict[int, list[Proc]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p)
    out, stack = [], [root]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c.pid)
    return out


def is_alive(p: Proc) -> bool:
    now = proc_info(p.pid)
    return now is not None and now.start == p.start and now.state not in ("Z", "X")


def reap_orphans(keep: Iterable[int] = ()) -> None:
    """Reap zombie children adopted through the subreaper, never our own children.

    Our own children (agents, CLI runs, builds) must be left to their Popen, which needs
    their exit status. Agents are in OWN_CHILDREN; every other child we spawn shares our
    session, while adopted processes come from an agent's session (the agent runs in a
    new one) or from their own (shims and tasks call setsid)."""
    keep = set(keep) | OWN_CHILDREN
    me, my_sid = os.getpid(), os.getsid(0)
    try:
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return
    for pid in pids:
        if pid in keep:
            continue
        p = proc_info(pid)
        if p and p.ppid == me and p.state == "Z" and p.sid != my_sid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p.pid, os.WNOHANG)


def wait_gone(procs: list[Proc], timeout: float, keep: Iterable[int] = ()) -> list[Proc]:
    """Wait (on pidfds, no polling) until every process has exited; return the survivors."""
    deadline = time.monotonic() + timeout
    keep = list(keep)
    fds: dict[int, Proc] = {}
    try:
        for p in procs:
            try:
                fd = os.pidfd_open(p.pid)
            except OSError:
                continue
            if is_alive(p):
                fds[fd] = p
            else:
                os.close(fd)
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        alive = dict(fds)
        while alive:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                alive.pop(fd, None)
            reap_orphans(keep)
        reap_orphans(keep)
        return [p for p in alive.values() if is_alive(p)]
    finally:
        for fd in fds:
            os.close(fd)


# --------------------------------------------------------------------------- HTTP API


class ApiError(Exception):
    def __init__(self, method: str, path: str, status: int, body: str):
        super().__init__(f"{method} {path} -> HTTP {status}: {body.strip()[:2000]}")
        self.status = status
        self.body = body


class Api:
    def __init__(self, addr: str):
        self.addr = addr.rstrip("/")

    def request(self, method: str, path: str, body: Any = None, params: Optional[dict] = None,
                timeout: float = 30, raw: bool = False):
        url = self.addr + path
        if params:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(params)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                payload = resp.read()
                index = int(resp.headers.get("X-Nomad-Index") or 0)
        except urllib.error.HTTPError as e:
            raise ApiError(method, path, e.code, e.read().decode("utf-8", "replace")) from None
        if raw:
            return payload, index
        text = payload.decode("utf-8", "replace")
        return (json.loads(text) if text.strip() else None), index

    def get(self, path: str, **params):
        return self.request("GET", path, params=params or None)[0]

    def post(self, path: str, body: Any = None, **params):
        return self.request("POST", path, body=body if body is not None else {},
                            params=params or None)[0]

    def put(self, path: str, body: Any = None, **params):
        return self.request("PUT", path, body=body if body is not None else {},
                            params=params or None)[0]

    def delete(self, path: str, **params):
        return self.request("DELETE", path, params=params or None)[0]

    def blocking(self, path: str, pred: Callable[[Any], Any], timeout: float = WAIT_TIMEOUT,
                 what: str = "", check: Optional[Callable[[], None]] = None, **params):
        """GET `path` with blocking queries until `pred(value)` is truthy; returns the value.

        `check` is called between queries (e.g. to fail fast when the agent died)."""
        deadline = time.monotonic() + timeout
        index, last, last_err = 0, None, None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for "
                                   f"{what or path}; last value: {_short(last)}"
                                   + (f"; last error: {last_err}" if last_err else ""))
            if check:
                check()
            wait = max(1, min(int(left), 10))
            try:
                last, new_index = self.request(
                    "GET", path, params={**params, "index": index, "wait": f"{wait}s"},
                    timeout=wait + 10)
                last_err = None
            except (ApiError, OSError) as e:
                # Not found yet / agent not listening yet: retry after a short pause.
                last_err = e
                time.sleep(0.2)
                continue
            # pred may return the part of the value the caller wants (any truthy object);
            # True means "the whole value".
            result = pred(last)
            if result:
                return last if result is True else result
            # A blocking query can return early with the same index; don't spin.
            if new_index <= index:
                time.sleep(0.2)
            index = new_index


def _short(v: Any, n: int = 3000) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s if len(s) <= n else s[:n] + "…"


def free_ports(n: int) -> list[int]:
    """n distinct loopback ports free for both TCP and UDP (serf uses both)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                t.close()
                u.close()
                continue
            socks += [t, u]
            ports.append(port)
        return ports
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------- the agent


TERMINAL_CLIENT = {"complete", "failed", "lost"}


class NomadAgent:
    """One real Nomad agent with the plugin. Create through the `nomad_agent` fixture."""

    def __init__(self, nomad_bin: str, base_dir: str, *, plugin_bin: Optional[str],
                 executor_bin: Optional[str], plugin_config: Optional[dict] = None,
                 mode: str = "dev", plugin_args: Optional[list[str]] = None,
                 extra_hcl: str = "", env: Optional[dict] = None, name: str = "agent",
                 log_level: str = "DEBUG", install_root: Optional[str] = None,
                 servers: Optional[list[str]] = None,
                 dynamic_ports: Optional[tuple[int, int]] = None, client_hcl: str = ""):
        """install_root: a root the release .deb was unpacked into (install_deb); the plugin
        and shim are used from there instead of plugin_bin/executor_bin. servers and
        dynamic_ports are for mode="client". client_hcl is added to the client {} block."""
        if mode not in ("dev", "persistent", "server", "client"):
            raise ValueError(f"mode must be 'dev', 'persistent', 'server' or 'client', "
                             f"not {mode!r}")
        if mode == "client" and not servers:
            raise ValueError("a client agent needs servers=['127.0.0.1:<rpc port>']")
        self.nomad_bin = nomad_bin
        self.name = name
        self.mode = mode
        self.base = os.path.abspath(base_dir)
        self.id = uuid.uuid4().hex[:12]
        os.makedirs(self.base, exist_ok=True)
        self.plugin_dir = os.path.join(self.base, "plugins")
        self.data_dir = os.path.join(self.base, "data")
        self.bin_dir = os.path.join(self.base, "bin")
        self.config_path = os.path.join(self.base, "agent.hcl")
        self.log_path = os.path.join(self.base, "agent.log")
        # Unix socket paths must stay under 108 bytes: a short, unique runtime dir per agent.
        self.runtime_dir = f"/tmp/nde-{self.id[:8]}"
        for d in (self.plugin_dir, self.data_dir, self.bin_dir):
            os.makedirs(d, exist_ok=True)
        self.plugin_path = None
        self.executor_path = None
        self.install_root = install_root
        if install_root:
            self.plugin_dir = os.path.join(install_root, DEB_PLUGIN_DIR)
            self.plugin_path = os.path.join(self.plugin_dir, PLUGIN_NAME)
            self.executor_path = os.path.join(install_root, DEB_EXECUTOR)
        if plugin_bin and not install_root:
            self.plugin_path = os.path.join(self.plugin_dir, PLUGIN_NAME)
            shutil.copy2(plugin_bin, self.plugin_path)
        if executor_bin and not install_root:
            self.executor_path = os.path.join(self.bin_dir, EXECUTOR_NAME)
            shutil.copy2(executor_bin, self.executor_path)
        self.node_name = f"nde-{name}-{self.id[:6]}"
        self.servers = servers or []
        self.dynamic_ports = dynamic_ports
        # Each client its own cgroup parent (Nomad 1.6 keeps its cpuset partitions there).
        self.cgroup_parent = (f"nde-{self.id[:8]}.slice" if CGROUP_V2
                              else f"/nde-{self.id[:8]}") if mode == "client" else None
        self.plugin_config = plugin_config
        self.plugin_args = plugin_args
        self.extra_hcl = extra_hcl
        # Extra lines of the (single) client block, e.g. host_volume blocks.
        self.client_hcl = client_hcl
        self.log_level = log_level
        self.env = {**os.environ, "PATH": SERVICE_PATH, **(env or {}), MARKER_ENV: self.id}
        self.env.pop("NOMAD_ADDR", None)
        self.http_port, self.rpc_port, self.serf_port = free_ports(3)
        self.addr = f"http://127.0.0.1:{self.http_port}"
        self.api = Api(self.addr)
        self.proc: Optional[subprocess.Popen] = None
        self.exit_codes: list[int] = []
        self._log_file = None
        self._seen: dict[tuple[int, int], Proc] = {}
        self.node_id: Optional[str] = None
        self._node_index = 0  # node ModifyIndex before a restart: re-registration raises it

    # ---------------------------------------------------------------- config and lifecycle

    def default_plugin_config(self) -> dict:
        cfg: dict = {"elide_binary": STANDIN, "runtime_dir": self.runtime_dir}
        # scripts/test runs the tests that read logs once more with logmon collecting them.
        if os.environ.get("NDE_E2E_LOG_COLLECTION"):
            cfg["log_collection"] = os.environ["NDE_E2E_LOG_COLLECTION"]
        # The cgroup v2 lane runs under QEMU's software emulation, where even the stand-in's
        # `--version` takes seconds (scripts/test-cgroup2).
        if os.environ.get("NDE_E2E_VERSION_TIMEOUT"):
            cfg["version_timeout"] = os.environ["NDE_E2E_VERSION_TIMEOUT"]
        if self.executor_path:
            cfg["executor_binary"] = self.executor_path
        return cfg

    def render_config(self) -> str:
        parts = [
            f'name = "{self.node_name}"',
            'bind_addr = "127.0.0.1"',
            "disable_update_check = true",
            f"ports {{\n  http = {self.http_port}\n  rpc  = {self.rpc_port}\n"
            f"  serf = {self.serf_port}\n}}",
        ]
        # The tests read logs and task states of finished allocations: the client must not
        # collect them because the shared machine's disk is over Nomad's 80 % default.
        client = [f"cni_path = {hcl_string(CNI_PATH)}",
                  "gc_disk_usage_threshold  = 99", "gc_inode_usage_threshold = 99"]
        if self.mode == "persistent":
            parts += [
                f"data_dir = {hcl_string(self.data_dir)}",
                'advertise {\n  http = "127.0.0.1"\n  rpc  = "127.0.0.1"\n  serf = "127.0.0.1"\n}',
                "server {\n  enabled = true\n  bootstrap_expect = 1\n}",
            ]
            client = ["enabled = true", 'network_interface = "lo"'] + client
        elif self.mode in ("server", "client"):
            parts += [
                f"data_dir = {hcl_string(self.data_dir)}",
                'advertise {\n  http = "127.0.0.1"\n  rpc  = "127.0.0.1"\n  serf = "127.0.0.1"\n}',
            ]
            if self.mode == "server":
                parts += ["server {\n  enabled = true\n  bootstrap_expect = 1\n}"]
                client = ["enabled = false"]
            else:
                settings = {"enabled": True, "servers": self.servers, "network_interface": "lo",
                            "cgroup_parent": self.cgroup_parent}
                if self.dynamic_ports:
                    settings["min_dynamic_port"], settings["max_dynamic_port"] = self.dynamic_ports
                parts += ["server {\n  enabled = false\n}"]
                client = [hcl_body(settings).rstrip()] + client
        if self.client_hcl:
            client.append(self.client_hcl.strip())
        parts.append("client {\n" + textwrap.indent("\n".join(client), "  ") + "\n}")
        if self.plugin_path is not None:
            parts.append(plugin_block(self.plugin_config, self.plugin_args).rstrip())
        if self.extra_hcl:
            parts.append(self.extra_hcl.strip())
        return "\n".join(parts) + "\n"

    def command(self) -> list[str]:
        cmd = [self.nomad_bin, "agent"]
        if self.mode == "dev":
            cmd += ["-dev", f"-data-dir={self.data_dir}"]
        cmd += [f"-plugin-dir={self.plugin_dir}", f"-config={self.config_path}",
                f"-log-level={self.log_level}"]
        return cmd

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True, timeout: float = START_TIMEOUT) -> "NomadAgent":
        """Start the agent (again, on the same data dir) and by default wait for the node."""
        if self.running:
            raise HarnessError(f"agent {self.name} is already running (pid {self.proc.pid})")
        with open(self.config_path, "w") as f:
            f.write(self.render_config())
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"==== harness: starting {' '.join(self.command())}\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=self._log_file, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=self.base, start_new_session=True)
        OWN_CHILDREN.add(self.proc.pid)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_exit(self, timeout: float = START_TIMEOUT) -> int:
        """Wait for the agent process to exit by itself; returns its exit code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"agent {self.name} still running after {timeout:.0f}s; "
                               f"log tail:\n{self.log_tail(60)}") from None
        self._closed(code)
        return code

    def _closed(self, code: int) -> None:
        self.exit_codes.append(code)
        if self._log_file:
            self._log_file.write(f"==== harness: agent exited with {code}\n".encode())
            self._log_file.close()
            self._log_file = None

    def stop(self, timeout: float = 60) -> int:
        """Graceful stop (SIGINT, like Ctrl-C), then SIGKILL after `timeout`. Returns the exit
        code. In dev mode Nomad destroys the allocations first; in persistent mode tasks keep
        running."""
        if not self.running:
            return self.proc.returncode if self.proc else 0
        self._before_stop()
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
            self._closed(code)
            raise HarnessError(f"agent {self.name} ignored SIGINT for {timeout:.0f}s and was "
                               f"SIGKILLed; log tail:\n{self.log_tail(80)}") from None
        self._closed(code)
        return code

    def kill(self) -> int:
        """Crash the agent (SIGKILL to the agent process only; its plugin survives, as in a
        real crash, and is reattached by the next start())."""
        if not self.running:
            return self.proc.returncode if self.proc else 0
        self._before_stop()
        self.proc.kill()
        code = self.proc.wait()
        self._closed(code)
        return code

    def restart(self, graceful: bool = True) -> "NomadAgent":
        if self.mode == "dev":
            raise HarnessError("restart() needs a non-dev mode (a dev agent has no state)")
        self.stop() if graceful else self.kill()
        return self.start()

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            if not self.exit_codes or self.exit_codes[-1] != code:
                self._closed(code)
            raise HarnessError(f"agent {self.name} exited with {code}; log tail:\n"
                               f"{self.log_tail(80)}")

    # ---------------------------------------------------------------- logs and processes

    def log(self) -> str:
        return _read(self.log_path) or ""

    def log_tail(self, n: int = 100) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    def plugin_log_lines(self) -> list[str]:
        """Agent log lines written by (or about) the plugin."""
        return [ln for ln in self.log().splitlines() if PLUGIN_NAME in ln or "driver=elide" in ln]

    def wait_log(self, pattern: str, timeout: float = WAIT_TIMEOUT) -> re.Match:
        """Wait until the agent log matches the regex `pattern` (follows the file)."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        with open(self.log_path, "rb") as f:
            buf = ""
            while True:
                chunk = f.read()
                if chunk:
                    buf += chunk.decode("utf-8", "replace")
                    m = rx.search(buf)
                    if m:
                        return m
                    continue
                if time.monotonic() > deadline:
                    raise TimeoutError(f"agent log never matched {pattern!r} in {timeout:.0f}s")
                if not self.running:
                    raise HarnessError(f"agent exited before its log matched {pattern!r}")
                time.sleep(0.1)  # a plain file has no change notification without inotify

    def owned(self, p: Proc) -> bool:
        """Whether a process belongs to this agent: it runs from, is in, or was given paths of
        this agent's dirs, or inherited its marker environment variable."""
        needles = (self.base, self.runtime_dir)
        if any(n in p.cmdline or p.exe.startswith(n) for n in needles):
            return True
        try:
            cwd = os.readlink(f"/proc/{p.pid}/cwd")
            if any(cwd == n or cwd.startswith(n + "/") for n in needles):
                return True
        except OSError:
            pass
        env = _read(f"/proc/{p.pid}/environ", binary=True) or b""
        return f"{MARKER_ENV}={self.id}".encode() in env.split(b"\0")

    def processes(self) -> list[Proc]:
        """Live processes of this agent: its own tree plus anything owned() (detached shims
        and tasks re-parented elsewhere)."""
        procs = all_procs()
        found = {}
        if self.running:
            found[self.proc.pid] = procs.get(self.proc.pid)
            for p in descendants(self.proc.pid, procs):
                found[p.pid] = p
        for p in procs.values():
            if p.pid != os.getpid() and p.state not in ("Z", "X") and self.owned(p):
                found[p.pid] = p
        return [p for p in found.values() if p is not None and p.state not in ("Z", "X")]

    def _before_stop(self) -> None:
        self.snapshot()
        if self.node_id:
            try:
                self._node_index = self.node()["ModifyIndex"]
            except (ApiError, OSError, KeyError):
                pass

    def snapshot(self) -> None:
        for p in self.processes():
            self._seen[(p.pid, p.start)] = p

    def leftovers(self, timeout: float = 15) -> list[Proc]:
        """After stop(): wait for every process this agent ever had to exit; return the ones
        still alive after `timeout`."""
        self.snapshot()
        candidates = [p for p in self._seen.values()
                      if not (self.proc is not None and p.pid == self.proc.pid and not self.running)]
        keep = [self.proc.pid] if self.proc else []
        return wait_gone(candidates, timeout, keep=keep)

    def runtime_entries(self) -> list[str]:
        """What tasks have in the plugin's runtime dir (shim sockets, the task index): its
        entries but dotfiles and the running plugin's own notify socket (`notify-<pid>.sock`,
        which the plugin removes when it exits)."""
        if not os.path.isdir(self.runtime_dir):
            return []
        plugins = {f"notify-{p.pid}.sock" for p in self.find_processes(self.plugin_path)
                   if p.state not in "ZX"}
        return sorted(f for f in os.listdir(self.runtime_dir)
                      if not f.startswith(".") and f not in plugins)

    def find_processes(self, needle: str) -> list[Proc]:
        return [p for p in self.processes() if needle in p.cmdline or needle in p.exe]

    # ---------------------------------------------------------------- CLI

    def cli(self, *args: str, check: bool = True, timeout: float = 120,
            input: Optional[str] = None) -> subprocess.CompletedProcess:
        """Run the `nomad` CLI against this agent (NOMAD_ADDR set)."""
        env = {**os.environ, "NOMAD_ADDR": self.addr, "NO_COLOR": "1"}
        proc = subprocess.run([self.nomad_bin, *args], env=env, input=input, text=True,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              capture_output=True, timeout=timeout, cwd=self.base)
        if check and proc.returncode != 0:
            raise HarnessError(f"`nomad {' '.join(args)}` exited {proc.returncode}:\n"
                               f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    # ---------------------------------------------------------------- node and drivers

    def wait_ready(self, timeout: float = START_TIMEOUT) -> dict:
        """Wait for the client node to register and be `ready`; returns the node. After a
        restart, waits for this agent's node to re-register (its ModifyIndex to move). A
        server-only agent: waits for a leader; returns {}."""
        if self.mode == "server":
            self.api.blocking("/v1/status/leader", lambda leader: bool(leader), timeout=timeout,
                              what="a leader", check=self.check_alive)
            return {}

        def ready(nodes):
            mine = [n for n in nodes or [] if n.get("Status") == "ready"
                    and n.get("Name") == self.node_name
                    and (self.node_id is None or (n["ID"] == self.node_id
                                                  and n["ModifyIndex"] > self._node_index))]
            return mine[0] if mine else None
        stub = self.api.blocking("/v1/nodes", ready, timeout=timeout, what="node ready",
                                 check=self.check_alive)
        self.node_id = stub["ID"]
        return self.node()

    def node(self) -> dict:
        return self.api.get(f"/v1/node/{self.node_id}")

    def driver(self, name: str = DRIVER) -> Optional[dict]:
        return (self.node().get("Drivers") or {}).get(name)

    def wait_driver(self, pred: Callable[[dict], Any] = lambda d: True, name: str = DRIVER,
                    timeout: float = WAIT_TIMEOUT) -> dict:
        """Wait until the node lists driver `name` and `pred(driver_info)` holds."""
        node = self.api.blocking(
            f"/v1/node/{self.node_id}",
            lambda n: (n.get("Drivers") or {}).get(name) is not None
            and bool(pred(n["Drivers"][name])),
            timeout=timeout, what=f"driver {name!r} on the node", check=self.check_alive)
        return node["Drivers"][name]

    def wait_driver_healthy(self, name: str = DRIVER, timeout: float = WAIT_TIMEOUT) -> dict:
        return self.wait_driver(lambda d: d.get("Detected") and d.get("Healthy"), name, timeout)

    # ---------------------------------------------------------------- jobs

    def parse_job(self, hcl: str, variables: Optional[dict] = None) -> dict:
        body: dict = {"JobHCL": hcl, "Canonicalize": True}
        if variables:
            body["Variables"] = "".join(f"{k} = {hcl_value(v)}\n" for k, v in variables.items())
        return self.api.post("/v1/jobs/parse", body)

    def register(self, job: dict) -> dict:
        """POST /v1/jobs; returns the response (EvalID, JobModifyIndex, Warnings)."""
        return self.api.post("/v1/jobs", {"Job": job})

    def run_job(self, hcl_or_path: str, variables: Optional[dict] = None,
                wait_eval: bool = True) -> dict:
        """Parse and register a job (HCL text or a path to a .nomad file); returns the parsed
        job (with `ID`). Waits for its evaluation and fails if placement failed."""
        hcl = hcl_or_path
        if "\n" not in hcl_or_path and os.path.exists(hcl_or_path):
            hcl = _read(hcl_or_path)
        job = self.parse_job(hcl, variables)
        resp = self.register(job)
        if wait_eval and resp.get("EvalID"):
            ev = self.wait_eval(resp["EvalID"])
            if ev.get("FailedTGAllocs"):
                raise HarnessError(f"job {job['ID']} could not be placed: "
                                   f"{_short(ev['FailedTGAllocs'])}")
        return job

    def wait_eval(self, eval_id: str, timeout: float = WAIT_TIMEOUT) -> dict:
        return self.api.blocking(f"/v1/evaluation/{eval_id}",
                                 lambda e: e.get("Status") in ("complete", "failed", "canceled"),
                                 timeout=timeout, what=f"evaluation {eval_id}",
                                 check=self.check_alive)

    def allocs(self, job_id: str) -> list[dict]:
        return self.api.get(f"/v1/job/{urllib.parse.quote(job_id)}/allocations") or []

    def alloc(self, alloc_id: str) -> dict:
        return self.api.get(f"/v1/allocation/{alloc_id}")

    def wait_allocs(self, job_id: str, pred: Callable[[list[dict]], Any],
                    timeout: float = WAIT_TIMEOUT, what: str = "") -> Any:
        return self.api.blocking(f"/v1/job/{urllib.parse.quote(job_id)}/allocations", pred,
                                 timeout=timeout, what=what or f"allocations of {job_id}",
                                 check=self.check_alive)

    def wait_alloc(self, alloc_id: str, pred: Callable[[dict], Any],
                   timeout: float = WAIT_TIMEOUT, what: str = "") -> dict:
        return self.api.blocking(f"/v1/allocation/{alloc_id}", pred, timeout=timeout,
                                 what=what or f"allocation {alloc_id}", check=self.check_alive)

    def first_alloc(self, job_id: str, timeout: float = WAIT_TIMEOUT) -> dict:
        """The job's first allocation (waits for it to be placed)."""
        allocs = self.wait_allocs(job_id, lambda a: a, timeout, f"an allocation of {job_id}")
        return self.alloc(sorted(allocs, key=lambda a: a["CreateIndex"])[0]["ID"])

    def wait_task(self, alloc_id: str, task: str, state: str | tuple = "dead",
                  pred: Optional[Callable[[dict], Any]] = None,
                  timeout: float = WAIT_TIMEOUT) -> dict:
        """Wait for a task to reach `state` ("pending", "running", "dead", or a tuple of
        them) and `pred(task_state)`; returns the TaskState (State, Failed, Restarts,
        Events...). Fails fast, with the task events, if the task died while waiting for
        "running"."""
        states = (state,) if isinstance(state, str) else tuple(state)

        def check(a):
            ts = (a.get("TaskStates") or {}).get(task)
            if not ts:
                return None
            if ts["State"] == "dead" and "dead" not in states:
                raise HarnessError(f"task {task} of {alloc_id} is dead, expected "
                                   f"{states}: {describe_task(ts)}")
            if ts["State"] in states and (pred is None or pred(ts)):
                return ts
            return None
        # `blocking` returns what the predicate returned: the task state itself.
        return self.wait_alloc(alloc_id, check, timeout,
                               f"task {task} of alloc {alloc_id[:8]} to be {'/'.join(states)}")

    def task_events(self, alloc_id: str, task: str) -> list[dict]:
        return ((self.alloc(alloc_id).get("TaskStates") or {}).get(task) or {}).get("Events") or []

    def wait_task_event(self, alloc_id: str, task: str, pred: Callable[[dict], Any],
                        timeout: float = WAIT_TIMEOUT, what: str = "") -> dict:
        """Wait for a task event matching `pred` (e.g. lambda e: e["Type"] == "Driver")."""
        def check(a):
            events = ((a.get("TaskStates") or {}).get(task) or {}).get("Events") or []
            for e in events:
                if pred(e):
                    return e
            return None
        return self.api.blocking(f"/v1/allocation/{alloc_id}", check, timeout=timeout,
                                 what=what or f"an event of task {task}",
                                 check=self.check_alive)

    def stop_job(self, job_id: str, purge: bool = False, wait: bool = True,
                 timeout: float = WAIT_TIMEOUT) -> None:
        """Deregister a job; by default wait until all its allocations are terminal."""
        resp = self.api.delete(f"/v1/job/{urllib.parse.quote(job_id)}",
                               **({"purge": "true"} if purge else {}))
        if wait and resp and resp.get("EvalID"):
            self.wait_eval(resp["EvalID"], timeout)
            if not purge:
                self.wait_allocs(job_id, lambda allocs: all(
                    a["ClientStatus"] in TERMINAL_CLIENT for a in allocs), timeout,
                    f"allocations of {job_id} to stop")

    def wait_alloc_stopped(self, alloc_id: str, timeout: float = WAIT_TIMEOUT) -> dict:
        return self.wait_alloc(alloc_id, lambda a: a["ClientStatus"] in TERMINAL_CLIENT,
                               timeout, f"alloc {alloc_id[:8]} to be terminal")

    def signal(self, alloc_id: str, sig: str, task: Optional[str] = None) -> None:
        body = {"Signal": sig}
        if task:
            body["Task"] = task
        self.api.post(f"/v1/client/allocation/{alloc_id}/signal", body)

    def restart_alloc(self, alloc_id: str, task: Optional[str] = None) -> None:
        self.api.post(f"/v1/client/allocation/{alloc_id}/restart",
                      {"TaskName": task} if task else {})

    def alloc_checks(self, alloc_id: str) -> dict:
        """Nomad-provider service check results of an allocation (1.4+)."""
        return self.api.get(f"/v1/client/allocation/{alloc_id}/checks") or {}

    def service(self, name: str) -> list[dict]:
        return self.api.get(f"/v1/service/{name}") or []

    def logs(self, alloc_id: str, task: str, stream: str = "stdout") -> str:
        """The whole log of a task stream, as `nomad alloc logs` shows it."""
        data, _ = self.api.request(
            "GET", f"/v1/client/fs/logs/{alloc_id}",
            params={"task": task, "type": stream, "origin": "start", "offset": 0,
                    "plain": "true"}, raw=True)
        return data.decode("utf-8", "replace")

    def wait_logs(self, alloc_id: str, task: str, text: str, stream: str = "stdout",
                  timeout: float = WAIT_TIMEOUT) -> str:
        """Follow a task's log stream until it contains `text`; returns what was read."""
        deadline = time.monotonic() + timeout
        seen = ""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{stream} of task {task} never showed {text!r} in "
                                   f"{timeout:.0f}s; it has:\n{seen[-4000:]}")
            self.check_alive()
            url = (f"{self.addr}/v1/client/fs/logs/{alloc_id}?" + urllib.parse.urlencode(
                {"task": task, "type": stream, "origin": "start", "offset": 0,
                 "plain": "true", "follow": "true"}))
            seen = ""
            try:
                with urllib.request.urlopen(url, timeout=min(left, 10)) as resp:
                    while True:
                        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(1)
                        if not chunk:
                            break
                        seen += chunk.decode("utf-8", "replace")
                        if text in seen:
                            return seen
            except urllib.error.HTTPError as e:
                # The log file does not exist until the task has started.
                if e.code not in (404, 500):
                    raise ApiError("GET", url, e.code, e.read().decode("utf-8", "replace"))
                time.sleep(0.2)
            except (socket.timeout, TimeoutError, OSError):
                pass
            if text in seen:
                return seen

    # ---------------------------------------------------------------- cleanup

    def stop_all_jobs(self, timeout: float = WAIT_TIMEOUT) -> None:
        """Deregister every job and wait until their allocations are terminal."""
        jobs = self.api.get("/v1/jobs") or []
        for j in jobs:
            if not j.get("Stop"):
                with contextlib.suppress(ApiError):
                    self.api.delete(f"/v1/job/{urllib.parse.quote(j['ID'])}")
        for j in jobs:
            self.wait_allocs(j["ID"], lambda allocs: all(
                a["ClientStatus"] in TERMINAL_CLIENT for a in allocs), timeout,
                f"allocations of {j['ID']} to stop")


# --------------------------------------------------------------------------- a cluster


class Cluster:
    """One server and several clients of one Nomad cluster on this machine. Each client has
    its own data dir, ports, cgroup_parent, dynamic port range and plugin runtime_dir; the
    plugin and shim come from the release .deb unpacked into the client's own root. Jobs go
    through the server (`cluster.server.run_job(...)`); node-level checks through a client."""

    def __init__(self, server: NomadAgent, clients: list[NomadAgent]):
        self.server = server
        self.clients = clients

    @property
    def agents(self) -> list[NomadAgent]:
        return [*self.clients, self.server]

    def start(self) -> "Cluster":
        self.server.start()
        for c in self.clients:        # all at once: they register in parallel
            c.start(wait=False)
        for c in self.clients:
            c.wait_ready()
        return self

    def client(self, name: str) -> NomadAgent:
        return next(c for c in self.clients if c.name == name)

    def by_node(self, node_id: str) -> NomadAgent:
        return next(c for c in self.clients if c.node_id == node_id)

    def placement(self, allocs: list[dict]) -> dict[str, int]:
        """Client name -> number of the given allocations on it (every client listed)."""
        counts = {c.name: 0 for c in self.clients}
        for a in allocs:
            counts[self.by_node(a["NodeID"]).name] += 1
        return counts


def client_dynamic_ports(n: int, size: int = 100) -> list[tuple[int, int]]:
    """n disjoint dynamic port ranges of `size` ports in 20000-29999 (Nomad's default range is
    20000-32000), at a random offset so parallel clusters rarely share one."""
    blocks = 10000 // size
    first = uuid.uuid4().int % (blocks - n)
    return [(20000 + (first + i) * size, 20000 + (first + i + 1) * size - 1) for i in range(n)]


def cgroup_dirs_of_parent(parent: str) -> list[str]:
    """The cgroup dirs a client with this cgroup_parent may have made (v1: per controller)."""
    if CGROUP_V2:
        return [os.path.join(CGROUP_ROOT, parent.lstrip("/"))]
    roots = [os.path.join(CGROUP_ROOT, c) for c in sorted(os.listdir(CGROUP_ROOT))]
    return [os.path.join(r, parent.lstrip("/")) for r in roots
            if os.path.isdir(r) and not os.path.islink(r)]


def cgroup_procs(dir: str) -> list[int]:
    text = _read(os.path.join(dir, "cgroup.procs")) or ""
    return [int(x) for x in text.split()]


def remove_cgroup_tree(dir: str) -> list[str]:
    """rmdir a cgroup and everything below it, deepest first; returns what could not go."""
    failed = []
    if not os.path.isdir(dir):
        return failed
    for root, dirs, _ in sorted(os.walk(dir), key=lambda t: t[0].count("/"), reverse=True):
        try:
            os.rmdir(root)
        except OSError as e:
            failed.append(f"{root}: {e.strerror}")
    return failed


# ------------------------------------------------------------------------ jobs for the tests

#: Group stanzas for a task that must fail for good (no restart, no reschedule).
NO_RESTART = ('restart {\n  attempts = 0\n  mode = "fail"\n}\n'
              'reschedule {\n  attempts = 0\n  unlimited = false\n}')


def elide_job(name: str, script: str, *, script_name: str = "app.py", jtype: str = "service",
              count: int = 1, group: str = "", config: str = "", task: str = "",
              cpu: int = 100, memory: int = 64, script_dir: str = "local/") -> str:
    """A job with one group "g" and one elide task "t" that runs `script`, written by an
    inline template (never executable) to `script_dir` + `script_name` in the task dir.
    `group`, `config` and `task` are extra HCL for those blocks (restart policy, config keys,
    kill_timeout/env/templates...)."""
    path = script_dir + script_name
    return f"""
job "{name}" {{
  datacenters = ["dc1"]
  type = "{jtype}"
  group "g" {{
    count = {count}
    {group}
    task "t" {{
      driver = "elide"
      config {{
        script = "{path}"
        {config}
      }}
      {task}
      template {{
        destination = "{path}"
        perms = "644"
        left_delimiter  = "[["
        right_delimiter = "]]"
        data = <<EOT
{textwrap.dedent(script).strip()}
EOT
      }}
      resources {{
        cpu    = {cpu}
        memory = {memory}
      }}
    }}
  }}
}}
"""


def executor_status(agent: "NomadAgent") -> list[dict]:
    """`elide-executor status --json` for this agent's tasks."""
    out = subprocess.run([agent.executor_path, "status", "--json", "--state-dir",
                          agent.runtime_dir], capture_output=True, text=True, timeout=30)
    if not out.stdout.strip():
        raise HarnessError(f"elide-executor status printed nothing: {out.stderr}")
    return json.loads(out.stdout)


def alloc_procs(alloc_id: str) -> list[Proc]:
    """Live processes of an allocation: its shims (`elide-executor serve … --task <task id>`,
    and a task id starts with the alloc id), everything below them (the sandbox's init, the
    runtime, its children however they left the session) and anything else running in its
    task dirs."""
    procs = all_procs()
    out: dict[int, Proc] = {}
    for p in procs.values():
        try:
            cwd = os.readlink(f"/proc/{p.pid}/cwd")
        except OSError:
            cwd = ""
        if f"--task {alloc_id}/" in p.cmdline:
            out[p.pid] = p
            out.update((d.pid, d) for d in descendants(p.pid, procs))
        elif alloc_id in cwd:
            out[p.pid] = p
    return [p for p in out.values() if p.state not in ("Z", "X")]


def ns_pid_of(pid: int) -> Optional[int]:
    """The pid a process has in its own (innermost) PID namespace: the last NSpid field."""
    m = re.search(r"^NSpid:\s+(.*)$", _read(f"/proc/{pid}/status") or "", re.M)
    return int(m.group(1).split()[-1]) if m else None


def in_pid_namespace_of(init_pid: int, ns_pids: Iterable[int]) -> list[Optional[Proc]]:
    """The host processes behind pids as a task sees them (what its app prints): searched
    among `init_pid` (the shim's `runtime_pid`: the sandbox's PID 1, or the runtime itself
    with pid_mode = "host") and its descendants in the same PID namespace. None for a pid
    not found."""
    try:
        ns = os.readlink(f"/proc/{init_pid}/ns/pid")
    except OSError:
        return [None for _ in ns_pids]
    by_ns_pid: dict[int, Proc] = {}
    for p in [proc_info(init_pid)] + descendants(init_pid):
        if p is None:
            continue
        try:
            if os.readlink(f"/proc/{p.pid}/ns/pid") != ns:
                continue
        except OSError:
            continue
        n = ns_pid_of(p.pid)
        if n is not None:
            by_ns_pid[n] = p
    return [by_ns_pid.get(n) for n in ns_pids]


def runtime_of(runtime_pid: int) -> Optional[Proc]:
    """The runtime (Elide) itself. A shim's `runtime_pid` is the sandbox's PID 1
    (`elide-executor sandbox-init`) when the task has a private PID namespace; the runtime is
    the first child it started. Otherwise `runtime_pid` is the runtime."""
    init = proc_info(runtime_pid)
    if init is None or "sandbox-init" not in init.cmdline:
        return init
    # Orphans of the task are re-parented to the init too: they started later, or in the
    # same clock tick with a higher pid in the namespace (which allocates them in order).
    children = [p for p in all_procs().values() if p.ppid == runtime_pid]
    return min(children, key=lambda p: (p.start, ns_pid_of(p.pid) or 0), default=None)


def describe_task(ts: dict) -> str:
    events = "; ".join(f"{e.get('Type')}: {e.get('DisplayMessage') or e.get('Message') or ''}"
                       .strip() for e in ts.get("Events") or [])
    return (f"state={ts.get('State')} failed={ts.get('Failed')} restarts={ts.get('Restarts')} "
            f"events=[{events}]")


def exit_code_of(ts: dict) -> Optional[int]:
    """Exit code from a task's last "Terminated" event."""
    for e in reversed(ts.get("Events") or []):
        if e.get("Type") == "Terminated":
            return int(e.get("ExitCode", 0))
    return None


def mounts_under(path: str) -> list[str]:
    """Mount points at or below `path` (Nomad mounts a tmpfs on each task's secrets/ and
    private/ dirs and leaves them when a persistent agent stops), deepest first."""
    prefix = os.path.abspath(path).rstrip("/") + "/"
    out = []
    for line in (_read("/proc/self/mounts") or "").splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        mnt = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        if mnt.startswith(prefix):
            out.append(mnt)
    return sorted(set(out), key=lambda m: m.count("/"), reverse=True)


def unmount_under(path: str) -> list[str]:
    """Detach every mount below `path` (after its agent stopped); returns what failed."""
    libc = ctypes.CDLL(None, use_errno=True)
    failed = []
    for mnt in mounts_under(path):
        if libc.umount2(mnt.encode(), 2) != 0:  # MNT_DETACH
            failed.append(f"{mnt}: {os.strerror(ctypes.get_errno())}")
    return failed


def free_runtime_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(path)


def errno_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno, str(e.errno))
