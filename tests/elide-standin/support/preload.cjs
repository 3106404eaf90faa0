// Part of the Elide CLI STAND-IN (tests/elide-standin) -- not Elide.
//
// Loaded with `node --require` before a JavaScript guest so node behaves like Elide's
// documented contract (elide-cli.md §3, §6):
//   * the stand-in's hand-over variable is removed before guest code runs;
//   * process.env is read-only: writes and deletes throw, as in Elide;
//   * process.on('SIGTERM' | 'SIGINT' | 'SIGHUP') registers nothing (Elide has no signal
//     events; those signals go to the JVM Terminator);
//   * an uncaught exception or unhandled rejection prints a boxed report on stderr and
//     exits 255; process.exit(n) still exits n.
"use strict";

const BOOTSTRAP_ENV = "__ELIDE_STANDIN_BOOTSTRAP";
let cfg = {};
try {
  cfg = JSON.parse(process.env[BOOTSTRAP_ENV] || "{}");
} catch (_) {
  cfg = {};
}
delete process.env[BOOTSTRAP_ENV];
const color = Boolean(cfg.color);

// --- read-only environment ---------------------------------------------------------
const realEnv = process.env;
function forbid(what, key) {
  throw new TypeError(`Elide forbids writes to the process environment (${what} ${String(key)})`);
}
const readOnlyEnv = new Proxy(realEnv, {
  set: (_t, key) => forbid("set", key),
  deleteProperty: (_t, key) => forbid("delete", key),
  defineProperty: (_t, key) => forbid("define", key),
});
Object.defineProperty(process, "env", {
  value: readOnlyEnv,
  writable: false,
  enumerable: true,
  configurable: false,
});

// --- no guest hooks for the Terminator's signals -----------------------------------
const TERMINATOR = new Set(["SIGTERM", "SIGINT", "SIGHUP"]);
for (const method of ["on", "addListener", "once", "prependListener", "prependOnceListener"]) {
  const original = process[method];
  process[method] = function (event, listener) {
    if (TERMINATOR.has(event)) return this;
    return original.call(this, event, listener);
  };
}

// --- uncaught errors -> boxed report, exit 255 --------------------------------------
function box(title, body) {
  const lines = String(body).replace(/\n+$/, "").split("\n");
  const red = color ? "\x1b[31m" : "";
  const reset = color ? "\x1b[0m" : "";
  const width = Math.min(100, Math.max(title.length + 4, 40, ...lines.map((l) => l.length + 2)));
  const out = [red + "\u256d\u2500 " + title + " " + "\u2500".repeat(width - title.length - 3) + reset];
  for (const line of lines) out.push(red + "\u2502" + reset + " " + line);
  out.push(red + "\u2570" + "\u2500".repeat(width) + reset);
  return out.join("\n") + "\n";
}

process.on("uncaughtException", (err) => {
  let text;
  if (err instanceof Error) {
    text = err.stack || `${err.name}: ${err.message}`;
    if (err.code === "ERR_UNSUPPORTED_ESM_URL_SCHEME" && /elide:/.test(err.message)) {
      text += "\n(Elide's built-in modules (elide:*) are not available in the Elide stand-in)";
    }
  } else {
    text = `Uncaught ${typeof err}: ${String(err)}`;
  }
  try {
    require("fs").writeSync(2, box("Uncaught error in guest code (Elide stand-in)", text));
  } catch (_) {
    // stderr gone: nothing left to tell
  }
  process.exit(255);
});
