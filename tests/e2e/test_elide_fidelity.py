"""Issue 14: what real Elide does with guest args and `.env` files, through a real agent.

GraalVM's runtime takes -D/-X/-XX words out of Elide's whole command line (even after `--`),
so the driver refuses them in `args` before anything starts; other args reach the guest
intact. A `.env` in the project root (the task dir) reaches the guest unless
`elide_opts { dotenv = false }`. See docs/elide.md.
"""
import json

import pytest

import nomad as nm

ARGV_GUEST = """
import json, sys
print("ARGV=" + json.dumps(sys.argv[1:]), flush=True)
"""


def events_text(ts: dict) -> str:
    return " | ".join(f"{e['Type']}: {e.get('DisplayMessage', '')} {e.get('DriverError', '')}"
                      for e in ts["Events"])


@pytest.mark.parametrize("arg,reason", [
    ("-Dmode=fast", "takes every -D<name>=<value> word out of Elide's command line as a Java "
                    "system property of Elide itself, even after \"--\""),
    ("-Xmx4g", "takes every -Xmx<size> word out of Elide's command line as the maximum heap "
               "size, overriding the heap the driver derives from the task's memory"),
])
def test_args_elide_would_swallow_fail_validation_naming_them(shared_agent, arg, reason):
    agent = shared_agent
    hcl = nm.elide_job("swallowed", ARGV_GUEST, jtype="batch", group=nm.NO_RESTART,
                       config=f'args = ["input.csv", "{arg}"]')
    job = agent.run_job(hcl)
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    assert ts["Failed"], nm.describe_task(ts)
    text = events_text(ts)
    assert f'config.args: 1 argument would never reach the guest: [1] "{arg}"' in text, text
    assert reason in text, text
    assert "Give the guest such values another way" in text, text
    # Refused before anything ran.
    assert not any(e["Type"] == "Started" for e in ts["Events"]), text
    # The operator's view names it too.
    out = agent.cli("alloc", "status", alloc["ID"]).stdout
    assert f'"{arg}"' in out, out


def test_ordinary_args_reach_the_guest_intact(shared_agent):
    agent = shared_agent
    hcl = nm.elide_job("intact", ARGV_GUEST, jtype="batch", group=nm.NO_RESTART,
                       config='args = ["--flag", "-x", "two words"]')
    job = agent.run_job(hcl)
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    assert not ts["Failed"] and nm.exit_code_of(ts) == 0, nm.describe_task(ts)
    out = agent.logs(alloc["ID"], "t")
    argv = json.loads(out.split("ARGV=", 1)[1].splitlines()[0])
    assert argv == ["--flag", "-x", "two words"], out


ENV_GUEST = """
import os
for k in ("FROM_DOTENV", "OVERRIDE"):
    print(k + "=" + str(os.environ.get(k)), flush=True)
"""


def dotenv_job(name: str, elide_opts: str = "") -> str:
    """The app and a `.env` next to it, both in the task dir (Elide's project root)."""
    return nm.elide_job(name, ENV_GUEST, jtype="batch", group=nm.NO_RESTART, config=elide_opts,
                        script_dir="", task="""
      env {
        OVERRIDE = "from-job-env"
      }
      template {
        destination = ".env"
        data = "FROM_DOTENV=from-dotenv\\nOVERRIDE=from-dotenv\\n"
      }""")


@pytest.mark.parametrize("elide_opts,want", [
    # Default: Elide loads the .env, and it beats the job's env (--host:allow-env).
    ("", {"FROM_DOTENV": "from-dotenv", "OVERRIDE": "from-dotenv"}),
    ("elide_opts {\n  dotenv = true\n}", {"FROM_DOTENV": "from-dotenv", "OVERRIDE": "from-dotenv"}),
    ("elide_opts {\n  dotenv = false\n}", {"FROM_DOTENV": "None", "OVERRIDE": "from-job-env"}),
], ids=["default", "dotenv-true", "dotenv-false"])
def test_dotenv_next_to_the_app_unless_dotenv_false(shared_agent, elide_opts, want):
    agent = shared_agent
    job = agent.run_job(dotenv_job("dotenv", elide_opts))
    alloc = agent.first_alloc(job["ID"])
    ts = agent.wait_task(alloc["ID"], "t", "dead")
    assert not ts["Failed"] and nm.exit_code_of(ts) == 0, nm.describe_task(ts)
    out = agent.logs(alloc["ID"], "t")
    seen = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert seen == want, out
