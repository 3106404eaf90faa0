"""Tests of the Elide CLI stand-in (tests/elide-standin/elide) against the contract in
../shared/docs/elide-cli.md. Run: python3 -m pytest tests/elide-standin

Processes are observed through events -- a "ready" line on the guest's stdout, exit
statuses, pidfds -- never through sleeps.
"""

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ELIDE = os.path.join(HERE, "elide")
TIMEOUT = 60
HAVE_NODE = shutil.which("node") is not None
needs_node = pytest.mark.skipif(not HAVE_NODE, reason="node is required for JavaScript guests")
ANSI = re.compile(r"\x1b\[")


def base_env(**extra):
    """The environment a driver would give Elide, plus a marker only the host has."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "NO_COLOR": "1",
        "STANDIN_TEST_HOST_MARKER": "host-only-value",
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def run(args, cwd, env=None, stdin=subprocess.DEVNULL):
    return subprocess.run([ELIDE] + list(args), cwd=cwd, env=env or base_env(), stdin=stdin,
                          capture_output=True, text=True, timeout=TIMEOUT)


def write(dirpath, name, source, mode=0o644):
    path = os.path.join(str(dirpath), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(source).lstrip("\n"))
    os.chmod(path, mode)
    return path


PY_DUMP_ENV = """
import json, os, sys
print(json.dumps({"env": dict(os.environ), "argv": sys.argv}))
"""
JS_DUMP_ENV = """
console.log(JSON.stringify({ env: { ...process.env }, argv: process.argv.slice(1) }));
"""


def dumped(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


class Guest:
    """A stand-in process whose guest reports on stdout line by line."""

    def __init__(self, args, cwd, env=None, new_session=True):
        self.proc = subprocess.Popen([ELIDE] + list(args), cwd=cwd, env=env or base_env(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, bufsize=0,
                                     start_new_session=new_session)

    def line(self, timeout=TIMEOUT):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "no output from the guest within %ss" % timeout
        return self.proc.stdout.readline().decode().rstrip("\n")

    def wait(self):
        return self.proc.wait(timeout=TIMEOUT)

    def rest(self):
        return self.proc.stdout.read().decode(), self.proc.stderr.read().decode()

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=TIMEOUT)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def guests():
    started = []

    def start(*args, **kwargs):
        g = Guest(*args, **kwargs)
        started.append(g)
        return g

    yield start
    for g in started:
        g.kill()


def wait_gone(pid):
    """Block until process `pid` has exited (zombie or reaped), via a pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], TIMEOUT)
        assert ready, "process %d still alive" % pid
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------
# --version and info
# ------------------------------------------------------------------------------------

def test_version_is_one_bare_line(tmp_path):
    r = run(["--version"], tmp_path)
    assert r.returncode == 0
    assert r.stdout == "1.0.0-beta10\n"
    assert r.stderr == ""
    assert re.match(r"^\d+\.\d+(\.\d+)?(-[0-9A-Za-z.]+)?$", r.stdout.strip())


def test_version_can_be_overridden(tmp_path):
    r = run(["--version"], tmp_path, env=base_env(ELIDE_STANDIN_VERSION="1.0.0-beta11-rc3"))
    assert (r.returncode, r.stdout) == (0, "1.0.0-beta11-rc3\n")


def test_version_then_file_runs_the_file(tmp_path):
    write(tmp_path, "app.py", 'print("ran")')
    r = run(["--version", "app.py"], tmp_path)
    assert (r.returncode, r.stdout) == (0, "ran\n")


def test_info_parses_like_elide_and_says_stand_in(tmp_path):
    r = run(["info"], tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    m = re.search(r"^Elide v(\S+) \((RELEASE|DEV)\)$", out, re.M)
    assert m and m.groups() == ("1.0.0-beta10", "RELEASE")
    assert re.search(r"^Platform: (Native|JVM)$", out, re.M).group(1) == "Native"
    assert re.search(r"^Engine: .+ v\S+$", out, re.M)
    langs = re.search(r"^Languages: (.+)$", out, re.M).group(1).split(", ")
    assert "python" in langs
    if HAVE_NODE:
        assert "js" in langs
    assert "STAND-IN" in out and "NOT Elide" in out
    for line in out.splitlines()[1:]:
        assert (line == "" or re.match(r"^[A-Z][\w -]*:( .*)?$", line)
                or re.match(r"^- [\w -]+: .*$", line)), "unparseable info line: %r" % line
    assert "- Working Root: /tmp/elide-runtime/v1.0.0-beta10" in out


def test_dev_version_reports_dev(tmp_path):
    r = run(["info"], tmp_path, env=base_env(ELIDE_STANDIN_VERSION="1.0-dev-20485"))
    assert "Elide v1.0-dev-20485 (DEV)" in r.stdout


def test_help_first_goes_to_stderr(tmp_path):
    r = run(["--help"], tmp_path)
    assert r.returncode == 0 and r.stdout == "" and "Usage: elide" in r.stderr
    r = run(["help"], tmp_path)
    assert r.returncode == 0 and "Usage: elide" in r.stdout


def test_runtime_dir_is_written(tmp_path):
    write(tmp_path, "app.py", "pass")
    assert run(["run", "app.py"], tmp_path).returncode == 0
    assert os.path.isdir("/tmp/elide-runtime/v1.0.0-beta10/native")


# ------------------------------------------------------------------------------------
# Environment isolation
# ------------------------------------------------------------------------------------

def test_python_guest_sees_only_node_env_by_default(tmp_path):
    write(tmp_path, "env.py", PY_DUMP_ENV)
    out = dumped(run(["run", "--no-pretty", "env.py"], tmp_path))
    assert out["env"] == {"NODE_ENV": "production"}


@pytest.mark.parametrize("lang", ["C", None])
def test_python_locale_coercion_adds_nothing_to_the_guest_env(tmp_path, lang):
    """With a C locale, python3 coerces it by setting LC_CTYPE in its own environment."""
    write(tmp_path, "env.py", PY_DUMP_ENV)
    out = dumped(run(["run", "env.py"], tmp_path, env=base_env(LANG=lang)))
    assert out["env"] == {"NODE_ENV": "production"}


def test_standin_python_override_runs_guests_on_that_interpreter(tmp_path):
    """ELIDE_STANDIN_PYTHON: the stand-in re-executes itself under it (still one process)."""
    marker = tmp_path / "wrapper-ran"
    wrapper = write(tmp_path, "py", '#!/bin/sh\ntouch %s\nexec "%s" "$@"\n'
                    % (marker, sys.executable),
                    mode=0o755)
    write(tmp_path, "env.py", PY_DUMP_ENV)
    out = dumped(run(["run", "--host:allow-env", "env.py", "x"], tmp_path,
                     env=base_env(ELIDE_STANDIN_PYTHON=wrapper)))
    assert marker.exists()
    assert out["argv"] == ["env.py", "x"]
    assert not any(k.startswith("__ELIDE_STANDIN") for k in out["env"]), out["env"]


@needs_node
def test_js_guest_sees_only_node_env_by_default(tmp_path):
    write(tmp_path, "env.js", JS_DUMP_ENV)
    out = dumped(run(["run", "env.js"], tmp_path))
    assert out["env"] == {"NODE_ENV": "production"}


def test_env_pairs_reach_the_guest(tmp_path):
    write(tmp_path, "env.py", PY_DUMP_ENV)
    out = dumped(run(["run", "--env", "A=1", "--env=B=x=y", "--env", "BLANK=", "--env", "SP=  ",
                      "env.py"], tmp_path))
    assert out["env"] == {"NODE_ENV": "production", "A": "1", "B": "x=y"}


def test_env_without_equals_is_a_usage_error(tmp_path):
    write(tmp_path, "env.py", PY_DUMP_ENV)
    r = run(["run", "--env=NOVALUE", "env.py"], tmp_path)
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr
    # Separate: --env (picocli arity 0..N) does not take it; it is the runnable.
    r = run(["run", "--env", "NOVALUE", "env.py"], tmp_path)
    assert r.returncode == 1 and "File not found: NOVALUE" in r.stderr


def test_env_takes_every_following_key_value_word(tmp_path):
    """picocli map option with arity 0..N: a script whose path holds "=" is eaten."""
    write(tmp_path, "env.py", PY_DUMP_ENV)
    write(tmp_path, "a=b.py", PY_DUMP_ENV)
    out = dumped(run(["run", "--env", "A=1", "B=2", "env.py", "--", "C=3"], tmp_path))
    assert out["env"] == {"NODE_ENV": "production", "A": "1", "B": "2"}
    assert out["argv"] == ["env.py", "C=3"]
    # a=b.py became an env var; the first word after "--" is then the file to run.
    r = run(["run", "--env", "A=1", "a=b.py", "--", "x"], tmp_path)
    assert r.returncode == 1 and "File not found: x" in r.stderr, r.stderr
    out = dumped(run(["run", "--", "env.py", "y"], tmp_path))
    assert out["argv"] == ["env.py", "y"]


@pytest.mark.parametrize("flag", ["--host:allow-env", "--host:allow-all"])
def test_allow_env_exposes_the_whole_host_environment(tmp_path, flag):
    write(tmp_path, "env.py", PY_DUMP_ENV)
    out = dumped(run(["run", flag, "--env", "A=1", "env.py"], tmp_path))
    env = out["env"]
    assert env["STANDIN_TEST_HOST_MARKER"] == "host-only-value"
    assert env["PATH"] and env["HOME"] and env["A"] == "1"
    assert env["NODE_ENV"] == "production"
    assert not any(k.startswith("__ELIDE_STANDIN") for k in env)


def test_env_pair_overrides_host_value(tmp_path):
    write(tmp_path, "env.py", PY_DUMP_ENV)
    out = dumped(run(["run", "--host:allow-env", "--env", "STANDIN_TEST_HOST_MARKER=mine",
                      "env.py"], tmp_path))
    assert out["env"]["STANDIN_TEST_HOST_MARKER"] == "mine"


@needs_node
def test_js_allow_env_and_read_only_env(tmp_path):
    write(tmp_path, "env.js", """
        console.log(process.env.STANDIN_TEST_HOST_MARKER);
        try { process.env.X = "1"; console.log("wrote"); } catch (e) { console.log("refused: " + e.message); }
        try { delete process.env.PATH; console.log("deleted"); } catch (e) { console.log("refused delete"); }
    """)
    r = run(["run", "--host:allow-env", "env.js"], tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "host-only-value"
    assert lines[1].startswith("refused: Elide forbids writes to the process environment")
    assert lines[2] == "refused delete"


def test_dotenv_from_project_root_and_opt_out(tmp_path):
    proj = tmp_path / "proj"
    write(proj, "package.json", "{}")
    write(proj, ".env", "FROM_DOTENV=1\nONLY_ENV=e\n")
    write(proj, ".env.local", "FROM_DOTENV=local\n")
    write(proj, "sub/env.py", PY_DUMP_ENV)
    sub = proj / "sub"
    out = dumped(run(["run", "env.py"], sub))
    assert out["env"] == {"NODE_ENV": "production", "FROM_DOTENV": "local", "ONLY_ENV": "e"}
    out = dumped(run(["run", "--env:dotenv=false", "env.py"], sub))
    assert out["env"] == {"NODE_ENV": "production"}
    out = dumped(run(["run", "--env:dotenv=true", "env.py"], sub))
    assert out["env"]["FROM_DOTENV"] == "local"
    # A bare --env:dotenv flips picocli's default (true) to false.
    out = dumped(run(["run", "--env:dotenv", "env.py"], sub))
    assert out["env"] == {"NODE_ENV": "production"}
    # A separate value is not taken: "false" becomes the runnable (here /bin/false, found
    # on PATH and run as a host program) and env.py a guest arg.
    r = run(["run", "--env:dotenv", "false", "env.py"], sub)
    assert r.returncode == 1 and r.stdout == "", r.stderr
    # -p points project discovery elsewhere: no .env there.
    out = dumped(run(["run", "-p", str(sub), "env.py"], sub))
    assert out["env"] == {"NODE_ENV": "production"}


def test_dotenv_is_parsed_like_elide_parses_it(tmp_path):
    """DefaultProjectManager.parseDotEnv: split at the first "=", nothing trimmed or
    unquoted, and a line without "=" ends that file (but not .env.local)."""
    write(tmp_path, ".env", 'A=1\nQUOTED="a b"\nexport X=2\n SP = v \nURL=a=b\n\n'
                            '# a comment ends the file\nLATE=never\n')
    write(tmp_path, ".env.local", "LOCAL=yes\n")
    write(tmp_path, "env.py", PY_DUMP_ENV)
    out = dumped(run(["run", "-p", str(tmp_path), "env.py"], tmp_path))
    assert out["env"] == {"NODE_ENV": "production", "A": "1", "QUOTED": '"a b"', "export X": "2",
                          " SP ": " v ", "URL": "a=b", "LOCAL": "yes"}


def test_dotenv_precedence_host_dotenv_env_pairs(tmp_path):
    """EnvironmentConfig.apply: NODE_ENV < host env < .env < .env.local < --env."""
    proj = tmp_path / "ws" / "proj"
    write(tmp_path / "ws", "elide.pkl", "")
    write(tmp_path / "ws", ".env", "WS=ws\nBOTH=ws\n")
    write(proj, ".env", "STANDIN_TEST_HOST_MARKER=from-dotenv\nNODE_ENV=test\nBOTH=proj\n"
                        "PAIR=dotenv\n")
    write(proj, "env.py", PY_DUMP_ENV)
    out = dumped(run(["run", "--host:allow-env", "-p", str(proj), "--env", "PAIR=flag",
                      "env.py"], proj))
    env = out["env"]
    assert env["STANDIN_TEST_HOST_MARKER"] == "from-dotenv"  # .env beats the host env
    assert env["NODE_ENV"] == "test"
    assert env["PAIR"] == "flag"  # --env beats .env
    assert (env["WS"], env["BOTH"]) == ("ws", "proj")  # workspace root's .env, under the project's
    # A host NODE_ENV beats Elide's own.
    out = dumped(run(["run", "--host:allow-env", "--env:dotenv=false", "env.py"], proj,
                     env=base_env(NODE_ENV="from-host")))
    assert out["env"]["NODE_ENV"] == "from-host"


# ------------------------------------------------------------------------------------
# Command line: runtime options, shorthand, guest args, bad input
# ------------------------------------------------------------------------------------

def test_runtime_options_are_taken_wherever_they_stand(tmp_path):
    """GraalVM's runtime option parser walks all of argv: position does not matter."""
    write(tmp_path, "app.py", 'print("ok")')
    for args in (["-Xmx64m", "-Xms16m", "-XX:+PrintGC", "-XX:MaxDirectMemorySize=64m",
                  "-Dfoo=bar", "-Djdk.unrelated=1", "run", "--no-pretty", "app.py"],
                 ["-Xmx64m", "app.py"],
                 ["run", "-Xmx64m", "app.py"],
                 ["run", "app.py", "-Xss4m", "-XX:MaxHeapSize=1g"],
                 ["run", "app.py", "--", "-Dmode=fast", "-Xmx4g"]):
        r = run(args, tmp_path)
        assert (r.returncode, r.stdout) == (0, "ok\n"), (args, r.stderr)


@pytest.mark.parametrize("arg,message", [
    ("-XX:+UseSerialGC", "error: Could not find option 'UseSerialGC'. Use -XX:PrintFlags= to "
                         "list all available options."),
    ("-XX:PrintGC=true", "error: Boolean option 'PrintGC' must have +/- prefix."),
    ("-XX:+MaxHeapSize", "error: Non-boolean option 'MaxHeapSize' can not use +/- prefix."),
    ("-XX:MaxHeapSize=lots", "error: Invalid value for option 'MaxHeapSize': 'lots' is not a "
                             "valid number"),
    ("-Xmxlots", "error: Invalid option '-Xmxlots' does not specify a valid number."),
    ("-Djdk.graal.Dump=", "error: Could not find option 'Dump'."),
    ("-D", "key can't be empty"),
    ("-Delide.js.vm.enableStreams", "Cannot set blocklisted property: elide.js.vm.enableStreams"),
])
def test_bad_runtime_options_abort_before_main_even_after_double_dash(tmp_path, arg, message):
    write(tmp_path, "app.py", 'print("never")')
    for args in ([arg, "run", "app.py"], ["run", "app.py", "--", "ok", arg]):
        r = run(args, tmp_path)
        assert r.returncode == 1 and r.stdout == "", (args, r.stderr)
        assert message in r.stderr, (args, r.stderr)


def test_print_flags_lists_runtime_options_and_exits_0(tmp_path):
    write(tmp_path, "app.py", 'print("never")')
    r = run(["run", "app.py", "--", "-XX:PrintFlags="], tmp_path)
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert "-XX:MaxHeapSize=" in r.stderr and "-XX:+/-PrintGC" in r.stderr


def test_guest_args_after_double_dash(tmp_path):
    write(tmp_path, "args.py", PY_DUMP_ENV)
    out = dumped(run(["run", "args.py", "pos", "--env", "A=1", "--", "--flag", "-x", "--env=B=2",
                      "two words", "", "-X", "-Xint", "-d=1", "--"], tmp_path))
    assert out["argv"] == ["args.py", "pos", "--flag", "-x", "--env=B=2", "two words", "", "-X",
                           "-Xint", "-d=1", "--"]
    # Options after the file are still Elide's (picocli does not stop at positionals).
    assert out["env"] == {"NODE_ENV": "production", "A": "1"}


def test_graalvm_takes_runtime_words_out_of_the_guest_args(tmp_path):
    """The issue's example: the guest gets only input.csv; -Dname (no "=") passes on 25.0."""
    write(tmp_path, "args.py", PY_DUMP_ENV)
    out = dumped(run(["run", "args.py", "--", "-Dmode=fast", "-Xmx4g", "input.csv", "-XX:+PrintGC",
                      "-Dverbose", "-Xss1m"], tmp_path))
    assert out["argv"] == ["args.py", "input.csv", "-Dverbose"]


def test_use_version_anywhere_after_beta10(tmp_path):
    write(tmp_path, "args.py", PY_DUMP_ENV)
    args = ["run", "args.py", "--", "--use-version=1.0.0"]
    out = dumped(run(args, tmp_path))  # beta10: just a guest arg
    assert out["argv"] == ["args.py", "--use-version=1.0.0"]
    newer = base_env(ELIDE_STANDIN_VERSION="1.0.0-beta11-rc3")
    r = run(args, tmp_path, env=newer)
    assert r.returncode == 1 and "another Elide version" in r.stderr, r.stderr
    out = dumped(run(["run", "--ignore-version", "args.py", "--", "--use-version=1.0.0"],
                     tmp_path, env=newer))
    assert out["argv"] == ["args.py", "--use-version=1.0.0"]


@needs_node
def test_xmx_caps_the_js_guest_heap(tmp_path):
    write(tmp_path, "hog.js", """
        const keep = [];
        for (let i = 0; i < 96; i++) keep.push(new Array(262144).fill(i));
        console.log("kept " + keep.length);
    """)
    r = run(["-Xmx512m", "run", "hog.js"], tmp_path)
    assert (r.returncode, r.stdout) == (0, "kept 96\n"), r.stderr
    r = run(["-Xmx24m", "run", "hog.js"], tmp_path)
    assert r.returncode != 0 and "kept" not in r.stdout


@needs_node
def test_js_guest_args(tmp_path):
    write(tmp_path, "args.mjs", JS_DUMP_ENV)
    out = dumped(run(["args.mjs", "--", "a", "--b"], tmp_path))
    assert out["argv"][1:] == ["a", "--b"]


@pytest.mark.parametrize("command", ["run", "r", "serve", "test", None])
def test_run_aliases_and_shorthand(tmp_path, command):
    write(tmp_path, "app.py", 'print("hi")')
    r = run(([command] if command else []) + ["app.py"], tmp_path)
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr


def test_accepted_flags(tmp_path):
    write(tmp_path, "app.py", 'print("ok")')
    r = run(["run", "--pretty", "--no-pretty", "--host:allow-io", "-q", "-v", "--verbose",
             "--debug", "--timeout", "3", "--timeout=2", "--js:strict", "--js:ecma", "ES2024",
             "--python:engine=native", "--serve", "--env:dotenv=true", "-p", str(tmp_path),
             "--project=" + str(tmp_path), "app.py"], tmp_path)
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr


@pytest.mark.parametrize("args", [["run", "--bogus", "app.py"], ["--bogus"], ["info", "--nope"],
                                  ["run", "--timeout", "soon", "app.py"],
                                  ["run", "--ignore-version", "app.py"]])
def test_bad_options_exit_2(tmp_path, args):
    write(tmp_path, "app.py", 'print("never")')
    r = run(args, tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert "Usage: elide" in r.stderr


def test_ignore_version_accepted_after_beta10(tmp_path):
    write(tmp_path, "app.py", 'print("ok")')
    r = run(["run", "--ignore-version", "app.py"], tmp_path,
            env=base_env(ELIDE_STANDIN_VERSION="1.0.0-beta11-rc3"))
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr


def test_missing_file(tmp_path):
    r = run(["run", "local/missing.py"], tmp_path)
    assert r.returncode == 1
    assert "File not found: local/missing.py" in r.stderr


def test_file_resolved_relative_to_cwd(tmp_path):
    write(tmp_path, "local/app.py", 'print("local")')
    assert run(["run", "local/app.py"], tmp_path).stdout == "local\n"
    assert run(["run", "app.py"], tmp_path).returncode == 1


@pytest.mark.parametrize("name,needle", [
    ("app.txt", "File type mismatch"),
    ("app", "File not found"),
    ("app.rb", "not by the Elide stand-in"),
    ("App.kt", "not by the Elide stand-in"),
    ("app.groovy", "not yet implemented"),
    ("app.tsx", "not supported by the Elide stand-in"),
])
def test_unsupported_files_exit_1(tmp_path, name, needle):
    if name != "app":
        write(tmp_path, name, "x")
    r = run(["run", name], tmp_path)
    assert r.returncode == 1 and needle in r.stderr, r.stderr


def test_directory_and_no_file(tmp_path):
    os.mkdir(tmp_path / "site")
    assert run(["run", "site"], tmp_path).returncode == 1
    r = run([], tmp_path)
    assert r.returncode == 1 and "REPL" in r.stderr
    r = run(["-v"], tmp_path)  # -v is --verbose: a bare `elide -v` would open the REPL
    assert r.returncode == 1
    r = run(["python", "app.py"], tmp_path)
    assert r.returncode == 1 and "elide run FILE" in r.stderr


@needs_node
def test_typescript_runs_or_says_why_not(tmp_path):
    write(tmp_path, "app.ts", 'const n: number = 2; console.log("ts", n * 21);')
    r = run(["run", "app.ts"], tmp_path)
    probe = subprocess.run(["node", "--experimental-strip-types", "-e", "0"], capture_output=True)
    if probe.returncode == 0:
        assert (r.returncode, r.stdout) == (0, "ts 42\n"), r.stderr
    else:
        assert r.returncode == 1 and "TypeScript" in r.stderr and "stand-in" in r.stderr


def test_executable_absolute_script_runs_as_host_program(tmp_path):
    # Elide's "project binary" rule: an executable file is spawned, not interpreted, with the
    # host environment -- why the driver must pass non-executable scripts.
    path = write(tmp_path, "tool.py", '#!/bin/sh\necho "host program $1 $STANDIN_TEST_HOST_MARKER"\n',
                 mode=0o755)
    r = run(["run", path, "--", "arg"], tmp_path)
    assert (r.returncode, r.stdout) == (0, "host program arg host-only-value\n"), r.stderr
    os.chmod(path, 0o644)
    r = run(["run", path], tmp_path)
    assert r.returncode == 255  # now interpreted as Python: `#!/bin/sh` + echo is a syntax error


# ------------------------------------------------------------------------------------
# Exit codes and error reports
# ------------------------------------------------------------------------------------

@pytest.mark.parametrize("source,code", [
    ('print("fine")', 0),
    ("import sys; sys.exit(3)", 3),
    ("import sys; sys.exit(1)", 1),
    ("raise SystemExit(42)", 42),
    ("exit(6)", 6),  # site's builtins exist, though the stand-in runs without site-packages
    ("quit()", 0),
])
def test_python_exit_codes_pass_through(tmp_path, source, code):
    write(tmp_path, "app.py", source)
    assert run(["run", "app.py"], tmp_path).returncode == code


@needs_node
@pytest.mark.parametrize("source,code", [
    ('console.log("fine")', 0),
    ("process.exit(3)", 3),
    ("process.exit(1)", 1),
    ("process.exitCode = 7", 7),
])
def test_js_exit_codes_pass_through(tmp_path, source, code):
    write(tmp_path, "app.js", source)
    assert run(["run", "app.js"], tmp_path).returncode == code


def test_python_guest_sees_no_site_packages_and_writes_no_bytecode_into_the_stand_in(tmp_path):
    pycache = os.path.join(HERE, "support", "pylib", "__pycache__")
    shutil.rmtree(pycache, ignore_errors=True)
    write(tmp_path, "app.py", """
        import sys, polyglot
        print([p for p in sys.path if "-packages" in p], polyglot.__name__)
    """)
    r = run(["run", "app.py"], tmp_path)
    assert (r.returncode, r.stdout) == (0, "[] polyglot\n"), r.stderr
    assert not os.path.exists(pycache)


def test_python_uncaught_exception_is_255_with_boxed_report(tmp_path):
    write(tmp_path, "app.py", """
        print("before the error", flush=True)
        def fail():
            raise ValueError("boom from the guest")
        fail()
    """)
    r = run(["run", "app.py"], tmp_path)
    assert r.returncode == 255
    assert r.stdout == "before the error\n"
    assert "ValueError: boom from the guest" in r.stderr
    assert 'File "app.py", line 3, in fail' in r.stderr
    assert "\u256d" in r.stderr and "\u2570" in r.stderr  # boxed
    assert "elide-standin" not in r.stderr and "runpy" not in r.stderr  # guest frames only
    assert not ANSI.search(r.stderr)  # NO_COLOR=1


def test_python_syntax_error_is_255(tmp_path):
    write(tmp_path, "app.py", "def broken(:\n")
    r = run(["run", "app.py"], tmp_path)
    assert r.returncode == 255 and "SyntaxError" in r.stderr


def test_unbuffered_output_survives_uncaught_error(tmp_path):
    write(tmp_path, "app.py", 'print("buffered line")\nraise RuntimeError("x")\n')
    r = run(["run", "app.py"], tmp_path)
    assert r.returncode == 255 and r.stdout == "buffered line\n"


@needs_node
@pytest.mark.parametrize("name,source,needle", [
    ("app.js", 'function f() { throw new Error("js boom"); }\nf();', "Error: js boom"),
    ("app.mjs", 'await Promise.resolve();\nthrow new TypeError("esm boom");', "TypeError: esm boom"),
    ("app.cjs", 'Promise.reject(new Error("rejected"));', "Error: rejected"),
    ("app.js", "let x = ;", "SyntaxError"),
])
def test_js_uncaught_errors_are_255(tmp_path, name, source, needle):
    write(tmp_path, name, source)
    r = run(["run", name], tmp_path)
    assert r.returncode == 255 and needle in r.stderr, r.stderr
    assert "\u256d" in r.stderr


def test_colour_is_forced_unless_no_color_or_no_pretty(tmp_path):
    write(tmp_path, "app.py", 'raise ValueError("c")')
    env = base_env(NO_COLOR=None)
    assert ANSI.search(run(["run", "app.py"], tmp_path, env=env).stderr)
    assert not ANSI.search(run(["run", "--no-pretty", "app.py"], tmp_path, env=env).stderr)
    assert not ANSI.search(run(["run", "app.py"], tmp_path).stderr)
    assert not ANSI.search(run(["run", "missing.py"], tmp_path).stderr)
    assert not ANSI.search(run(["run", "--bogus"], tmp_path).stderr)


# ------------------------------------------------------------------------------------
# Signals and process relationships
# ------------------------------------------------------------------------------------

PY_SIGNAL_GUEST = """
import atexit, os, signal, sys, threading, time
# Handlers write with os.write: a signal can land while the main code is inside print(),
# and print would then fail with "reentrant call inside BufferedWriter".
def on_term(signum, frame):
    os.write(1, b"TERMINATION HOOK RAN\\n")
    sys.exit(9)
def on_usr1(signum, frame):
    os.write(1, b"got SIGUSR1\\n")
def on_usr2(signum, frame):
    os.write(1, b"got SIGUSR2, leaving\\n")
    sys.exit(0)
TERMINATORS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
for s in TERMINATORS:
    signal.signal(s, on_term)
signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGUSR2, on_usr2)
atexit.register(os.write, 1, b"ATEXIT HOOK RAN\\n")
signal.pthread_sigmask(signal.SIG_UNBLOCK, TERMINATORS)  # no way around the Terminator
mode = sys.argv[1] if len(sys.argv) > 1 else "sleep"
print("buffered output")  # block-buffered (stdout is a pipe) until something flushes it
os.write(1, b"ready %d %d %d\\n" % (os.getpid(), os.getppid(), os.getpgrp()))
try:
    if mode == "sleep":  # in a C call
        while True:
            time.sleep(3600)
    elif mode == "spin":  # pure Python, never in a system call
        n = 0
        while True:
            n += 1
    elif mode == "join":  # the main thread waits on a lock; another thread sleeps
        t = threading.Thread(target=time.sleep, args=(3600,))
        t.start()
        t.join()
except BaseException as e:
    os.write(1, b"CAUGHT %r\\n" % e)
    raise
"""
NO_GUEST_CODE = ("TERMINATION HOOK RAN", "CAUGHT", "ATEXIT HOOK RAN")


def start_signal_guest(guests, tmp_path, source=PY_SIGNAL_GUEST, args=()):
    write(tmp_path, "sig.py", source)
    g = guests(["run", "sig.py", "--"] + list(args), tmp_path)
    words = g.line().split()
    assert words[0] == "ready", words
    return g, int(words[1]), int(words[2]), int(words[3])


@pytest.mark.parametrize("mode", ["sleep", "spin", "join"])
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130),
                                      (signal.SIGHUP, 129)])
def test_terminator_signals_end_the_guest_without_a_hook(guests, tmp_path, sig, code, mode):
    """Whatever the main thread does (sleeping in C, spinning in Python, waiting on a lock),
    no handler, except clause or atexit hook of the guest runs; its buffered output is
    written."""
    g, _, _, _ = start_signal_guest(guests, tmp_path, args=[mode])
    os.kill(g.proc.pid, sig)
    assert g.wait() == code
    out, err = g.rest()
    assert not any(s in out for s in NO_GUEST_CODE), out
    assert "buffered output" in out, out
    assert err == ""


def test_sigterm_to_the_whole_group_runs_no_hook(guests, tmp_path):
    g, _, _, _ = start_signal_guest(guests, tmp_path)
    os.killpg(g.proc.pid, signal.SIGTERM)
    assert g.wait() == 143
    out, _ = g.rest()
    assert not any(s in out for s in NO_GUEST_CODE), out


def test_other_signals_reach_the_guest(guests, tmp_path):
    g, _, _, _ = start_signal_guest(guests, tmp_path)
    os.kill(g.proc.pid, signal.SIGUSR1)
    assert g.line() == "got SIGUSR1"
    os.kill(g.proc.pid, signal.SIGUSR1)
    assert g.line() == "got SIGUSR1"
    os.kill(g.proc.pid, signal.SIGUSR2)  # the guest drains and exits 0
    assert g.line() == "got SIGUSR2, leaving"
    assert g.wait() == 0


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGKILL])
def test_a_guest_killed_by_a_signal_is_the_stand_in_killed_by_it(guests, tmp_path, sig):
    g, _, _, _ = start_signal_guest(
        guests, tmp_path, 'import os, time\nos.write(1, b"ready 0 0 0\\n")\ntime.sleep(3600)\n')
    os.kill(g.proc.pid, sig)  # SIGUSR1 without a handler: its default action
    assert g.wait() == -sig


def test_python_guest_runs_in_the_stand_in_process(guests, tmp_path):
    """Like Elide, one process: the guest's pid is the stand-in's, and it has no child."""
    g, guest_pid, guest_ppid, guest_pgid = start_signal_guest(guests, tmp_path)
    assert (guest_pid, guest_ppid, guest_pgid) == (g.proc.pid, os.getpid(), g.proc.pid)
    children = []
    for tid in os.listdir("/proc/%d/task" % g.proc.pid):
        with open("/proc/%d/task/%s/children" % (g.proc.pid, tid)) as f:
            children += f.read().split()
    assert children == []


def test_processes_the_guest_starts_have_no_signal_blocked(tmp_path):
    """The guest's threads hold the Terminator's signals blocked; nothing it starts inherits
    that (subprocess, os.system, posix_spawn, fork, exec), and the guest cannot see it."""
    write(tmp_path, "kids.py", """
        import os, signal, subprocess, sys
        GREP = ["/bin/grep", "^SigBlk", "/proc/self/status"]
        print("guest sees", sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])), flush=True)
        subprocess.run(GREP, check=True)
        os.system(" ".join(GREP))
        os.waitpid(os.posix_spawn(GREP[0], GREP, os.environ), 0)
        pid = os.fork()
        if pid == 0:
            with open("/proc/self/status") as f:
                os.write(1, [l for l in f if l.startswith("SigBlk")][0].encode())
            os._exit(0)
        os.waitpid(pid, 0)
        p = subprocess.Popen(["sleep", "1000"])
        p.terminate()
        print("child ended by", p.wait(), flush=True)
        os.execv(GREP[0], GREP)
    """)
    r = run(["run", "kids.py"], tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "guest sees []"
    assert "child ended by -15" in lines
    masks = [line.split()[1] for line in lines if line.startswith("SigBlk")]
    assert masks == ["0000000000000000"] * 5, r.stdout


def test_guest_exit_waits_for_its_threads_and_runs_atexit(tmp_path):
    write(tmp_path, "main.py", """
        import atexit, pickle, sys, threading, __main__
        class Point:
            def __init__(self, x):
                self.x = x
        def after_main():
            threading.main_thread().join()
            print("thread ran after the main code", flush=True)
        atexit.register(print, "atexit ran")
        threading.Thread(target=after_main).start()
        print(__name__, __main__.__file__, __main__.Point is Point,
              pickle.loads(pickle.dumps(Point(7))).x, flush=True)
        sys.exit(4)
    """)
    r = run(["run", "main.py"], tmp_path)
    assert r.returncode == 4, r.stderr
    assert r.stdout.splitlines() == ["__main__ main.py True 7", "thread ran after the main code",
                                     "atexit ran"]


def test_stand_in_exits_when_the_guest_exits(tmp_path):
    write(tmp_path, "app.py", """
        import os, sys
        print("ready", flush=True)
        line = sys.stdin.readline()
        sys.exit(int(line))
    """)
    p = subprocess.Popen([ELIDE, "run", "app.py"], cwd=tmp_path, env=base_env(),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "ready\n"
        p.stdin.write("5\n")
        p.stdin.close()
        assert p.wait(timeout=TIMEOUT) == 5
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()


JS_READY = """
const stat = require("fs").readFileSync("/proc/self/stat", "utf8").split(") ")[1].split(" ");
console.log("ready " + process.pid + " " + stat[1] + " " + stat[2]);
setInterval(() => {}, 1000);
"""


@needs_node
def test_js_guest_is_a_child_in_the_same_process_group(guests, tmp_path):
    write(tmp_path, "app.cjs", JS_READY)
    g = guests(["run", "app.cjs"], tmp_path)
    words = g.line().split()
    guest_pid, guest_ppid, guest_pgid = int(words[1]), int(words[2]), int(words[3])
    assert guest_ppid == g.proc.pid and guest_pid != g.proc.pid
    assert guest_pgid == os.getpgid(g.proc.pid) == g.proc.pid  # no new session or group
    g.proc.kill()  # SIGKILL to the stand-in only, not its group
    assert g.wait() == -signal.SIGKILL
    wait_gone(guest_pid)  # PR_SET_PDEATHSIG


@needs_node
def test_js_guest_signal_hooks_are_ignored(guests, tmp_path):
    write(tmp_path, "sig.js", """
        process.on("SIGTERM", () => { console.log("TERMINATION HOOK RAN"); process.exit(9); });
        process.on("SIGUSR2", () => { console.log("got SIGUSR2"); process.exit(0); });
        console.log("ready");
        setInterval(() => {}, 1000);
    """)
    g = guests(["run", "sig.js"], tmp_path)
    assert g.line() == "ready"
    os.killpg(g.proc.pid, signal.SIGTERM)
    assert g.wait() == 143
    assert "TERMINATION HOOK RAN" not in g.rest()[0]
    g2 = guests(["run", "sig.js"], tmp_path)
    assert g2.line() == "ready"
    os.kill(g2.proc.pid, signal.SIGUSR2)
    assert g2.line() == "got SIGUSR2"
    assert g2.wait() == 0


# ------------------------------------------------------------------------------------
# polyglot
# ------------------------------------------------------------------------------------

@needs_node
def test_polyglot_eval_calls_exported_js_functions(tmp_path):
    write(tmp_path, "main.py", '''
        import polyglot
        js = polyglot.eval(language="js", string="""
          export function processData(data) { return data.map(x => x * 2); }
          export async function greet(who) { return { hello: who, n: 1.5 }; }
          export function fail() { throw new RangeError("out of range"); }
          export const answer = 42;
        """)
        print(js.processData([1, 2, 3, 4, 5]))
        print(js.greet("nomad"))
        print(js.answer)
        try:
            js.fail()
        except polyglot.PolyglotError as e:
            print("error:", e)
        try:
            js.missing
        except AttributeError:
            print("no such export")
    ''')
    r = run(["run", "main.py"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "[2, 4, 6, 8, 10]",
        "{'hello': 'nomad', 'n': 1.5}",
        "42",
        "error: RangeError: out of range",
        "no such export",
    ]


@needs_node
def test_polyglot_elide_modules_fail_clearly(tmp_path):
    write(tmp_path, "main.py", '''
        import polyglot
        polyglot.eval(language="js", string='import { params } from "elide:llm"; export function f() {}')
    ''')
    r = run(["run", "main.py"], tmp_path)
    assert r.returncode == 255
    assert "elide:" in r.stderr and "not available in the Elide stand-in" in r.stderr


def test_polyglot_rejects_other_languages(tmp_path):
    write(tmp_path, "main.py", '''
        import polyglot
        try:
            polyglot.eval(language="ruby", string="1")
        except polyglot.PolyglotError as e:
            print("refused")
    ''')
    r = run(["run", "main.py"], tmp_path)
    assert (r.returncode, r.stdout) == (0, "refused\n"), r.stderr

