"""Issue #23: models fetched once per node, verified, shared read-only, through a real agent.

No internet: the tests serve a generated model (seeded random bytes, known sha256) from a
local HTTP server with an access log, and the task "loads" it as llama.cpp does: mmap, then
the digest of the mapped bytes (the app below; a real Elide app passes the same path to
`elide:llm`'s `localModel`, docs/elide.md).

- 10 tasks across 3 jobs starting together → one download, one file in the cache, every
  task reads the right bytes at local/models/<name>, read-only;
- a wrong digest fails the task with an event naming expected/actual and the URL, and the
  cache keeps nothing;
- a download killed half-way (the agent and plugin killed) leaves no file in the cache's
  blobs, and the restarted task downloads it whole.
"""
from __future__ import annotations

import hashlib
import http.server
import os
import random
import subprocess
import threading

import pytest

import nomad as nm

MODEL_MB = int(os.environ.get("NDE_E2E_MODEL_MB", "200"))

# The app: maps the model, prints its digest, tries to change it in every way a task could.
APP = r'''
import hashlib, mmap, os, sys, time
d = os.environ["ELIDE_MODELS_DIR"]
p = os.path.join(d, "m.gguf")
with open(p, "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
print("digest=" + hashlib.sha256(m).hexdigest(), flush=True)
print("path=" + p, flush=True)
for what, fn in [("write", lambda: open(p, "r+b").write(b"x")),
                 ("chmod", lambda: os.chmod(p, 0o666)),
                 ("unlink", lambda: os.unlink(p)),
                 ("rename", lambda: os.rename(p, p + ".x"))]:
    try:
        fn()
        print(what + "=yes", flush=True)
    except OSError as e:
        print(what + "=no " + e.strerror, flush=True)
print("done", flush=True)
hold = float(os.environ.get("HOLD_SECONDS", "0"))
if hold:
    time.sleep(hold)
'''


class ModelServer:
    """Serves files from a dir over HTTP on 127.0.0.1; logs every GET. `slow` paths are
    sent in small pieces, each after `gate` is set once per piece (a download the test
    controls)."""

    def __init__(self, root: str):
        self.root = root
        self.gets: list[str] = []
        self.slow: set[str] = set()
        self.started_slow = threading.Event()
        self.release_slow = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                server.gets.append(self.path)
                path = os.path.join(server.root, self.path.lstrip("/"))
                if not os.path.isfile(path):
                    self.send_error(404)
                    return
                size = os.path.getsize(path)
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                with open(path, "rb") as f:
                    if self.path in server.slow:
                        # Half of it, then wait until the test lets go (it kills the
                        # agent meanwhile, so this write then fails).
                        self.wfile.write(f.read(size // 2))
                        self.wfile.flush()
                        server.started_slow.set()
                        server.release_slow.wait(120)
                        return
                    while chunk := f.read(1 << 20):
                        self.wfile.write(chunk)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release_slow.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def make_model(path: str, mb: int, seed: int) -> str:
    rnd = random.Random(seed)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(mb):
            chunk = rnd.randbytes(1 << 20)
            h.update(chunk)
            f.write(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("model-server")
    digests = {
        "m.gguf": make_model(str(root / "m.gguf"), MODEL_MB, 23),
        "small.gguf": make_model(str(root / "small.gguf"), 8, 24),
    }
    srv = ModelServer(str(root))
    srv.digests = digests
    yield srv
    srv.close()


# The test server is on loopback, which the plugin refuses unless the operator lists it.
LOCAL = ["127.0.0.1"]


def model_job(name: str, url: str, sha: str, count: int, hold: int = 0) -> str:
    return nm.elide_job(
        name, APP, jtype="batch", count=count, memory=300,
        group=nm.NO_RESTART,
        config=f'''elide_opts {{
          model {{
            source = "{url}"
            sha256 = "{sha}"
            name   = "m.gguf"
          }}
        }}''',
        task=f'env {{\n  HOLD_SECONDS = "{hold}"\n}}')


def blobs(cache: str) -> list[str]:
    d = os.path.join(cache, "blobs")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_ten_tasks_of_three_jobs_share_one_download_read_only(nomad_agent, models, tmp_path):
    cache = str(tmp_path / "models")
    agent = nomad_agent({"model_cache_dir": cache, "model_internal_hosts": LOCAL})
    agent.wait_driver_healthy()
    sha = models.digests["m.gguf"]
    url = models.url + "/m.gguf"
    models.gets.clear()
    jobs = []
    for name, count in [("ma", 4), ("mb", 3), ("mc", 3)]:
        jobs.append(agent.run_job(model_job(name, url, sha, count), wait_eval=False)["ID"])
    allocs = []
    for j, n in zip(jobs, (4, 3, 3)):
        allocs += agent.wait_allocs(j, lambda a, n=n: a if len(a) == n else None)
    assert len(allocs) == 10
    for a in allocs:
        ts = agent.wait_task(a["ID"], "t", "dead", timeout=300)
        out = agent.logs(a["ID"], "t")
        assert nm.exit_code_of(ts) == 0, nm.describe_task(ts) + out
        assert f"digest={sha}" in out, out
        # The model is bound read-only: no write, no chmod, no unlink or rename of the
        # mount point (EROFS / EBUSY), whatever the task's privileges.
        for what in ("write", "chmod", "unlink", "rename"):
            assert f"{what}=no" in out, out
        assert f"/{a['ID']}/t/local/models/m.gguf\n" in out, out
        msgs = [e.get("DisplayMessage", "") for e in agent.task_events(a["ID"], "t")]
        assert any("m.gguf" in m and ("Download" in m or "cache" in m or "Waiting" in m)
                   for m in msgs), msgs
    assert models.gets.count("/m.gguf") == 1, models.gets
    assert blobs(cache) == [sha]
    assert os.listdir(os.path.join(cache, "partial")) == []
    st = os.stat(os.path.join(cache, "blobs", sha))
    assert st.st_uid == 0 and (st.st_mode & 0o777) == 0o444
    assert (os.stat(cache).st_mode & 0o777) == 0o700
    # The cached file is the model, unchanged by ten tasks trying.
    h = hashlib.sha256()
    with open(os.path.join(cache, "blobs", sha), "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    assert h.hexdigest() == sha
    # The operator's view.
    out = subprocess.run([agent.plugin_path, "models", "list", "--dir", cache],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and f"sha256:{sha}" in out.stdout, out


def test_a_wrong_digest_fails_the_task_and_caches_nothing(nomad_agent, models, tmp_path):
    cache = str(tmp_path / "models")
    agent = nomad_agent({"model_cache_dir": cache, "model_internal_hosts": LOCAL})
    agent.wait_driver_healthy()
    actual = models.digests["small.gguf"]
    wrong = hashlib.sha256(b"not the model").hexdigest()
    url = models.url + "/small.gguf"
    job = agent.run_job(model_job("wrong", url, wrong, 1))
    alloc = agent.first_alloc(job["ID"])
    ev = agent.wait_task_event(alloc["ID"], "t",
                               lambda e: "sha256 mismatch" in e.get("DisplayMessage", ""),
                               timeout=120)
    msg = ev["DisplayMessage"]
    assert wrong in msg and actual in msg and url in msg, msg
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    assert ts["Failed"], nm.describe_task(ts)
    assert blobs(cache) == []
    assert os.listdir(os.path.join(cache, "partial")) == []


def test_a_job_cannot_make_the_plugin_fetch_from_the_nodes_loopback(nomad_agent, models, tmp_path):
    """The plugin runs as root: a job naming a URL on the node's loopback (the agent's API, the
    cloud metadata endpoint, a private service) gets a failed start naming the address and the
    operator option, and nothing is requested from that address."""
    cache = str(tmp_path / "models")
    agent = nomad_agent({"model_cache_dir": cache})
    agent.wait_driver_healthy()
    models.gets.clear()
    url = models.url.replace("127.0.0.1", "localhost") + "/small.gguf"
    job = agent.run_job(model_job("ssrf", url, models.digests["small.gguf"], 1))
    alloc = agent.first_alloc(job["ID"])
    ev = agent.wait_task_event(alloc["ID"], "t",
                               lambda e: "loopback address" in e.get("DisplayMessage", ""),
                               timeout=120)
    msg = ev["DisplayMessage"]
    assert "model_internal_hosts" in msg and "localhost is at " in msg, msg
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    assert ts["Failed"], nm.describe_task(ts)
    assert models.gets == [], models.gets
    assert blobs(cache) == []


def test_a_download_killed_half_way_leaves_no_model_visible(nomad_agent, models, tmp_path):
    cache = str(tmp_path / "models")
    agent = nomad_agent({"model_cache_dir": cache, "model_internal_hosts": LOCAL},
                        mode="persistent")
    agent.wait_driver_healthy()
    sha = models.digests["small.gguf"]
    url = models.url + "/small.gguf"
    models.slow.add("/small.gguf")
    models.started_slow.clear()
    models.release_slow.clear()
    job = nm.elide_job("killed", APP, jtype="batch", memory=300,
                       config=f'''elide_opts {{
          model {{
            source = "{url}"
            sha256 = "{sha}"
            name   = "m.gguf"
          }}
        }}''')
    job = agent.run_job(job)
    alloc = agent.first_alloc(job["ID"])
    assert models.started_slow.wait(120), "the download never started"
    # Half of it is on disk, as a partial file only.
    partial = os.path.join(cache, "partial")
    assert blobs(cache) == []
    assert [f for f in os.listdir(partial) if f.startswith(sha + ".")], os.listdir(partial)
    # The plugin dies mid-download (SIGKILL: nothing of it cleans up), then the agent.
    plugins = [p for p in agent.processes() if "nomad-driver-elide" in p.cmdline.split()[0]]
    assert plugins, [p.cmdline for p in agent.processes()]
    for p in plugins:
        os.kill(p.pid, 9)
    agent.kill()
    models.slow.discard("/small.gguf")
    models.release_slow.set()
    assert blobs(cache) == [], "a killed download must never appear as a model"
    agent.start()
    ts = agent.wait_task(alloc["ID"], "t", "dead", timeout=300)
    out = agent.logs(alloc["ID"], "t")
    assert nm.exit_code_of(ts) == 0, nm.describe_task(ts) + out
    assert f"digest={sha}" in out, out
    assert blobs(cache) == [sha]
    assert os.listdir(os.path.join(cache, "partial")) == []
