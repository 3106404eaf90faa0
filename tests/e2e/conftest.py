"""Fixtures for the end-to-end tests: a real Nomad agent running nomad-driver-elide.

    python3 -m pytest -v tests/e2e            # builds the workspace (release) and Nomad first

Fixtures:
  binaries        {"plugin": path, "executor": path} from `cargo build --release` (once)
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
Environment: NOMAD_BIN, NDE_E2E_NO_BUILD=1 (binaries already built), NDE_E2E_KEEP=1 (keep
agent dirs and logs of passing tests too), NDE_E2E_LOG_DIR (copy every agent log there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nomad as nm  # noqa: E402

AGENTS = pytest.StashKey[list]()


def pytest_configure(config):
    # Orphaned shims and tasks re-parent to us, not to init, so none can escape the checks.
    nm.become_subreaper()


@pytest.fixture(scope="session")
def binaries():
    return nm.build_workspace()


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
    shared = item.funcargs.get("shared_agent") if hasattr(item, "funcargs") else None
    if shared is not None:
        agents.append(shared)
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
