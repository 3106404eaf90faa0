#!/usr/bin/env python3
"""Per-task memory of Elide tasks by helper (the shim, the sandbox's PID 1): Pss, private
(clean + dirty) and VmRSS from /proc/<pid>/smaps_rollup, for N idle tasks on a real Nomad
agent, with a given elide-executor binary (to compare two builds under the same plugin).
Reuses bench.py's job and process matching; Elide only (bench.py compares with raw_exec).

    NOMAD_BIN=... python3 tests/bench/task_memory.py LABEL /path/to/elide-executor 40 200

The executor binary must sit in a root-owned directory nobody else can write (the plugin
checks executor_binary). Prints one RESULT line per N, and a BREAKDOWN line per helper: its
Pss per task split by mapping (heap: [heap] and anonymous mappings: musl's malloc, .bss; stack:
[stack]; data: the binary's written .data; file: the binary's shared text and rodata,
whose Pss falls as more processes map it); asserts nothing.
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

def breakdown(pid):
    """Pss in KiB of one process by kind of mapping (see the docstring)."""
    out = {"heap": 0, "stack": 0, "data": 0, "file": 0}
    kind = None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split(None, 5)
                if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                    name = head[5].strip() if len(head) > 5 else ""
                    if name == "[stack]":
                        kind = "stack"
                    elif name in ("", "[heap]"):
                        kind = "heap"
                    elif name.startswith("/"):
                        kind = "data" if "w" in head[1] else "file"
                    else:
                        kind = None
                elif line.startswith("Pss:") and kind:
                    out[kind] += int(line.split()[1])
    except OSError:
        pass
    return out

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
            for kind in ("shim", "init"):
                b = [breakdown(p) for p in h[kind]]
                print(f"BREAKDOWN {label} N={n} {kind} Pss/task: " + " ".join(
                    f"{k}={sum(x[k] for x in b) / n:.1f}" for k in ("heap", "stack", "data", "file")) +
                    " KiB", flush=True)
            agent.stop_job(j["ID"], wait=True)
            agent.api.delete(f"/v1/job/{j['ID']}", purge="true")
    finally:
        bench.leave_nothing(agent, base)

if __name__ == "__main__":
    main()
