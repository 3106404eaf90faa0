"""Issue 22: the plugin's Prometheus metrics, scraped by a real Prometheus server.

A real Prometheus (tests/prometheus/build-prometheus.sh, cached like the Nomad build)
scrapes the plugin's endpoint and the Nomad agent every second and evaluates the shipped
alerting rules (packaging/prometheus/alerts.yml). After a known sequence -- 3 starts, 1 bad
script, 1 OOM kill, 1 agent restart, a 10,000-line burst -- PromQL queries through
Prometheus's HTTP API return exactly the expected counts, the OOM alert fires, Nomad's own
per-task series carry the Elide task with its cgroup's memory, and promtool finds the
endpoint's output and the rules clean. Waits are on Prometheus answers (its query API
polled until the value is there, with a deadline), never fixed sleeps.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

import nomad as nm

RULES = os.path.join(nm.REPO, "packaging", "prometheus", "alerts.yml")
PROM_TIMEOUT = 90.0

IDLE = "import time\nwhile True:\n    time.sleep(3600)\n"
BURST = ("import sys, time\nfor i in range(10000):\n    sys.stdout.write(f'line {i}\\n')\n"
         "sys.stdout.flush()\nprint('burst done', file=sys.stderr, flush=True)\n"
         "while True:\n    time.sleep(3600)\n")
HOG = ("chunks = []\nfor i in range(64):\n    chunks.append(bytearray(8 * 1024 * 1024))\n"
       "    chunks[-1][::4096] = b'x' * (8 * 1024 * 1024 // 4096)\n")



def shim_api_level() -> str:
    """This build's shim API level: the newest in the ledger (common::shim_api::API_LEVEL)."""
    with open(os.path.join(nm.REPO, "proto", "elide", "executor", "v1", "api-levels.txt")) as f:
        levels = [int(ln.split()[0]) for ln in f if ln[:1].isdigit()]
    return str(max(levels))

def prometheus_dir() -> str:
    d = os.environ.get("PROMETHEUS_DIR")
    if d:
        return d
    out = subprocess.run(["bash", os.path.join(nm.REPO, "tests", "prometheus", "build-prometheus.sh")],
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise nm.HarnessError(f"tests/prometheus/build-prometheus.sh failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


class Prometheus:
    def __init__(self, base: str, targets: dict[str, dict]):
        self.dir = prometheus_dir()
        self.base = base
        (self.port,) = nm.free_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        jobs = []
        for name, t in targets.items():
            jobs.append({"job_name": name, "scrape_interval": "1s", "scrape_timeout": "1s",
                         "metrics_path": t.get("path", "/metrics"),
                         "params": t.get("params", {}),
                         "static_configs": [{"targets": [t["target"]]}]})
        cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
               "rule_files": [RULES], "scrape_configs": jobs}
        self.config = os.path.join(base, "prometheus.yml")
        with open(self.config, "w") as f:
            json.dump(cfg, f)  # JSON is YAML
        self.log = open(os.path.join(base, "prometheus.log"), "wb")
        self.proc = subprocess.Popen(
            [os.path.join(self.dir, "prometheus"), f"--config.file={self.config}",
             f"--storage.tsdb.path={os.path.join(base, 'tsdb')}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        nm.OWN_CHILDREN.add(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def api(self, path: str, **params):
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def value(self, expr: str):
        """The single value of an instant query (None when it has no result)."""
        r = self.query(expr)
        assert len(r) <= 1, f"{expr}: more than one series: {r}"
        return float(r[0]["value"][1]) if r else None

    def wait(self, expr: str, pred, what: str, timeout: float = PROM_TIMEOUT):
        """Polls the query API until pred(value) holds (Prometheus scrapes every second)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise nm.HarnessError(f"prometheus exited with {self.proc.returncode}")
            try:
                last = self.value(expr)
            except OSError as e:
                last = e
            if not isinstance(last, Exception) and pred(last):
                return last
            time.sleep(0.5)
        raise TimeoutError(f"{what}: {expr} = {last!r} after {timeout:.0f}s")

    def wait_eq(self, expr: str, want: float, timeout: float = PROM_TIMEOUT):
        return self.wait(expr, lambda v: v == want, f"want {want}", timeout)

    def wait_targets_up(self, n: int):
        """Until Prometheus answers and has scraped all n targets successfully."""
        deadline = time.monotonic() + PROM_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise nm.HarnessError(f"prometheus exited with {self.proc.returncode}")
            try:
                last = self.api("targets")["activeTargets"]
                if sum(t["health"] == "up" for t in last) >= n:
                    return
            except OSError as e:
                last = e
            time.sleep(0.5)
        raise TimeoutError(f"targets not up: {last}")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(prometheus_dir(), "promtool"), *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def scrape(port: int, accept: str | None = None) -> tuple[str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                 headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.headers["Content-Type"], r.read().decode()


def started(agent, name: str, script: str, **kw) -> dict:
    job = agent.run_job(nm.elide_job(name, script, group=nm.NO_RESTART, **kw))
    alloc = agent.first_alloc(job["ID"])
    agent.wait_task(alloc["ID"], "t", "running")
    return alloc


def cgroup_memory(agent, alloc_id: str) -> int:
    """The task cgroup's memory usage (v1 memory.usage_in_bytes, v2 memory.current)."""
    row = next(r for r in nm.executor_status(agent) if r["alloc_id"] == alloc_id)
    for d in row["cgroup"].split(","):
        for name in ("memory.usage_in_bytes", "memory.current"):
            path = os.path.join(d, name)
            if os.path.exists(path):
                with open(path) as f:
                    return int(f.read())
    raise AssertionError(f"no memory cgroup in {row['cgroup']!r}")


E = "nomad_driver_elide_"


def test_a_known_sequence_reads_back_exactly_through_prometheus(nomad_agent, tmp_path):
    (port,) = nm.free_ports(1)
    agent = nomad_agent(
        {"telemetry": nm.Block({"prometheus_listen": f"127.0.0.1:{port}"})},
        mode="persistent", name="metrics",
        extra_hcl='telemetry {\n  prometheus_metrics = true\n'
                  '  publish_allocation_metrics = true\n  collection_interval = "1s"\n}')
    agent.wait_driver_healthy()
    prom = Prometheus(str(tmp_path), {
        "elide": {"target": f"127.0.0.1:{port}"},
        "nomad": {"target": f"127.0.0.1:{agent.http_port}", "path": "/v1/metrics",
                  "params": {"format": ["prometheus"]}},
    })
    try:
        prom.wait_targets_up(2)
        # The endpoint's own output passes promtool, in the text format it serves by default;
        # Prometheus itself is served OpenMetrics.
        ctype, text = scrape(port)
        assert ctype.startswith("text/plain; version=0.0.4"), ctype
        lint = promtool("check", "metrics", stdin=text)
        assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr
        ctype, om = scrape(port, "application/openmetrics-text;version=1.0.0")
        assert ctype.startswith("application/openmetrics-text") and om.endswith("# EOF\n")
        rules = promtool("check", "rules", RULES)
        assert rules.returncode == 0, rules.stdout + rules.stderr
        assert prom.value(f'{E}build_info{{shim_api_level="{shim_api_level()}"}}') == 1.0

        # 3 starts, 1 bad script, 1 OOM kill.
        idle = [started(agent, f"idle{i}", IDLE) for i in range(3)]
        bad = agent.run_job(nm.elide_job("badscript", IDLE, group=nm.NO_RESTART).replace(
            'script = "local/app.py"', 'script = "local/missing.py"'))
        agent.wait_task(agent.first_alloc(bad["ID"])["ID"], "t", "dead")
        oom = agent.run_job(nm.elide_job("oom", HOG, group=nm.NO_RESTART, memory=64,
                                         jtype="batch"))
        ts = agent.wait_task(agent.first_alloc(oom["ID"])["ID"], "t", "dead")
        assert ts["Failed"], nm.describe_task(ts)

        prom.wait_eq(f'{E}task_starts_total{{outcome="started"}}', 4)
        prom.wait_eq(f'{E}task_starts_total{{outcome="script"}}', 1)
        assert prom.value(f'sum({E}task_starts_total{{outcome!~"started|script"}})') == 0
        prom.wait_eq(f"{E}oom_kills_total", 1)
        prom.wait_eq(f'{E}tasks{{state="running"}}', 3)
        assert prom.value(f"{E}shims_lost_total") == 0
        assert prom.value(f"{E}start_task_duration_seconds_count") == 5
        assert prom.value(f"{E}shim_ready_duration_seconds_count") == 4
        assert prom.value(f'{E}shim_call_duration_seconds_count{{method="Start"}}') == 4
        # The OOM alert fires in this Prometheus (rule evaluation).
        prom.wait_eq('ALERTS{alertname="ElideTaskOOMKilled",alertstate="firing"}', 1)
        assert prom.value('count(ALERTS{alertname="ElideShimLost"})') is None

        # Nomad's own per-task series carry the Elide task, with its cgroup's memory.
        a = idle[0]["ID"]
        sel = f'nomad_client_allocs_memory_usage{{alloc_id="{a}",task="t"}}'
        prom.wait(sel, lambda v: v is not None and v > 0, "Nomad's alloc memory series")
        assert prom.value(f'nomad_client_allocs_cpu_total_ticks{{alloc_id="{a}",task="t"}}') is not None
        mem = cgroup_memory(agent, a)
        got = prom.wait(sel, lambda v: abs(v - mem) <= max(0.1 * mem, 1 << 20),
                        f"within 10 % of the cgroup's {mem}")
        print(f"nomad_client_allocs_memory_usage {got:.0f}, cgroup {mem}")

        # An agent restart: the plugin process is replaced and reattaches to the 3 tasks.
        agent.restart(graceful=True)
        agent.wait_driver_healthy()
        for alloc in idle:
            agent.wait_task(alloc["ID"], "t", "running")
        prom.wait_eq(f'{E}recoveries_total{{outcome="reattached"}}', 3)
        recoveries = {r["metric"]["outcome"]: float(r["value"][1])
                      for r in prom.query(f"{E}recoveries_total")}
        # Nomad also asks again for the OOM-killed task it destroyed before the restart:
        # its shim and state went with DestroyTask, so nothing is lost.
        assert recoveries["lost"] == recoveries["failed"] == 0, recoveries
        assert recoveries["destroyed"] == 1, recoveries
        assert prom.value(f"{E}shims_lost_total") == 0
        prom.wait_eq(f'{E}tasks{{state="running"}}', 3)

        # A 10,000-line burst: exactly 10,000 more lines written, none dropped.
        before = prom.value(f'{E}log_lines_written_total{{stream="stdout"}}')
        burst = started(agent, "burst", BURST)
        agent.wait_logs(burst["ID"], "t", "burst done", stream="stderr")
        prom.wait_eq(f'{E}log_lines_written_total{{stream="stdout"}}', before + 10000)
        assert prom.value(f'sum({E}log_lines_dropped_total)') == 0
        assert prom.value(f'sum({E}log_write_errors_total)') == 0
        assert prom.value(f'{E}log_written_bytes_total{{stream="stdout"}}') >= 10000 * 7
        prom.wait_eq(f'{E}task_starts_total{{outcome="started"}}', 1)  # the new process's

        for j in ["idle0", "idle1", "idle2", "burst"]:
            agent.stop_job(j)
    finally:
        prom.stop()


def test_a_bad_listen_address_fails_set_config_with_the_fix(nomad_agent):
    agent = nomad_agent({"telemetry": nm.Block({"prometheus_listen": "localhost:9469"})},
                        start=False)
    agent.start(wait=False)
    agent.wait_log(r"telemetry\.prometheus_listen: \\?\"localhost:9469\\?\" is not an IP address "
                   r"and port \(host names are not resolved\); give an IP address")
    assert agent.wait_exit() != 0
