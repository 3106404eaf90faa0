#!/usr/bin/env python3
"""Per-task memory of Elide tasks by helper (the shim, the sandbox's PID 1): Pss, private
(clean + dirty) and VmRSS from /proc/<pid>/smaps_rollup, for N idle tasks on a real Nomad
agent, with a given elide-executor binary (to compare two builds under the same plugin).
Reuses bench.py's job and process matching; Elide only (bench.py compares with raw_exec).

    NOMAD_BIN=... python3 tests/bench/task_memory.py LABEL /path/to/elide-executor 40 200

The executor binary must sit in a root-owned directory nobody else can write (the plugin
checks executor_binary). Prints one RESULT line per N; asserts nothing.
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
nm = bench.nm

def smaps(pid):
    d = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, rest = line.partition(":")
                if rest.strip().endswith("kB"):
                    d[k] = int(rest.split()[0])
    except OSError:
        pass
    return d.get("Pss", 0), d.get("Private_Clean", 0) + d.get("Private_Dirty", 0), d.get("Rss", 0)

def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    label, exe = sys.argv[1], os.path.abspath(sys.argv[2])
    counts = [int(x) for x in sys.argv[3:]]
    bins = nm.build_workspace()
    base = tempfile.mkdtemp(prefix="nde-clapbench-")
    agent = nm.NomadAgent(nm.find_nomad(), os.path.join(base, "b"), plugin_bin=bins["plugin"],
                          executor_bin=exe, name="clapb", mode="persistent")
    agent.plugin_config = agent.default_plugin_config()
    try:
        agent.start()
        agent.wait_driver_healthy()
        for n in counts:
            j = agent.run_job(bench.job(f"mem-{label}-{n}", "elide", n, bench.IDLE_APP))
            bench.running(agent, j["ID"], n)
            time.sleep(5)
            h = bench.helpers(agent)
            out = {}
            for kind in ("shim", "init"):
                m = [smaps(p) for p in h[kind]]
                out[kind] = (len(m), sum(x[0] for x in m) / n, sum(x[1] for x in m) / n, sum(x[2] for x in m) / n)
            tot_pss = out["shim"][1] + out["init"][1]
            tot_priv = out["shim"][2] + out["init"][2]
            print(f"RESULT {label} N={n} shims={out['shim'][0]} inits={out['init'][0]} "
                  f"shim Pss/task={out['shim'][1]:.0f} priv/task={out['shim'][2]:.0f} rss={out['shim'][3]:.0f} | "
                  f"init Pss/task={out['init'][1]:.0f} priv/task={out['init'][2]:.0f} rss={out['init'][3]:.0f} | "
                  f"total Pss/task={tot_pss:.0f} priv/task={tot_priv:.0f} KiB", flush=True)
            agent.stop_job(j["ID"], wait=True)
            agent.api.delete(f"/v1/job/{j['ID']}", purge="true")
    finally:
        agent.stop()
if __name__ == "__main__":
    main()
