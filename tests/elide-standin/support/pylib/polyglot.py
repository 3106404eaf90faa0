"""A small STAND-IN for GraalVM's Python `polyglot` module (Elide stand-in only -- not Elide).

Real Elide runs Python and JavaScript in one GraalVM process. This imitation supports just
what the example jobs use:

    helper = polyglot.eval(language='js', string='export function twice(x) { return 2 * x }')
    helper.twice(21)  # -> 42

`string` (or `path`) is a JavaScript ES module; each *exported* function becomes a callable
attribute. Every call runs the module in a fresh `node` subprocess with the arguments and the
result serialised as JSON, so only JSON-compatible values cross the boundary, and module
state is not kept between calls. Errors thrown in JavaScript raise `polyglot.PolyglotError`.
"""

import atexit
import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile

__all__ = ["eval", "PolyglotError", "JSModule"]

_RUNNER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "polyglot_runner.mjs")
_state = {"node": None, "tmpdir": None}


class PolyglotError(Exception):
    """An error raised by guest JavaScript (or by the stand-in's bridge to it)."""


def _configure(node=None):
    """Called by the stand-in's bootstrap before guest code runs."""
    _state["node"] = node


def _node():
    node = _state["node"] or shutil.which("node")
    if not node:
        raise PolyglotError("polyglot (Elide stand-in): node was not found, so JavaScript "
                            "cannot be evaluated")
    return node


def _tmpdir():
    if _state["tmpdir"] is None:
        _state["tmpdir"] = tempfile.mkdtemp(prefix="elide-standin-polyglot-")
        atexit.register(shutil.rmtree, _state["tmpdir"], True)
    return _state["tmpdir"]


def _die_with_parent():
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _invoke(module_path, request):
    """Run the runner once; the result comes back on fd 3 so the guest keeps stdout."""
    rfd, wfd = os.pipe()
    try:
        proc = subprocess.Popen(
            [_node(), _RUNNER, module_path, str(wfd)],
            stdin=subprocess.PIPE, pass_fds=(wfd,), preexec_fn=_die_with_parent)
    except OSError as e:
        os.close(rfd)
        os.close(wfd)
        raise PolyglotError("polyglot (Elide stand-in): cannot start node: %s" % e) from None
    os.close(wfd)
    with os.fdopen(rfd, "rb") as reader:
        proc.stdin.write(json.dumps(request).encode("utf-8"))
        proc.stdin.close()
        raw = reader.read()
    proc.wait()
    try:
        reply = json.loads(raw.decode("utf-8"))
    except ValueError:
        raise PolyglotError("polyglot (Elide stand-in): node exited with status %d and no result"
                            % proc.returncode) from None
    if "error" in reply:
        err = reply["error"]
        raise PolyglotError("%s: %s" % (err.get("name", "Error"), err.get("message", "")))
    return reply


class JSModule:
    """The exports of an evaluated JavaScript module."""

    def __init__(self, module_path, exports):
        self._path = module_path
        self._exports = exports  # name -> {"kind": "function"} | {"kind": "value", "value": ...}

    def __getattr__(self, name):
        exports = self.__dict__.get("_exports", {})
        if name not in exports:
            raise AttributeError("JavaScript module has no export named %r (exports: %s)"
                                 % (name, ", ".join(sorted(exports)) or "none"))
        entry = exports[name]
        if entry["kind"] != "function":
            return entry.get("value")

        def call(*args):
            return _invoke(self._path, {"op": "call", "name": name, "args": list(args)}).get("result")

        call.__name__ = name
        return call

    def __dir__(self):
        return sorted(self._exports)

    def __repr__(self):
        return "<polyglot JSModule exports=%s (Elide stand-in)>" % sorted(self._exports)


def eval(language=None, string=None, path=None):  # noqa: A001 -- mirrors GraalVM's API name
    """Evaluate JavaScript module source (`string`) or file (`path`) and return its exports."""
    if language not in ("js", "javascript"):
        raise PolyglotError("polyglot.eval (Elide stand-in): only language='js' is supported, got %r"
                            % (language,))
    if (string is None) == (path is None):
        raise PolyglotError("polyglot.eval: pass exactly one of string= or path=")
    if path is not None:
        with open(path, encoding="utf-8") as f:
            string = f.read()
    fd, module_path = tempfile.mkstemp(suffix=".mjs", dir=_tmpdir())
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(string)
    reply = _invoke(module_path, {"op": "list"})
    return JSModule(module_path, reply.get("exports", {}))
