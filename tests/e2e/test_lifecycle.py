"""Issue 3: the task lifecycle through the per-task elide-executor shim, on a real Nomad agent.

Every case runs the real plugin, the real shim and the Elide stand-in under a real agent.
"""
import os
import re

import pytest

import nomad as nm

EXAMPLES = os.path.join(nm.REPO, "examples")


@pytest.mark.parametrize("example,task,marker", [
    ("hello-python.nomad", "hello", "Hello from Elide on Nomad!"),
    ("hello-javascript.nomad", "hello", "Hello from Elide"),
    ("polyglot.nomad", "main", "Processed: [2, 4, 6, 8, 10]"),
])
def test_example_batch_job_completes_with_logs_and_env(shared_agent, example, task, marker):
    agent = shared_agent
    job = agent.run_job(os.path.join(EXAMPLES, example))
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], task, "dead")
    assert not ts["Failed"], nm.describe_task(ts)
    assert nm.exit_code_of(ts) == 0
    out = agent.cli("alloc", "logs", alloc["ID"], task).stdout
    assert marker in out, out
    # Guest code sees Nomad's variables and the job's env (Elide hides host env by default).
    assert f"NOMAD_ALLOC_ID={alloc['ID']}" in out, out
    assert "GREETING=hello from the job env block" in out, out
    events = [e.get("DisplayMessage") or "" for e in ts["Events"]]
    assert any(re.search(r"Starting Elide 1\.0\.0-beta10: local/\w+\.(py|js)", m) for m in events), events


def test_exit_code_fails_task_and_restart_policy_counts(shared_agent):
    agent = shared_agent
    hcl = nm.elide_job("exit-three", """
        import sys
        print("about to exit 3", flush=True)
        sys.exit(3)
    """, jtype="batch", group='restart {\n  attempts = 2\n  delay = "1s"\n  interval = "1h"\n  mode = "fail"\n}\n'
                         'reschedule {\n  attempts = 0\n  unlimited = false\n}')
    job = agent.run_job(hcl)
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead", timeout=120)
    assert ts["Failed"], nm.describe_task(ts)
    assert ts["Restarts"] == 2, nm.describe_task(ts)
    codes = [int(e.get("ExitCode", 0)) for e in ts["Events"] if e["Type"] == "Terminated"]
    assert codes == [3, 3, 3], nm.describe_task(ts)


def test_uncaught_guest_exception_is_255_with_the_error_in_stderr(shared_agent):
    agent = shared_agent
    job = agent.run_job(nm.elide_job("boom", """
        function explode() { throw new Error("kaboom from the guest"); }
        explode();
    """, script_name="boom.js", jtype="batch", group=nm.NO_RESTART))
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    assert ts["Failed"]
    assert nm.exit_code_of(ts) == 255, nm.describe_task(ts)
    err = agent.wait_logs(alloc["ID"], "t", "kaboom from the guest", stream="stderr")
    assert "kaboom from the guest" in err


def test_service_signal_check_and_graceful_stop_leave_nothing_behind(shared_agent):
    agent = shared_agent
    job = agent.run_job(os.path.join(EXAMPLES, "http-server.nomad"))
    alloc = agent.first_alloc(job["ID"])
    aid = alloc["ID"]
    agent.wait_task(aid, "server", "running")
    agent.wait_logs(aid, "server", "listening on http://0.0.0.0:")
    # The Nomad-provider service check turns passing.
    agent.api.blocking(f"/v1/client/allocation/{aid}/checks",
                       lambda c: c and all(v.get("Status") == "success" for v in c.values()),
                       what="the http-server's service check to pass")
    procs = [p for p in nm.alloc_procs(aid)]
    assert procs, "no process of the task found"
    # `nomad alloc signal` reaches the app.
    agent.cli("alloc", "signal", "-s", "SIGUSR1", aid, "server")
    agent.wait_logs(aid, "server", "received SIGUSR1")
    # `nomad job stop` delivers the task's kill_signal (SIGUSR2): the app drains and exits 0.
    agent.cli("job", "stop", "-detach", job["ID"])
    ts = agent.wait_task(aid, "server", "dead")
    out = agent.logs(aid, "server")
    assert "shutting down gracefully" in out, out
    assert nm.exit_code_of(ts) == 0, nm.describe_task(ts)
    left = nm.wait_gone(procs, timeout=15)
    assert not left, "processes of the task outlived it: " + ", ".join(p.describe() for p in left)


def test_stop_kills_runtime_and_grandchildren_after_kill_timeout(shared_agent):
    agent = shared_agent
    # The app starts a grandchild that ignores SIGTERM; SIGTERM (default kill signal) makes
    # Elide exit 143, and the group SIGKILL after the kill timeout takes the grandchild too.
    job = agent.run_job(nm.elide_job("stubborn", """
        import subprocess, sys, time
        child = subprocess.Popen(["sh", "-c", "trap '' TERM; while true; do sleep 1; done"])
        print("started grandchild", child.pid, flush=True)
        while True:
            time.sleep(1)
    """, task='kill_timeout = "2s"'))
    alloc = agent.first_alloc(job["ID"])
    aid = alloc["ID"]
    agent.wait_task(aid, "t", "running")
    agent.wait_logs(aid, "t", "started grandchild")
    procs = nm.alloc_procs(aid)
    assert len(procs) >= 3, [p.describe() for p in procs]  # shim, runtime(s), grandchild
    agent.stop_job(job["ID"])
    ts = agent.wait_task(aid, "t", "dead")
    code = nm.exit_code_of(ts)
    assert code in (143, 137), nm.describe_task(ts)
    left = nm.wait_gone(procs, timeout=15)
    assert not left, "left behind: " + ", ".join(p.describe() for p in left)


@pytest.mark.parametrize("config,expect", [
    ('script = "local/missing.py"', r"script local/missing\.py not found"),
    ('script = "local/ok.py"\n        colour = "blue"', r"colour|Unsupported argument|Invalid label"),
    ('script = "local/ok.py"\n        args = "not-a-list"', r"args|list of string|Incorrect attribute value type"),
    ('script = "local/ok.py"\n        elide_opts {\n          elide_binary = "/nonexistent/elide"\n        }', r"/nonexistent/elide"),
])
def test_bad_input_is_reported_and_the_plugin_keeps_serving(shared_agent, config, expect):
    agent = shared_agent
    name = "bad-" + re.sub(r"[^a-z]", "", config.split("\n")[-1].lower())[:20]
    hcl = f"""
job "{name}" {{
  datacenters = ["dc1"]
  type = "batch"
  group "g" {{
    {nm.NO_RESTART}
    task "t" {{
      driver = "elide"
      config {{
        {config}
      }}
      template {{
        destination = "local/ok.py"
        perms = "644"
        data = "print('ok')"
      }}
    }}
  }}
}}
"""
    job = agent.run_job(hcl)
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    assert ts["Failed"], nm.describe_task(ts)
    text = " | ".join(f"{e['Type']}: {e.get('DisplayMessage','')} {e.get('ValidationError','')} "
                      f"{e.get('DriverError','')}" for e in ts["Events"])
    assert re.search(expect, text), text
    # The plugin is still healthy and runs the next task.
    ok = agent.run_job(os.path.join(EXAMPLES, "hello-python.nomad"))
    a2 = agent.first_alloc(ok["ID"])
    ts2 = agent.wait_task(a2["ID"], "hello", "dead")
    assert not ts2["Failed"], nm.describe_task(ts2)
    agent.stop_job(ok["ID"], purge=True)


def test_ai_inference_example_validates(shared_agent):
    out = shared_agent.cli("job", "validate", os.path.join(EXAMPLES, "ai-inference.nomad")).stdout
    assert "validation successful" in out.lower(), out
