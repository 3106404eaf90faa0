"""Fixtures for the end-to-end tests: a real Nomad agent running nomad-driver-elide.

    python3 -m pytest -v tests/e2e            # builds the workspace (release) and Nomad first

Fixtures:
  binaries        {"plugin": path, "executor": path} from `scripts/build-release` (once),
                  copied aside so a later rebuild (release_b) cannot change them mid-session
  release         the release packages of those binaries ({"deb", "tarball", "version"}):
                  NDE_E2E_DIST (scripts/test runs packaging/release first), else built
  release_b       the same source released as version <version>+e2e.b (an incremental
                  rebuild of the two binaries), for the in-place upgrade test
  cluster         one server + three clients (c1, c2 with Elide; c3 without), the plugin
                  installed on each from the release .deb (per module)
  nomad_bin       a real Nomad (NOMAD_BIN, else tests/nomad/build-nomad.sh, cached)
  standin_version what tests/elide-standin/elide --version prints
  nomad_agent     factory: nomad_agent(config_overrides, mode="dev"|"persistent", ...)
                  -> a started NomadAgent; stopped and checked for leftover processes at
                  the end of the test
  agent           a started dev agent with the default plugin config (per test)
  shared_agent    the same, shared by all tests of a module (jobs are stopped between tests)

Nothing is ever skipped: a missing tool is a failure that says how to install it.
The session is a child subreaper (orphaned shims and tasks re-parent to it) and reaps
adopted zombies on SIGCHLD; a process a test starts itself with start_new_session=True must
be added to nm.OWN_CHILDREN, or its exit status could be reaped away from its Popen.
Environment: NOMAD_BIN, NDE_E2E_NO_BUILD=1 (binaries already built), NDE_E2E_PLUGIN and
NDE_E2E_EXECUTOR (other binaries: scripts/test --coverage's instrumented ones), NDE_E2E_KEEP=1 (keep
agent dirs and logs of passing tests too), NDE_E2E_LOG_DIR (copy every agent log there), NDE_E2E_LOG_COLLECTION=nomad
(the plugin's log_collection for every agent; scripts/test reruns the log-reading tests so).
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nomad as nm  # noqa: E402

AGENTS = pytest.StashKey[list]()


def pytest_configure(config):
    # Orphaned shims and tasks re-parent to us, not to init, so none can escape the checks.
    nm.become_subreaper()


@pytest.fixture(scope="session", autouse=True)
def binaries(tmp_path_factory):
    built = nm.build_workspace()
    # A copy, taken before any test runs: release_b rebuilds target/release with another
    # version, and every agent must still get the build under test.
    keep = tmp_path_factory.mktemp("binaries")
    out = {}
    for key, path in built.items():
        out[key] = os.path.join(keep, os.path.basename(path))
        shutil.copy2(path, out[key])
    return out


def _version_of(binary: str) -> str:
    line = subprocess.run([binary, "--version"], capture_output=True, text=True,
                          timeout=30).stdout.split()
    if len(line) < 2:
        raise nm.HarnessError(f"{binary} --version printed nothing usable")
    return line[1]


@pytest.fixture(scope="session")
def release(binaries, tmp_path_factory):
    dist = os.environ.get("NDE_E2E_DIST")
    rel = (nm.read_release(dist) if dist
           else nm.build_release(str(tmp_path_factory.mktemp("dist-a"))))
    want = _version_of(binaries["plugin"])
    if rel["version"] != want:
        raise nm.HarnessError(f"the release in {os.path.dirname(rel['deb'])} is version "
                              f"{rel['version']}, the binaries under test are {want}: run "
                              "packaging/release again (scripts/test does)")
    return rel


@pytest.fixture(scope="session")
def release_b(release, tmp_path_factory):
    t0 = time.monotonic()
    rel = nm.build_release(str(tmp_path_factory.mktemp("dist-b")),
                           version=f"{release['version']}+e2e.b")
    print(f"\nrelease B ({rel['version']}) built in {time.monotonic() - t0:.0f}s")
    return rel


@pytest.fixture(scope="session")
def nomad_bin():
    path = nm.find_nomad()
    out = subprocess.run([path, "version"], capture_output=True, text=True)
    if out.returncode != 0 or "Nomad v" not in out.stdout:
        raise nm.HarnessError(f"{path} is not a working Nomad binary: {out.stdout}{out.stderr}")
    return path


@pytest.fixture(scope="session")
def standin_version():
    out = subprocess.run([nm.STANDIN, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"the Elide stand-in does not run: {out.stderr}"
    return out.stdout.strip()


def _short_name(request) -> str:
    name = request.node.name
    for ch in "[]/ :=,":
        name = name.replace(ch, "-")
    return name[:40]


class AgentFactory:
    """Creates agents for one test (or module) and tears all of them down afterwards."""

    def __init__(self, nomad_bin, binaries, base_dir, register):
        self.nomad_bin = nomad_bin
        self.binaries = binaries
        self.base_dir = base_dir
        self.register = register
        self.agents: list[nm.NomadAgent] = []

    def __call__(self, config: dict | None = None, *, mode: str = "dev", start: bool = True,
                 merge: bool = True, plugin: bool = True, executor: bool = True,
                 name: str | None = None, **kwargs) -> nm.NomadAgent:
        """Make (and by default start) an agent.

        config: plugin config keys; merged over the defaults (elide_binary = the stand-in,
        executor_binary, a private runtime_dir) unless merge=False. A value of None removes
        a default key. plugin=False gives an empty plugin dir (no plugin block).
        kwargs go to NomadAgent (plugin_args, extra_hcl, client_hcl, env, log_level).
        """
        name = name or f"a{len(self.agents)}"
        agent = nm.NomadAgent(
            self.nomad_bin, os.path.join(self.base_dir, name),
            plugin_bin=self.binaries["plugin"] if plugin else None,
            executor_bin=self.binaries["executor"] if plugin and executor else None,
            mode=mode, name=name, **kwargs)
        cfg = agent.default_plugin_config() if merge else {}
        for k, v in (config or {}).items():
            if v is None:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        agent.plugin_config = cfg
        self.agents.append(agent)
        self.register(agent)
        if start:
            agent.start()
        return agent

    def teardown(self) -> list[str]:
        problems = []
        for agent in self.agents:
            problems += teardown_agent(agent)
        return problems


@pytest.fixture(scope="module")
def cluster(nomad_bin, binaries, release, tmp_path_factory):
    """One server and three clients: c1 and c2 with Elide (the stand-in), c3 without (its
    elide_binary points where its root has none), each with the plugin and shim unpacked
    from the release .deb into its own root."""
    base = str(tmp_path_factory.mktemp("cluster"))
    server = nm.NomadAgent(nomad_bin, os.path.join(base, "server"), plugin_bin=None,
                           executor_bin=None, mode="server", name="server")
    ports = nm.client_dynamic_ports(3)
    clients = []
    for i, (name, with_elide) in enumerate([("c1", True), ("c2", True), ("c3", False)]):
        root = os.path.join(base, name, "root")
        nm.install_deb(release["deb"], root)
        c = nm.NomadAgent(nomad_bin, os.path.join(base, name), plugin_bin=None,
                          executor_bin=None, mode="client", name=name, install_root=root,
                          servers=[f"127.0.0.1:{server.rpc_port}"], dynamic_ports=ports[i])
        # The .deb must hold exactly the build under test.
        for key, path in (("plugin", c.plugin_path), ("executor", c.executor_path)):
            if not filecmp.cmp(binaries[key], path, shallow=False):
                raise nm.HarnessError(f"{release['deb']} holds another {key} binary than "
                                      f"{binaries[key]}: run packaging/release again")
        cfg = c.default_plugin_config()
        if not with_elide:
            cfg["elide_binary"] = os.path.join(root, "usr", "bin", "elide")
        c.plugin_config = cfg
        clients.append(c)
    cl = nm.Cluster(server, clients)
    try:
        cl.start()
        yield cl
    finally:
        problems = []
        if server.running:
            try:
                server.stop_all_jobs()
            except Exception as e:  # noqa: BLE001 - reported below, teardown continues
                problems.append(f"stopping the cluster's jobs failed: {e}")
        for a in cl.agents:
            problems += teardown_agent(a)
        for c in clients:
            for d in nm.cgroup_dirs_of_parent(c.cgroup_parent):
                problems += [f"client {c.name} left a cgroup: {f}"
                             for f in nm.remove_cgroup_tree(d)]
        if problems:
            pytest.fail("teardown of the cluster:\n" + "\n".join(problems), pytrace=False)


def teardown_agent(agent: nm.NomadAgent) -> list[str]:
    problems = []
    if agent.mode == "persistent" and agent.running:
        # Tasks of a persistent agent survive its shutdown by design: stop them first.
        try:
            agent.stop_all_jobs()
        except Exception as e:  # noqa: BLE001 - reported below, teardown continues
            problems.append(f"agent {agent.name}: stopping its jobs failed: {e}")
    try:
        was_running = agent.running
        code = agent.stop()
        if was_running and code not in (0, 1):
            # Nomad exits 1 after a non-"leave" SIGINT shutdown; anything else is worth a look.
            problems.append(f"agent {agent.name} exited with {code} on SIGINT")
    except Exception as e:  # noqa: BLE001
        problems.append(str(e))
    left = agent.leftovers()
    if left:
        problems.append(f"agent {agent.name} left processes running after it stopped "
                        "(killed now):\n  " + "\n  ".join(p.describe() for p in left))
        for p in left:
            try:
                os.kill(p.pid, 9)
            except OSError:
                pass
        nm.wait_gone(left, 10)
    nm.free_runtime_dir(agent.runtime_dir)
    if not agent.running:
        # Task tmpfs mounts (secrets/, private/) outlive a persistent agent; pytest could
        # not delete its temp dirs with them in place.
        for err in nm.unmount_under(agent.base):
            problems.append(f"agent {agent.name}: cannot unmount {err}")
    log_dir = os.environ.get("NDE_E2E_LOG_DIR")
    if log_dir and os.path.exists(agent.log_path):
        os.makedirs(log_dir, exist_ok=True)
        shutil.copy(agent.log_path, os.path.join(
            log_dir, f"{os.path.basename(os.path.dirname(agent.base))}-{agent.name}.log"))
    return problems


@pytest.fixture
def nomad_agent(request, nomad_bin, binaries, tmp_path):
    factory = AgentFactory(nomad_bin, binaries, str(tmp_path),
                           lambda a: request.node.stash.setdefault(AGENTS, []).append(a))
    yield factory
    problems = factory.teardown()
    if problems:
        pytest.fail("teardown:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def agent(nomad_agent):
    return nomad_agent()


@pytest.fixture(scope="module")
def shared_agent(nomad_bin, binaries, tmp_path_factory):
    """One default dev agent for a whole module. Tests must not change its config; their
    jobs are stopped after each test (see _stop_shared_jobs)."""
    factory = AgentFactory(nomad_bin, binaries, str(tmp_path_factory.mktemp("shared")),
                           lambda a: None)
    agent = factory(name="shared")
    agent.wait_driver_healthy()
    yield agent
    problems = factory.teardown()
    if problems:
        pytest.fail("teardown of the shared agent:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def _stop_shared_jobs(request):
    yield
    if "shared_agent" in request.fixturenames:
        agent = request.getfixturevalue("shared_agent")
        if agent.running:
            agent.stop_all_jobs()
            for j in agent.api.get("/v1/jobs") or []:
                agent.api.delete(f"/v1/job/{j['ID']}", purge="true")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    agents = list(item.stash.get(AGENTS, []))
    funcargs = getattr(item, "funcargs", {})
    if funcargs.get("shared_agent") is not None:
        agents.append(funcargs["shared_agent"])
    if funcargs.get("cluster") is not None:
        agents += funcargs["cluster"].agents
    for a in agents:
        plugin_lines = a.plugin_log_lines()
        report.sections.append((
            f"nomad agent {a.name} ({a.mode}) log tail — full log: {a.log_path}",
            a.log_tail(120)))
        if plugin_lines:
            report.sections.append((f"nomad agent {a.name}: plugin lines",
                                    "\n".join(plugin_lines[-80:])))


def pytest_sessionfinish(session, exitstatus):
    """Last line of defence: nothing started by the tests may outlive them."""
    left = [p for p in nm.descendants(os.getpid()) if p.state not in ("Z", "X")]
    left = nm.wait_gone(left, 15)
    if left:
        for p in left:
            try:
                os.kill(p.pid, 9)
            except OSError:
                pass
        sys.stderr.write("\nE2E: processes were still running at the end of the session "
                         "(killed now):\n  " + "\n  ".join(p.describe() for p in left) + "\n")
        session.exitstatus = 1
