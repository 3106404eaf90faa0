"""The scripts inlined in examples/*.nomad, run through the Elide stand-in the way the
driver runs them: cwd = task dir, script relative to it, NOMAD_* and the job env handed to
the guest with --env. (The E2E suite runs the same jobs on a real Nomad agent.)

Run: python3 -m pytest tests/elide-standin
"""

import os
import re
import select
import shutil
import signal
import subprocess
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ELIDE = os.path.join(HERE, "elide")
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(HERE)), "examples")
TIMEOUT = 60
ALLOC_ID = "0b8a9a4e-5a52-4c2b-8d47-3f1d2a6c9e10"
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is required")

TEMPLATE_RE = re.compile(
    r'template\s*\{\s*destination\s*=\s*"([^"]+)"\s*perms\s*=\s*"([0-7]+)"\s*'
    r'data\s*=\s*<<EOF\n(.*?)\nEOF\n', re.S)


def materialise(job_file, task_dir):
    """Write the job's templates into task_dir like Nomad would; returns {dest: perms}."""
    with open(os.path.join(EXAMPLES, job_file), encoding="utf-8") as f:
        hcl = f.read()
    found = {}
    for dest, perms, data in TEMPLATE_RE.findall(hcl):
        assert "${" not in data and "{{" not in data, "HCL/template interpolation in " + dest
        path = os.path.join(task_dir, dest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as out:
            out.write(data + "\n")
        os.chmod(path, int(perms, 8))
        found[dest] = perms
    assert found, "no template found in " + job_file
    return found


def elide_argv(script, env, runtime=(), args=()):
    argv = [ELIDE] + list(runtime) + ["run", "--no-pretty"]
    for key, value in env.items():
        argv += ["--env", "%s=%s" % (key, value)]
    return argv + ["-p", ".", script, "--"] + list(args)


def runtime_env():
    return {"PATH": os.environ.get("PATH", os.defpath), "HOME": "/tmp", "LANG": "C.UTF-8",
            "NO_COLOR": "1"}


@pytest.mark.parametrize("job", sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".nomad")))
def test_scripts_are_not_executable(tmp_path, job):
    for dest, perms in materialise(job, str(tmp_path)).items():
        assert int(perms, 8) & 0o111 == 0, "%s in %s must not be executable" % (dest, job)


@pytest.mark.parametrize("job,script,needs", [
    ("hello-python.nomad", "local/hello.py", []),
    ("hello-javascript.nomad", "local/hello.js", ["node"]),
])
def test_hello_examples(tmp_path, job, script, needs):
    if needs and shutil.which("node") is None:
        pytest.skip("node is required")
    materialise(job, str(tmp_path))
    env = {"NOMAD_ALLOC_ID": ALLOC_ID, "GREETING": "hello from the job env block"}
    r = subprocess.run(elide_argv(script, env, runtime=["-Xmx64m"]), cwd=tmp_path,
                       env=runtime_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "Hello from Elide on Nomad!"
    assert "NOMAD_ALLOC_ID=" + ALLOC_ID in lines
    assert "GREETING=hello from the job env block" in lines


@needs_node
def test_polyglot_example(tmp_path):
    materialise("polyglot.nomad", str(tmp_path))
    env = {"NOMAD_ALLOC_ID": ALLOC_ID, "GREETING": "hello from the job env block"}
    r = subprocess.run(elide_argv("local/main.py", env, runtime=["-Xmx96m"]), cwd=tmp_path,
                       env=runtime_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "NOMAD_ALLOC_ID=" + ALLOC_ID,
        "GREETING=hello from the job env block",
        "Processed: [2, 4, 6, 8, 10]",
    ]


@needs_node
def test_ai_example_fails_clearly_without_elide_llm(tmp_path):
    materialise("ai-inference.nomad", str(tmp_path))
    r = subprocess.run(elide_argv("local/inference.py", {"NOMAD_ALLOC_ID": ALLOC_ID}),
                       cwd=tmp_path, env=runtime_env(), capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 255
    assert "NOMAD_ALLOC_ID=" + ALLOC_ID in r.stdout
    assert "elide:" in r.stderr and "not available in the Elide stand-in" in r.stderr


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def test_http_server_example(tmp_path):
    materialise("http-server.nomad", str(tmp_path))
    port = free_port()
    env = {"NOMAD_ALLOC_ID": ALLOC_ID, "NOMAD_PORT_http": str(port), "LOG_LEVEL": "info",
           "GREETING": "hello from the job env block"}
    proc = subprocess.Popen(elide_argv("local/server.py", env, runtime=["-Xmx96m"],
                                       args=["--port", str(port)]),
                            cwd=tmp_path, env=runtime_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, bufsize=0, start_new_session=True)

    def next_line():
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        assert ready, "the server printed nothing"
        return proc.stdout.readline().decode().rstrip("\n")

    def line_matching(pattern):
        while True:
            line = next_line()
            assert line, "server output ended before %r" % pattern
            if re.search(pattern, line):
                return line

    try:
        line_matching(r"^NOMAD_ALLOC_ID=" + ALLOC_ID + "$")
        line_matching(r"^GREETING=hello from the job env block$")
        assert line_matching(r"^listening on ") == "listening on http://0.0.0.0:%d" % port
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=TIMEOUT) as resp:
            assert resp.status == 200 and resp.read() == b"ok\n"
        line_matching(r'^request: .*"GET /health HTTP/1\.1" 200')
        os.kill(proc.pid, signal.SIGUSR1)  # nomad alloc signal -s SIGUSR1
        line_matching(r"^received SIGUSR1$")
        os.kill(proc.pid, signal.SIGUSR2)  # the job's kill_signal
        line_matching(r"^shutting down gracefully$")
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
