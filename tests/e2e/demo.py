"""The demo behind scripts/demo: a dev Nomad agent with nomad-driver-elide and the Elide
stand-in, the driver shown healthy, example jobs run through the `nomad` CLI.

    scripts/demo [--no-wait] [--debug] [EXAMPLE.nomad ...]

Runs examples/hello-python.nomad by default. Without --no-wait the agent keeps running
until Ctrl-C; then it is stopped and the demo checks that no process is left behind.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nomad as nm  # noqa: E402

DEFAULT_EXAMPLES = ["examples/hello-python.nomad"]


def bold(s: str) -> str:
    return f"\033[1m{s}\033[0m" if sys.stdout.isatty() else s


def show(cmd: str, out: str) -> None:
    print(bold(f"$ {cmd}"))
    print(out.rstrip("\n"))
    print()


def ports_free(ports) -> bool:
    for p in ports:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(socket.AF_INET, kind)
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
            finally:
                s.close()
    return True


def driver_lines(out: str) -> str:
    """The Drivers table header, the elide row and the driver.elide.* attributes."""
    keep = []
    for line in out.splitlines():
        if re.match(r"^(Driver\s+Detected|elide\s)", line) or re.match(r"^driver\.elide", line):
            keep.append(line)
    return "\n".join(keep)


def run_example(agent: nm.NomadAgent, path: str) -> bool:
    hcl = open(path, encoding="utf-8").read()
    job = agent.parse_job(hcl)
    job_id = job["ID"]
    group = job["TaskGroups"][0]
    task = group["Tasks"][0]["Name"]
    rel = os.path.relpath(path)
    run = agent.cli("job", "run", path, check=False, timeout=300)
    show(f"nomad job run {rel}", run.stdout + run.stderr)
    if run.returncode not in (0, 2):  # 2: placement warnings, shown above
        return False
    alloc = agent.first_alloc(job_id)
    alloc_id = alloc["ID"]
    want = "dead" if job.get("Type") == "batch" else "running"
    try:
        ts = agent.wait_task(alloc_id, task, ("dead", "running") if want == "running" else "dead",
                             timeout=120)
    except (nm.HarnessError, TimeoutError) as e:
        print(f"task {task} did not reach {want}: {e}")
        return False
    status = agent.cli("alloc", "status", alloc_id[:8], check=False)
    events = status.stdout[status.stdout.find("Recent Events:"):] if "Recent Events:" in status.stdout else ""
    if events:
        show(f"nomad alloc status {alloc_id[:8]}   # recent events", events)
    logs = agent.cli("alloc", "logs", alloc_id[:8], task, check=False)
    show(f"nomad alloc logs {alloc_id[:8]} {task}", logs.stdout + logs.stderr)
    ok = not ts.get("Failed") and (want == "running" or nm.exit_code_of(ts) == 0)
    if not ok:
        err = agent.cli("alloc", "logs", "-stderr", alloc_id[:8], task, check=False)
        show(f"nomad alloc logs -stderr {alloc_id[:8]} {task}", err.stdout + err.stderr)
        print(f"job {job_id}: task {task} failed: {nm.describe_task(ts)}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--nomad", required=True, help="path of the nomad binary")
    ap.add_argument("--plugin", required=True)
    ap.add_argument("--executor", required=True)
    ap.add_argument("--no-wait", action="store_true",
                    help="stop the agent and exit after the examples (for CI)")
    ap.add_argument("--debug", action="store_true", help="agent log level DEBUG")
    ap.add_argument("examples", nargs="*", help="job files to run (default: hello-python)")
    args = ap.parse_args()

    examples = args.examples or [os.path.join(nm.REPO, e) for e in DEFAULT_EXAMPLES
                                 if os.path.exists(os.path.join(nm.REPO, e))]
    nm.become_subreaper()
    base = tempfile.mkdtemp(prefix="nde-demo-", dir="/tmp")
    agent = nm.NomadAgent(args.nomad, base, plugin_bin=args.plugin, executor_bin=args.executor,
                          mode="dev", name="demo", log_level="DEBUG" if args.debug else "INFO")
    if ports_free((4646, 4647, 4648)):
        agent.http_port, agent.rpc_port, agent.serf_port = 4646, 4647, 4648
        agent.addr = "http://127.0.0.1:4646"
        agent.api = nm.Api(agent.addr)
    agent.plugin_config = agent.default_plugin_config()

    stop_requested = []

    def on_term(_sig, _frame):
        stop_requested.append(True)
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C stops the demo even when started from a shell that ignores SIGINT for it.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    ok = True
    try:
        print(bold(f"==> starting a dev Nomad agent on {agent.addr} "
                   f"(plugin dir {agent.plugin_dir}, log {agent.log_path})"))
        agent.start()
        try:
            agent.wait_driver_healthy(timeout=60)
        except (TimeoutError, nm.HarnessError) as e:
            print(f"the elide driver did not become healthy: {e}")
            ok = False
        out = agent.cli("node", "status", "-self", "-verbose").stdout
        show("nomad node status -self -verbose   # driver lines", driver_lines(out))
        if ok:
            for ex in examples:
                ok = run_example(agent, ex) and ok
        print(bold("==> the agent is running") if not args.no_wait else "")
        if not args.no_wait:
            print(f"""
  export NOMAD_ADDR={agent.addr}
  UI:            {agent.addr}/ui
  nomad:         {args.nomad}
  agent log:     {agent.log_path}
  run more:      {args.nomad} job run examples/hello-javascript.nomad

Press Ctrl-C to stop the agent (its jobs are stopped with it).""")
            while agent.running:
                try:
                    agent.proc.wait()
                except KeyboardInterrupt:
                    break
            if not agent.running and not stop_requested and agent.proc.returncode is not None:
                print(f"the agent exited by itself ({agent.proc.returncode}); see {agent.log_path}")
                ok = False
    except KeyboardInterrupt:
        pass
    except Exception as e:  # noqa: BLE001 - report any failure, then clean up
        print(f"demo failed: {e}")
        ok = False
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        print(bold("==> stopping the agent"))
        try:
            agent.stop()
        except nm.HarnessError as e:
            print(e)
            ok = False
        left = agent.leftovers()
        if left:
            ok = False
            print("processes left behind (killing them):\n  "
                  + "\n  ".join(p.describe() for p in left))
            for p in left:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except OSError:
                    pass
        else:
            print("stopped; no process left behind")
        nm.free_runtime_dir(agent.runtime_dir)
        nm.unmount_under(base)
        if ok:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base} for inspection (agent log: {agent.log_path})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
