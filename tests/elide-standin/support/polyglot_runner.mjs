// Part of the Elide CLI STAND-IN (tests/elide-standin) -- not Elide.
// Bridge for pylib/polyglot.py: node polyglot_runner.mjs MODULE RESULT_FD
// Reads a JSON request on stdin: {"op":"list"} or {"op":"call","name":...,"args":[...]}
// and writes one JSON reply to RESULT_FD (stdout stays the guest's).
import { readFileSync, writeSync, closeSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [modulePath, fdArg] = process.argv.slice(2);
const resultFd = Number(fdArg);

// One reply, then exit: timers or servers the module left behind must not keep the
// caller waiting.
function reply(obj) {
  let text;
  try {
    text = JSON.stringify(obj);
  } catch (err) {
    text = JSON.stringify({ error: { name: "TypeError", message: "result is not JSON-serialisable: " + err.message } });
  }
  writeSync(resultFd, text);
  closeSync(resultFd);
  process.exit(0);
}

function describe(err) {
  if (err instanceof Error) {
    let message = err.message;
    if (err.code === "ERR_UNSUPPORTED_ESM_URL_SCHEME" && /elide:/.test(message)) {
      message = "Elide's built-in modules (elide:*) are not available in the Elide stand-in: " + message;
    }
    return { name: err.name, message, stack: err.stack };
  }
  return { name: "Error", message: String(err) };
}

let request;
try {
  request = JSON.parse(readFileSync(0, "utf8"));
} catch (err) {
  reply({ error: describe(err) });
}

try {
  const ns = await import(pathToFileURL(modulePath).href);
  if (request.op === "list") {
    const exports = {};
    for (const [name, value] of Object.entries(ns)) {
      if (typeof value === "function") exports[name] = { kind: "function" };
      else {
        let v = null;
        try { v = JSON.parse(JSON.stringify(value) ?? "null"); } catch { v = null; }
        exports[name] = { kind: "value", value: v };
      }
    }
    reply({ exports });
  } else if (request.op === "call") {
    const fn = ns[request.name];
    if (typeof fn !== "function") throw new TypeError(`${request.name} is not an exported function`);
    const result = await fn(...(request.args || []));
    reply({ result: result === undefined ? null : result });
  } else {
    throw new Error(`unknown request ${request.op}`);
  }
} catch (err) {
  reply({ error: describe(err) });
}
