#!/usr/bin/env python3
"""What the plugin's metrics endpoint costs: plugin + shims CPU with N idle Elide tasks over
a window without scrapes, then over the same window with a scrape every 5 s (the plugin's
`telemetry { prometheus_listen }`), on one real Nomad agent in one run.

    NOMAD_BIN=... python3 tests/bench/metrics_cost.py [N=200] [WINDOW_S=60]

Prints one RESULT line (docs/performance.md, "Metrics endpoint"); asserts nothing. Per-thread
schedstat (bench.cpu_ns), so a shim's microseconds are not rounded away.
"""
import os
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
nm = bench.nm


def window(agent, seconds: float, scrape_url: str | None) -> dict:
    plugin = bench.plugin_pid(agent)
    shims = bench.helpers(agent)["shim"]
    before = {p: bench.cpu_ns(p) for p in shims + [plugin]}
    t0 = time.monotonic()
    scrapes, size = 0, 0
    while time.monotonic() - t0 < seconds:
        if scrape_url:
            with urllib.request.urlopen(scrape_url, timeout=10) as r:
                size = len(r.read())
            scrapes += 1
        time.sleep(max(0.0, 5 - (time.monotonic() - t0) % 5))
    wall = time.monotonic() - t0
    spent = {p: (bench.cpu_ns(p) - ns) / 1e9 for p, ns in before.items()}
    return {"plugin": 100 * spent[plugin] / wall,
            "shims": 100 * (sum(spent.values()) - spent[plugin]) / wall,
            "scrapes": scrapes, "bytes": size}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 60
    bins = nm.build_workspace()
    base = tempfile.mkdtemp(prefix="nde-metrics-bench-")
    (port,) = nm.free_ports(1)
    agent = nm.NomadAgent(nm.find_nomad(), os.path.join(base, "m"), plugin_bin=bins["plugin"],
                          executor_bin=bins["executor"], name="metricsb", mode="persistent")
    agent.plugin_config = {**agent.default_plugin_config(),
                           "telemetry": nm.Block({"prometheus_listen": f"127.0.0.1:{port}"})}
    try:
        agent.start()
        agent.wait_driver_healthy()
        j = agent.run_job(bench.job("metrics-idle", "elide", n, bench.IDLE_APP))
        bench.running(agent, j["ID"], n)
        time.sleep(10)  # let the starts' after-effects settle
        url = f"http://127.0.0.1:{port}/metrics"
        quiet = window(agent, seconds, None)
        scraped = window(agent, seconds, url)
        quiet2 = window(agent, seconds, None)
        base_plugin = (quiet["plugin"] + quiet2["plugin"]) / 2
        print(f"RESULT N={n} window={seconds:.0f}s plugin CPU: no scrapes {quiet['plugin']:.3f} % / "
              f"{quiet2['plugin']:.3f} %, scrape every 5 s {scraped['plugin']:.3f} % "
              f"(+{scraped['plugin'] - base_plugin:.3f} % of a core; {scraped['scrapes']} scrapes, "
              f"{scraped['bytes']} bytes each) | shims {quiet['shims']:.3f} % -> "
              f"{scraped['shims']:.3f} %", flush=True)
        agent.stop_job(j["ID"], wait=True)
    finally:
        bench.leave_nothing(agent, base)


if __name__ == "__main__":
    main()
