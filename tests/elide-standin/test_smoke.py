"""scripts/smoke-real-elide.sh: passes against the stand-in, and catches an Elide that does
not behave as the driver assumes (here: stand-ins broken on purpose by a wrapper)."""

import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ELIDE = os.path.join(HERE, "elide")
SMOKE = os.path.join(HERE, "..", "..", "scripts", "smoke-real-elide.sh")
CHECKS = 16


def smoke(elide, **env):
    full = dict(os.environ, **env)
    if elide is None:
        full.pop("ELIDE", None)
    else:
        full["ELIDE"] = elide
    return subprocess.run(["bash", SMOKE], env=full, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)


def rows(stdout):
    """{check: (result, observed)} from the printed table."""
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"^(.+?)\s+(PASS|FAIL) (.*)$", line)
        if m:
            out[m.group(1).strip()] = (m.group(2), m.group(3))
    return out


def test_passes_against_the_stand_in_and_prints_its_table():
    r = smoke(ELIDE)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^CHECK\s+RESULT\s+OBSERVED$", r.stdout, re.M), r.stdout
    table = rows(r.stdout)
    assert len(table) == CHECKS, r.stdout
    assert all(result == "PASS" for result, _ in table.values()), r.stdout
    assert f"{CHECKS} passed, 0 failed" in r.stdout
    assert table["--version prints one version line"][1] == "exit 0: 1.0.0-beta10"
    assert '"two words","","input.csv"]' in table["args after -- reach the guest intact"][1]


def wrapper(tmp_path, body):
    """An 'elide' that runs the stand-in with `body` (Python) altering argv or env first."""
    path = tmp_path / "elide"
    path.write_text(f"#!{sys.executable}\nimport os, sys\nargs = sys.argv[1:]\n{body}\n"
                    f"os.execv({ELIDE!r}, [{ELIDE!r}] + args)\n")
    path.chmod(0o755)
    return str(path)


def test_reports_each_mismatch_and_exits_1(tmp_path):
    # An Elide that prints "elide 1.0.0" and ignores --env:dotenv=false.
    broken = wrapper(tmp_path, 'os.environ["ELIDE_STANDIN_VERSION"] = "elide 1.0.0"\n'
                               'args = [a for a in args if a != "--env:dotenv=false"]')
    r = smoke(broken)
    assert r.returncode == 1, r.stdout + r.stderr
    table = rows(r.stdout)
    assert len(table) == CHECKS, r.stdout
    failed = {k for k, (result, _) in table.items() if result == "FAIL"}
    assert failed == {"--version prints one version line", "--env:dotenv=false skips .env"}, r.stdout
    assert table["--env:dotenv=false skips .env"][1] == "exit 0: SMOKE_DOTENV=from-dotenv"
    assert f"{CHECKS - 2} passed, 2 failed" in r.stdout
    assert "MISMATCH" in r.stderr


def test_an_elide_that_lets_a_runtime_word_reach_the_guest_is_caught(tmp_path):
    # As if GraalVM left -D<k>=<v> after "--" alone: turn it into -D<k>, which it does leave.
    broken = wrapper(tmp_path, 'if "--" in args:\n'
                               '    i = args.index("--")\n'
                               '    args = args[:i] + [a.split("=")[0] if a.startswith("-D") else a\n'
                               '                       for a in args[i:]]')
    r = smoke(broken)
    assert r.returncode == 1, r.stdout + r.stderr
    table = rows(r.stdout)
    failed = {k for k, (result, _) in table.items() if result == "FAIL"}
    assert failed == {"-D<k>=<v>, -Xss after -- never reach guest"}, r.stdout
    assert '"-Dsmoke.prop","keep"]' in table["-D<k>=<v>, -Xss after -- never reach guest"][1]


def test_usage_errors_exit_2(tmp_path):
    r = smoke(None)
    assert r.returncode == 2 and "set ELIDE" in r.stderr, r.stderr
    r = smoke(str(tmp_path / "missing-elide"))
    assert r.returncode == 2 and "not an executable file" in r.stderr, r.stderr
