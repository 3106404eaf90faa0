# Part of the Elide CLI STAND-IN (tests/elide-standin) -- not Elide.
#
# Runs a Python guest the way Elide's contract says it behaves:
#   * the environment is exactly what the stand-in chose (python3's own locale coercion,
#     which adds LC_CTYPE, is undone);
#   * SIGTERM / SIGINT / SIGHUP give the guest no hook (Elide's JVM Terminator handles
#     them): signal.signal() for them is silently not installed, and SIGINT does not raise
#     KeyboardInterrupt;
#   * `import polyglot` works (a small subprocess-based imitation, see pylib/polyglot.py);
#   * an uncaught exception (including a SyntaxError in the script) prints a boxed error
#     report on stderr and exits 255; sys.exit(n) exits n.
#
# Usage (by the stand-in only): python3 bootstrap.py SCRIPT [ARGS...]
# with the JSON hand-over in $__ELIDE_STANDIN_BOOTSTRAP.

import json
import os
import runpy
import signal
import sys
import traceback

_BOOTSTRAP_ENV = "__ELIDE_STANDIN_BOOTSTRAP"
_TERMINATOR = frozenset((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))


def _prepare_env(cfg):
    keys = cfg.get("keys")
    if keys is None:
        return
    allowed = set(keys)
    for key in list(os.environ):
        if key not in allowed:
            del os.environ[key]


def _no_terminator_hooks():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    real_signal = signal.signal

    def guarded_signal(signalnum, handler):
        if signalnum in _TERMINATOR:
            # Elide gives guest code no hook for these signals; pretend success.
            return signal.getsignal(signalnum)
        return real_signal(signalnum, handler)

    guarded_signal.__doc__ = real_signal.__doc__
    signal.signal = guarded_signal


def _box(title, body, color):
    lines = body.rstrip("\n").split("\n")
    red, reset = ("\x1b[31m", "\x1b[0m") if color else ("", "")
    width = min(100, max([len(title) + 4] + [len(line) + 2 for line in lines] + [40]))
    out = [red + "\u256d\u2500 " + title + " " + "\u2500" * (width - len(title) - 3) + reset]
    out += [red + "\u2502" + reset + " " + line for line in lines]
    out.append(red + "\u2570" + "\u2500" * width + reset)
    return "\n".join(out) + "\n"


def _report(exc, color):
    tb = exc.__traceback__
    # Drop the bootstrap's and runpy's frames: the report starts at guest code.
    while tb is not None and (tb.tb_frame.f_globals is globals()
                              or tb.tb_frame.f_globals.get("__name__") == "runpy"):
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    report = _box("Uncaught error in guest code (Elide stand-in)", text, color)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        sys.stderr.buffer.write(report.encode("utf-8", "replace"))
        sys.stderr.buffer.flush()
    except (OSError, ValueError, AttributeError):
        pass


def main():
    cfg = json.loads(os.environ.pop(_BOOTSTRAP_ENV, None) or "{}")
    _prepare_env(cfg)
    _no_terminator_hooks()
    color = bool(cfg.get("color"))

    if len(sys.argv) < 2:
        sys.stderr.write("bootstrap.py: no script given (internal to the Elide stand-in)\n")
        os._exit(1)
    script = sys.argv[1]
    sys.argv = [script] + sys.argv[2:]
    # Like `python3 script.py`: the script's directory first on sys.path.
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    pylib = cfg.get("pylib")
    if pylib:
        sys.path.insert(1, pylib)
        saved = sys.dont_write_bytecode
        sys.dont_write_bytecode = True  # never write into the stand-in's own tree
        try:
            import polyglot  # noqa: F401  (configured for the guest below)
            polyglot._configure(node=cfg.get("node"))
        except ImportError:
            pass
        finally:
            sys.dont_write_bytecode = saved

    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 -- every uncaught guest error is reported
        _report(exc, color)
        os._exit(255)


main()
