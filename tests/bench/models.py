#!/usr/bin/env python3
"""Models (issue #23): the plugin's node-wide model cache against Nomad's `artifact` block,
side by side on the same agent in the same run, for N tasks (3 jobs) that need the same
model (seeded random bytes, served by a local HTTP server: no internet).

Each task maps the model (as llama.cpp does), reads it all (sha256), prints "done" and holds
the mapping. Per variant:

- bytes downloaded (the server's count of body bytes sent),
- disk used by the model files (the cache's blob, or every alloc's artifact copy),
- node memory of the model: the sum of Pss of every task's mapping of it (/proc/<pid>/smaps;
  a file mapped by 10 processes counts once in total, 10 copies count 10 times),
- time from registering the jobs until all N tasks printed "done".

    NOMAD_BIN=... python3 tests/bench/models.py [--tasks 10] [--mb 200] [--svg docs/performance-models.svg]

Prints RESULT lines and ratios (artifact / cache); asserts nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
import nomad as nm  # noqa: E402
import bench  # noqa: E402
from test_models import ModelServer, make_model  # noqa: E402

APP = r'''
import hashlib, mmap, os, time
p = os.path.join(os.environ["ELIDE_MODELS_DIR"], "m.gguf")
with open(p, "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
print("digest=" + hashlib.sha256(m).hexdigest(), flush=True)
print("done", flush=True)
while True:
    time.sleep(3600)
'''


class CountingServer(ModelServer):
    """ModelServer that also counts body bytes."""

    def __init__(self, root):
        super().__init__(root)
        self.sent = 0
        handler = self.httpd.RequestHandlerClass
        outer = self
        orig = handler.do_GET

        def do_GET(h):
            w = h.wfile

            class Counting:
                def write(self, b):
                    outer.sent += len(b)
                    return w.write(b)

                def flush(self):
                    return w.flush()
            h.wfile = Counting()
            try:
                orig(h)
            finally:
                h.wfile = w
        handler.do_GET = do_GET


def job(name: str, variant: str, count: int, url: str, sha: str) -> str:
    if variant == "cache":
        config = f'''elide_opts {{
          model {{
            source = "{url}"
            sha256 = "{sha}"
            name   = "m.gguf"
          }}
        }}'''
        task = ""
    else:
        config = ""
        task = f'''artifact {{
        source      = "{url}"
        destination = "local/models/m.gguf"
        mode        = "file"
        options {{
          checksum = "sha256:{sha}"
        }}
      }}
      env {{
        ELIDE_MODELS_DIR = "${{NOMAD_TASK_DIR}}/models"
      }}'''
    return nm.elide_job(name, APP, count=count, memory=400, config=config, task=task)


def model_pss_kb() -> tuple[int, int]:
    """(sum of Pss, number of processes) of mappings of a file named m.gguf."""
    total, procs = 0, 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/smaps") as f:
                inside, found = False, False
                for line in f:
                    first = line.split(None, 1)[0]
                    if "-" in first and not first.endswith(":"):
                        inside = line.rstrip().endswith("/local/models/m.gguf")
                        found = found or inside
                    elif inside and first == "Pss:":
                        total += int(line.split()[1])
                procs += found
        except OSError:
            continue
    return total, procs


def disk_kb(paths: list[str]) -> int:
    total = 0
    for root in paths:
        for d, _, files in os.walk(root):
            for f in files:
                p = os.path.join(d, f)
                if f == "m.gguf" or os.path.dirname(p).endswith("/blobs"):
                    try:
                        total += os.lstat(p).st_blocks * 512 // 1024
                    except OSError:
                        pass
    return total


def run_variant(agent, srv, variant, n, url, sha, cache_dir) -> dict:
    srv.sent = 0
    get0 = len(srv.gets)
    counts = [n - 2 * (n // 3), n // 3, n // 3]
    t0 = time.monotonic()
    jobs = [agent.run_job(job(f"{variant}-{i}", variant, c, url, sha), wait_eval=False)["ID"]
            for i, c in enumerate(counts)]
    allocs = []
    for j, c in zip(jobs, counts):
        allocs += agent.wait_allocs(j, lambda a, c=c: a if len(a) == c else None, timeout=900)
    for a in allocs:
        agent.wait_logs(a["ID"], "t", "done", timeout=900)
    elapsed = time.monotonic() - t0
    for a in allocs:
        out = agent.logs(a["ID"], "t")
        assert f"digest={sha}" in out, out
    pss, procs = model_pss_kb()
    alloc_root = os.path.join(agent.data_dir, "alloc")
    disk = disk_kb([alloc_root] + ([cache_dir] if variant == "cache" else []))
    r = {"variant": variant, "tasks": n, "downloads": len(srv.gets) - get0,
         "bytes_mb": srv.sent / 1048576, "disk_mb": disk / 1024, "pss_mb": pss / 1024,
         "mapping_procs": procs, "seconds": elapsed}
    print("RESULT " + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in r.items()), flush=True)
    for j in jobs:
        agent.stop_job(j, purge=True)
    return r


def svg(rows: dict, path: str, n: int, mb: int) -> None:
    metrics = [("bytes_mb", "downloaded (MiB)"), ("disk_mb", "disk (MiB)"),
               ("pss_mb", "memory of the model, Pss (MiB)"), ("seconds", "time to all running (s)")]
    w, h, pad = 760, 300, 40
    bw = (w - 2 * pad) / len(metrics)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 60}" '
           'font-family="sans-serif" font-size="12">',
           f'<text x="{w/2}" y="18" text-anchor="middle" font-size="14">{n} tasks, one '
           f'{mb} MiB model: node model cache (blue) vs Nomad artifact (red)</text>']
    for i, (k, label) in enumerate(metrics):
        a, c = rows["artifact"][k], rows["cache"][k]
        top = max(a, c) or 1
        x0 = pad + i * bw
        for j, (v, color) in enumerate([(c, "#1f77b4"), (a, "#d62728")]):
            bh = (h - 80) * v / top
            x = x0 + 20 + j * (bw / 2 - 15)
            out.append(f'<rect x="{x:.0f}" y="{h - bh:.0f}" width="{bw / 2 - 30:.0f}" '
                       f'height="{bh:.0f}" fill="{color}"/>')
            out.append(f'<text x="{x + (bw / 2 - 30) / 2:.0f}" y="{h - bh - 4:.0f}" '
                       f'text-anchor="middle">{v:.0f}</text>')
        out.append(f'<text x="{x0 + bw / 2:.0f}" y="{h + 18}" text-anchor="middle">{label}</text>')
        ratio = a / c if c else float("inf")
        out.append(f'<text x="{x0 + bw / 2:.0f}" y="{h + 36}" text-anchor="middle">'
                   f'artifact/cache = {ratio:.1f}×</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--svg", default="")
    args = ap.parse_args()
    bins = nm.build_workspace()
    base = tempfile.mkdtemp(prefix="nde-modelbench-")
    root = os.path.join(base, "srv")
    os.makedirs(root)
    sha = make_model(os.path.join(root, "m.gguf"), args.mb, 23)
    srv = CountingServer(root)
    url = srv.url + "/m.gguf"
    cache_dir = os.path.join(base, "models")
    agent = nm.NomadAgent(nm.find_nomad(), os.path.join(base, "a"), plugin_bin=bins["plugin"],
                          executor_bin=bins["executor"], name="modelb", mode="persistent")
    agent.plugin_config = {**agent.default_plugin_config(), "model_cache_dir": cache_dir,
                          "model_internal_hosts": ["127.0.0.1"]}
    rows = {}
    try:
        agent.start()
        agent.wait_driver_healthy()
        for variant in ("cache", "artifact"):
            rows[variant] = run_variant(agent, srv, variant, args.tasks, url, sha, cache_dir)
    finally:
        bench.leave_nothing(agent, base)
        srv.close()
    a, c = rows["artifact"], rows["cache"]
    for k in ("downloads", "bytes_mb", "disk_mb", "pss_mb", "seconds"):
        print(f"RATIO {k}: artifact {a[k]:.1f} / cache {c[k]:.1f} = "
              f"{(a[k] / c[k]) if c[k] else float('inf'):.2f}", flush=True)
    if args.svg:
        svg(rows, args.svg, args.tasks, args.mb)
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
