"""Nomad 2.0 compatibility of the real plugin binary, without a Nomad 2.0 agent.

Only Nomad 1.6 can be built here, so this drives `nomad-driver-elide` the way a 2.0 agent
does: go-plugin's handshake (magic cookie, `1|2|unix|<socket>|grpc|`), then gRPC with a
client generated at test time (grpcio-tools) from our proto/, whose wire contract
test_wire_contract.py proves equal to Nomad v2.0.5's (nomad-2.0.5-wire.tsv, listed from
Nomad's own protos). A real task runs through the real `elide-executor` with the Elide
stand-in: start, inspect, signal, the agent's 2.0.4+ Init/Shutdown, the plugin killed and
recovered by a new plugin process, stop, wait, destroy.

    python3 -m pytest -v tests/compat      # builds the release binaries first
                                           # (NDE_E2E_NO_BUILD=1: already built)
"""

from __future__ import annotations

import importlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import grpc
import pytest
from google.protobuf import unknown_fields

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "e2e"))

import nomad as nm  # noqa: E402  (the E2E harness: binaries, stand-in path)
from protoset import NOMAD_PROTOS, PROTO_DIR, protoc  # noqa: E402

MAGIC_COOKIE = "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255"
RPC_TIMEOUT = 30.0
TASK_TIMEOUT = 60.0


# ------------------------------------------------------------------------------------------
# The client, generated from our proto/ (checked against Nomad 2.0.5 by test_wire_contract.py)


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    """Modules generated from proto/: Nomad's plugin services and go-plugin's controller."""
    out = str(tmp_path_factory.mktemp("stubs"))
    # go-plugin's controller (package `plugin`, no imports) under a name Python can import
    # (the generated *_pb2_grpc module imports its *_pb2 by directory: `go-plugin` is not one).
    goplugin = str(tmp_path_factory.mktemp("goplugin"))
    os.makedirs(os.path.join(goplugin, "goplugin"))
    shutil.copy(os.path.join(PROTO_DIR, "go-plugin/grpc_controller.proto"),
                os.path.join(goplugin, "goplugin"))
    protoc(f"--python_out={out}", f"--grpc_python_out={out}", *NOMAD_PROTOS,
           "goplugin/grpc_controller.proto", includes=(goplugin,))
    sys.path.insert(0, out)
    mods = {
        "base": "plugins.base.proto.base_pb2",
        "base_grpc": "plugins.base.proto.base_pb2_grpc",
        "driver": "plugins.drivers.proto.driver_pb2",
        "driver_grpc": "plugins.drivers.proto.driver_pb2_grpc",
        "ctl": "goplugin.grpc_controller_pb2",
        "ctl_grpc": "goplugin.grpc_controller_pb2_grpc",
    }
    return type("PB", (), {key: importlib.import_module(name) for key, name in mods.items()})


# ------------------------------------------------------------------------------------------
# cty msgpack, as Nomad encodes configs (protocol doc §3.3): maps with sorted keys, every
# schema key present (nil when unset), ints in their smallest form.


def msgpack(v) -> bytes:
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        assert v >= 0
        if v < 0x80:
            return bytes([v])
        for tag, size in ((0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8)):
            if v < 1 << (8 * size):
                return bytes([tag]) + v.to_bytes(size, "big")
        raise ValueError(v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xA0 | len(b)]) + b
        if len(b) < 1 << 8:
            return b"\xd9" + bytes([len(b)]) + b
        return b"\xda" + len(b).to_bytes(2, "big") + b
    if isinstance(v, list):
        assert len(v) < 16
        return bytes([0x90 | len(v)]) + b"".join(msgpack(x) for x in v)
    if isinstance(v, dict):
        assert len(v) < 16
        return bytes([0x80 | len(v)]) + b"".join(
            msgpack(k) + msgpack(v[k]) for k in sorted(v))
    raise TypeError(type(v))


TASK_KEYS = ["script", "args", "env", "mode", "guest_env", "runtime_options", "flags",
             "pids_limit", "elide_opts"]


def task_config(**set_keys) -> bytes:
    cfg = {k: None for k in TASK_KEYS}
    cfg.update(set_keys)
    return msgpack(cfg)


# ------------------------------------------------------------------------------------------
# The plugin process, launched as a Nomad agent launches it


class Plugin:
    def __init__(self, pb, binary: str, workdir: str, name: str):
        self.pb = pb
        self.log_path = os.path.join(workdir, f"{name}.log")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "NOMAD_PLUGIN_MAGIC_COOKIE": MAGIC_COOKIE,
            "PLUGIN_PROTOCOL_VERSIONS": "2",
            "TMPDIR": workdir,
        }
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([binary], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=log, env=env)
        self.handshake = self._read_handshake()
        parts = self.handshake.split("|")
        assert parts[:3] == ["1", "2", "unix"] and parts[4] == "grpc", self.handshake
        self.socket = parts[3]
        # go-plugin dials "unused" as the authority; grpc-python would send the socket path,
        # which is not a valid HTTP/2 :authority (hyper refuses it).
        self.channel = grpc.insecure_channel(f"unix:{self.socket}",
                                             options=[("grpc.default_authority", "unused")])
        grpc.channel_ready_future(self.channel).result(timeout=RPC_TIMEOUT)
        self.base = pb.base_grpc.BasePluginStub(self.channel)
        self.driver = pb.driver_grpc.DriverStub(self.channel)
        self.controller = pb.ctl_grpc.GRPCControllerStub(self.channel)

    def _read_handshake(self) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        assert ready, f"no handshake line within 60 s; plugin log: {self.log()}"
        line = self.proc.stdout.readline().decode().strip()
        assert line, f"plugin exited before its handshake; log: {self.log()}"
        return line

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def configure(self, config: dict, topology=True):
        pb = self.pb
        driver_cfg = pb.base.NomadDriverConfig(ClientMaxPort=14512, ClientMinPort=14000)
        if topology:
            driver_cfg.Topology.CopyFrom(pb.base.ClientTopology(
                node_ids=[0],
                distances=pb.base.ClientTopologySLIT(dimension=1, values=[10]),
                cores=[pb.base.ClientTopologyCore(core_id=i, base_speed=2000, max_speed=3000)
                       for i in range(2)]))
        self.base.SetConfig(pb.base.SetConfigRequest(
            msgpack_config=msgpack(config), plugin_api_version="0.1.0",
            nomad_config=pb.base.NomadConfig(driver=driver_cfg)), timeout=RPC_TIMEOUT)
        # What a 2.0.4+ agent does right after SetConfig, on every dispense.
        self.driver.Init(pb.driver.InitRequest(), timeout=RPC_TIMEOUT)

    def exit(self, timeout=10.0) -> int:
        """go-plugin's Kill(): the controller's Shutdown, then the process must leave."""
        try:
            self.controller.Shutdown(self.pb.ctl.Empty(), timeout=RPC_TIMEOUT)
        except grpc.RpcError:
            pass  # the process may exit while answering
        self.channel.close()
        return self.proc.wait(timeout=timeout)

    def kill(self):
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def workdir():
    # Short: the plugin's and the shims' sockets live under it (108-byte limit).
    d = tempfile.mkdtemp(prefix="nc", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def plugins(pb, workdir):
    """Factory of plugin processes; all are killed at the end."""
    started: list[Plugin] = []
    bins = nm.build_workspace()

    def start(name="plugin") -> Plugin:
        p = Plugin(pb, bins["plugin"], workdir, f"{name}{len(started)}")
        started.append(p)
        return p

    start.bins = bins
    start.config = {
        "elide_binary": nm.STANDIN,
        "executor_binary": bins["executor"],
        "runtime_dir": os.path.join(workdir, "run"),
    }
    yield start
    for p in started:
        p.kill()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive (the shim is not our child, but be exact anyway). A process
    # reaped between the kill and the read makes the open fail (ENOENT) or the read fail
    # (ESRCH, ProcessLookupError): both mean it is gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_for(what: str, cond, timeout=TASK_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------
# Tests


def test_handshake_identity_schemas_capabilities_fingerprint(pb, plugins):
    p = plugins()
    info = p.base.PluginInfo(pb.base.PluginInfoRequest(), timeout=RPC_TIMEOUT)
    assert info.type == pb.base.DRIVER
    assert "0.1.0" in info.plugin_api_versions
    assert info.name == "elide"
    assert info.plugin_version

    schema = p.base.ConfigSchema(pb.base.ConfigSchemaRequest(), timeout=RPC_TIMEOUT).spec
    assert schema.WhichOneof("block") == "object"
    assert "runtime_dir" in schema.object.attributes

    # The loader's validation call (no nomad_config), then the long-lived instance's.
    p.base.SetConfig(pb.base.SetConfigRequest(msgpack_config=msgpack(plugins.config),
                                              plugin_api_version="0.1.0"), timeout=RPC_TIMEOUT)
    p.configure(plugins.config)
    # Init is idempotent: a restarted 2.0 agent reattaching to this process sends it again.
    p.driver.Init(pb.driver.InitRequest(), timeout=RPC_TIMEOUT)

    caps = p.driver.Capabilities(pb.driver.CapabilitiesRequest(), timeout=RPC_TIMEOUT)
    assert caps.HasField("capabilities")
    c = caps.capabilities
    assert c.send_signals and c.exec
    assert c.fs_isolation == pb.driver.DriverCapabilities.NONE
    # Host and CSI volumes are bound beneath the task dir (ANY_MOUNTS, the zero value).
    assert c.mount_configs == pb.driver.DriverCapabilities.ANY_MOUNTS
    assert not c.dynamic_workload_users
    # log_collection = "executor" (the default): the shim writes the log files, Nomad starts
    # no logmon for the task.
    assert c.disable_log_collection
    modes = pb.driver.NetworkIsolationSpec
    assert set(c.network_isolation_modes) == {modes.HOST, modes.GROUP}
    # Field 7 (remote_tasks) is reserved in 2.0: nothing unknown may be on the wire.
    assert len(unknown_fields.UnknownFieldSet(c)) == 0

    spec = p.driver.TaskConfigSchema(pb.driver.TaskConfigSchemaRequest(),
                                     timeout=RPC_TIMEOUT).spec
    script = spec.object.attributes["script"]
    assert script.WhichOneof("block") == "Attr" and script.Attr.required

    stream = p.driver.Fingerprint(pb.driver.FingerprintRequest(), timeout=RPC_TIMEOUT)
    fp = next(stream)
    stream.cancel()
    assert fp.health == pb.driver.FingerprintResponse.HEALTHY, fp.health_description
    assert fp.health_description == "Healthy"
    # 2.0 turns a non-empty err into "failed to fingerprint driver": never set.
    assert fp.err == ""
    assert fp.attributes["driver.elide.version"].string_val

    # 2.0.4+ agent shutdown: the driver's Shutdown, then go-plugin's Kill.
    p.driver.Shutdown(pb.driver.ShutdownRequest(), timeout=RPC_TIMEOUT)
    assert p.proc.poll() is None, "Driver.Shutdown must not end the plugin by itself"
    assert p.exit() == 0
    assert not os.path.exists(p.socket)


def test_task_survives_agent_shutdown_and_is_recovered_stopped_destroyed(pb, plugins, workdir):
    alloc_id = str(uuid.uuid4())
    alloc_dir = os.path.join(workdir, "alloc", alloc_id)
    task_dir = os.path.join(alloc_dir, "web")
    for d in ("local", "secrets", "tmp"):
        os.makedirs(os.path.join(task_dir, d))
    os.makedirs(os.path.join(alloc_dir, "alloc", "logs"))
    # Plain files stand in for logmon's FIFOs (the shim appends to an existing file).
    for stream in ("stdout", "stderr"):
        open(os.path.join(alloc_dir, "alloc", "logs", f"web.{stream}.0"), "w").close()
    marker = os.path.join(task_dir, "local", "events")
    # A host volume (Mount), bound read-only beneath the task dir by the sandbox.
    volume = os.path.join(workdir, "volume")
    os.makedirs(volume)
    with open(os.path.join(volume, "seed"), "w") as f:
        f.write("seeded")
    with open(os.path.join(task_dir, "local", "app.py"), "w") as f:
        f.write(
            "import os, signal, time\n"
            "def note(text):\n"
            "    with open(os.path.join(os.path.dirname(__file__), 'events'), 'a') as f:\n"
            "        f.write(text + '\\n')\n"
            "signal.signal(signal.SIGRTMIN + 3, lambda *_: note('rtmin+3'))\n"
            "note('volume ' + open('data/seed').read())\n"
            "note('started ' + os.environ.get('GREETING', '-'))\n"
            "while True:\n"
            "    time.sleep(1)\n")
    os.chmod(os.path.join(task_dir, "local", "app.py"), 0o644)

    def events():
        try:
            with open(marker) as f:
                return f.read().split("\n")
        except FileNotFoundError:
            return []

    d = pb.driver
    task = d.TaskConfig(
        id=f"{alloc_id}/web/{uuid.uuid4().hex[:8]}",
        name="web",
        msgpack_driver_config=task_config(script="local/app.py", env=[{"GREETING": "hi"}]),
        env={"NOMAD_ALLOC_ID": alloc_id, "NOMAD_TASK_NAME": "web",
             "PATH": "/usr/local/bin:/usr/bin:/bin", "LD_PRELOAD": "/nonexistent.so"},
        resources=d.Resources(
            allocated_resources=d.AllocatedTaskResources(
                cpu=d.AllocatedCpuResources(cpu_shares=250),
                memory=d.AllocatedMemoryResources(memory_mb=256, memory_max_mb=512)),
            linux_resources=d.LinuxResources(cpu_shares=250, memory_limit_bytes=512 << 20)),
        # The 2.0 fields survive the round trip through the returned handle, and the volume
        # is there for the task.
        mounts=[d.Mount(task_path="/data", host_path=volume, readonly=True,
                        selinux_label="z", request_name="data-volume")],
        alloc_dir=alloc_dir,
        stdout_path=os.path.join(alloc_dir, "alloc", "logs", "web.stdout.0"),
        stderr_path=os.path.join(alloc_dir, "alloc", "logs", "web.stderr.0"),
        task_group_name="group", job_name="job", job_id="job", alloc_id=alloc_id,
        namespace="default", node_name="node", node_id=str(uuid.uuid4()))

    p1 = plugins("first")
    p1.configure(plugins.config)
    started = p1.driver.StartTask(d.StartTaskRequest(task=task), timeout=RPC_TIMEOUT)
    handle = started.handle
    try:
        assert handle.version >= 1 and handle.state == d.RUNNING
        assert handle.config.id == task.id
        assert handle.config.mounts[0].selinux_label == "z"
        assert handle.config.mounts[0].request_name == "data-volume"
        state = json.loads(handle.driver_state)
        shim_pid, runtime_pid = state["shim_pid"], state["runtime_pid"]
        wait_for("the app to start", lambda: "started hi" in events())
        assert "volume seeded" in events(), events()
        # In its PID namespace the shim's child is the namespace's init; Elide runs below it.
        with open(f"/proc/{runtime_pid}/cmdline", "rb") as f:
            if f.read().startswith(b"elide-executor\0sandbox-init"):
                with open(f"/proc/{runtime_pid}/task/{runtime_pid}/children") as c:
                    elide_pid = int(c.read().split()[0])
            else:
                elide_pid = runtime_pid
        with open(f"/proc/{elide_pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
        assert not any(e.startswith(b"LD_PRELOAD=") for e in environ), \
            "LD_* from Nomad's env must not reach the runtime"

        inspected = p1.driver.InspectTask(d.InspectTaskRequest(task_id=task.id),
                                          timeout=RPC_TIMEOUT)
        assert inspected.task.state == d.RUNNING
        assert inspected.task.HasField("started_at") and inspected.task.HasField("result")
        assert inspected.driver.attributes["runtime_pid"] == str(runtime_pid)

        # A real-time signal by the name `kill -l` uses reaches the app.
        p1.driver.SignalTask(d.SignalTaskRequest(task_id=task.id, signal="SIGRTMIN+3"),
                             timeout=RPC_TIMEOUT)
        wait_for("the app to see SIGRTMIN+3", lambda: "rtmin+3" in events())

        # A 2.0.4+ agent stopping: Driver.Shutdown, then the controller's; the task stays.
        p1.driver.Shutdown(d.ShutdownRequest(), timeout=RPC_TIMEOUT)
        assert p1.exit() == 0
        assert alive(shim_pid) and alive(runtime_pid)

        # The agent comes back: a new plugin process, SetConfig + Init, RecoverTask.
        p2 = plugins("second")
        p2.configure(plugins.config)
        # After an agent restart the handle's msgpack config is empty (not persisted).
        restored = d.TaskHandle()
        restored.CopyFrom(handle)
        restored.config.msgpack_driver_config = b""
        p2.driver.RecoverTask(d.RecoverTaskRequest(handle=restored), timeout=RPC_TIMEOUT)
        # Already tracked: OK again.
        p2.driver.RecoverTask(d.RecoverTaskRequest(handle=restored), timeout=RPC_TIMEOUT)
        inspected = p2.driver.InspectTask(d.InspectTaskRequest(task_id=task.id),
                                          timeout=RPC_TIMEOUT)
        assert inspected.task.state == d.RUNNING

        # Exec as a 2.0 agent does it, into the recovered task: ExecTask (change scripts,
        # script checks: output combined) and ExecTaskStreaming (`nomad alloc exec`: setup,
        # a heartbeat, stdin, its close; the result is never nil).
        req = d.ExecTaskRequest(task_id=task.id, command=[
            "/bin/sh", "-c", "echo $NOMAD_TASK_NAME; echo e >&2; exit 3"])
        req.timeout.FromSeconds(10)
        r = p2.driver.ExecTask(req, timeout=RPC_TIMEOUT)
        assert (r.stdout, r.result.exit_code) == (b"web\ne\n", 3), r
        io = d.ExecTaskStreamingIOOperation
        msgs = [d.ExecTaskStreamingRequest(setup=d.ExecTaskStreamingRequest.Setup(
                    task_id=task.id, command=["cat"], tty=False)),
                d.ExecTaskStreamingRequest(),
                d.ExecTaskStreamingRequest(stdin=io(data=b"in\n")),
                d.ExecTaskStreamingRequest(stdin=io(close=True))]
        out = list(p2.driver.ExecTaskStreaming(iter(msgs), timeout=RPC_TIMEOUT))
        assert b"".join(m.stdout.data for m in out) == b"in\n", out
        assert out[-1].exited and out[-1].HasField("result") and out[-1].result.exit_code == 0

        results = []
        waiter = threading.Thread(target=lambda: results.append(p2.driver.WaitTask(
            d.WaitTaskRequest(task_id=task.id), timeout=TASK_TIMEOUT)))
        waiter.start()
        stop = d.StopTaskRequest(task_id=task.id, signal="SIGTERM")
        stop.timeout.FromSeconds(5)
        p2.driver.StopTask(stop, timeout=RPC_TIMEOUT)
        waiter.join(TASK_TIMEOUT)
        assert results, "WaitTask did not return after StopTask"
        wait = results[0]
        assert wait.HasField("result") and wait.err == ""
        # The stand-in, like Elide, exits 143 on SIGTERM.
        assert (wait.result.exit_code, wait.result.signal) == (143, 0)
        assert not wait.result.oom_killed

        inspected = p2.driver.InspectTask(d.InspectTaskRequest(task_id=task.id),
                                          timeout=RPC_TIMEOUT)
        assert inspected.task.state == d.EXITED
        assert inspected.task.result.exit_code == 143

        p2.driver.DestroyTask(d.DestroyTaskRequest(task_id=task.id, force=True),
                              timeout=RPC_TIMEOUT)
        wait_for("the shim to leave", lambda: not alive(shim_pid), timeout=20)
        assert not alive(runtime_pid)
        assert not os.path.exists(state["socket_path"])
        assert not os.path.exists(os.path.dirname(state["state_path"]))
        # Unknown now: destroy and stop are idempotent, as Nomad expects.
        p2.driver.DestroyTask(d.DestroyTaskRequest(task_id=task.id, force=True),
                              timeout=RPC_TIMEOUT)
        p2.driver.StopTask(stop, timeout=RPC_TIMEOUT)
        assert p2.exit() == 0
    finally:
        # Never leave a task behind, whatever failed above.
        state = json.loads(handle.driver_state or b"{}")
        for pid in (state.get("runtime_pid"), state.get("shim_pid")):
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
