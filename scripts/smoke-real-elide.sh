#!/usr/bin/env bash
# Checks, against the Elide binary given, every assumption nomad-driver-elide makes about Elide.
#
#   ELIDE=/path/to/elide scripts/smoke-real-elide.sh
#
# Run it once on a Nomad client with the real Elide before enabling the driver there
# (docs/elide.md lists each assumption and the source it was read from). CI runs it against
# the stand-in (tests/elide-standin/elide). It runs small JavaScript guests the way the driver
# does (see driver/src/tasks/command.rs), prints one row per check — CHECK, PASS/FAIL, what
# was observed — and exits 1 if any check failed (2: bad usage).
#
# Environment: ELIDE (required), ELIDE_SMOKE_TIMEOUT (seconds per Elide run, default 120),
# ELIDE_SMOKE_KEEP=1 keeps the work dir. Needs bash, coreutils and mkfifo; no network.
set -uo pipefail

die() { printf 'smoke-real-elide: %s\n' "$*" >&2; exit 2; }
[ -n "${ELIDE:-}" ] || die "set ELIDE to the Elide binary to check, e.g. ELIDE=\$HOME/elide/elide $0"
case "$ELIDE" in */*) ;; *) ELIDE="$(command -v "$ELIDE" || true)" ;; esac
[ -n "$ELIDE" ] && [ -x "$ELIDE" ] && [ -f "$ELIDE" ] || die "ELIDE=${ELIDE:-?} is not an executable file"
ELIDE="$(cd "$(dirname "$ELIDE")" && pwd)/$(basename "$ELIDE")"
TIMEOUT="${ELIDE_SMOKE_TIMEOUT:-120}"
case "$TIMEOUT" in ''|*[!0-9]*) die "ELIDE_SMOKE_TIMEOUT must be a whole number of seconds" ;; esac
for tool in timeout mkfifo mktemp; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool (coreutils) is required"
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/elide-smoke.XXXXXX")" || die "cannot create a work dir"
cleanup() { [ "${ELIDE_SMOKE_KEEP:-}" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT

# Two task dirs laid out like the driver's: the app in local/, the task dir as project root
# (-p), HOME in local/, TMPDIR in tmp/. Only the second one carries a .env.
TASK="$WORK/task"
DOTENV_TASK="$WORK/dotenv-task"
for d in "$TASK" "$DOTENV_TASK"; do
  mkdir -p "$d/local" "$d/tmp"
  cat >"$d/local/probe.js" <<'EOF'
for (const k of ["SMOKE_HOST_ONLY", "SMOKE_PAIR", "SMOKE_DOTENV"]) {
  console.log(k + "=" + String(process.env[k]));
}
console.log("ARGV=" + JSON.stringify(process.argv));
console.log("smoke-ok");
EOF
  cat >"$d/local/throw.js" <<'EOF'
console.log("about to throw");
throw new Error("smoke: uncaught guest error");
EOF
  cat >"$d/local/wait.js" <<'EOF'
console.log("ready");
setInterval(() => {}, 1000);
EOF
  # ~256 live arrays of 262144 small ints: 256 MiB or more on any JS engine.
  cat >"$d/local/hog.js" <<'EOF'
console.log("started");
const keep = [];
for (let i = 0; i < 256; i++) keep.push(new Array(262144).fill(i));
console.log("held " + keep.length);
EOF
done
printf 'SMOKE_DOTENV=from-dotenv\nSMOKE_HOST_ONLY=from-dotenv\nSMOKE_PAIR=from-dotenv\n' \
  >"$DOTENV_TASK/.env"

ROWS=()
PASSED=0
FAILED=0
record() {  # record CHECK PASS|FAIL OBSERVED
  local observed
  observed="$(printf '%s' "$3" | tr '\n\t' '  ' | tr -s ' ')"
  [ "${#observed}" -le 160 ] || observed="${observed:0:157}..."
  ROWS+=("$(printf '%-48s %-4s %s' "$1" "$2" "$observed")")
  if [ "$2" = PASS ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
}
check() {  # check CHECK CONDITION-EXIT-CODE OBSERVED
  if [ "$2" -eq 0 ]; then record "$1" PASS "$3"; else record "$1" FAIL "$3"; fi
}

# The environment the shim gives Elide: the task env only (here one host-only marker),
# NO_COLOR, a UTF-8 locale, PATH, and HOME/TMPDIR inside the task dir.
elide_env() {  # elide_env TASKDIR -> env(1) arguments
  printf '%s\n' -i "NO_COLOR=1" "LANG=C.UTF-8" "PATH=${PATH:-/usr/local/bin:/usr/bin:/bin}" \
    "HOME=$1/local" "TMPDIR=$1/tmp" "SMOKE_HOST_ONLY=host-value"
}

OUT=""; ERR=""; RC=0
run() {  # run TASKDIR ELIDE-ARGS... : runs Elide in TASKDIR; sets OUT, ERR, RC
  local dir="$1"; shift
  local envargs=()
  mapfile -t envargs < <(elide_env "$dir")
  # Not exec'd: a death by signal is then reported (into err) by the subshell, not by us.
  (cd "$dir" && timeout -k 10 "$TIMEOUT" env "${envargs[@]}" "$ELIDE" "$@"; exit $?) \
    >"$WORK/out" 2>"$WORK/err" </dev/null
  RC=$?
  OUT="$(cat "$WORK/out")"
  ERR="$(cat "$WORK/err")"
}
var() { printf '%s\n' "$OUT" | sed -n "s/^$1=//p" | head -n 1; }
has_ansi() { printf '%s%s' "$OUT" "$ERR" | grep -q $'\033\['; }

# The driver's command line: elide -Xmx<heap> <mode> --no-pretty -p <task dir>
#   [--host:allow-env | --env K=V...] [--env:dotenv=false] [flags] <script> -- [args]
HEAP="-Xmx256m"

# 1. `--version`: one bare version line on stdout, exit 0 (the fingerprint parses it).
run "$TASK" --version
line="$(printf '%s\n' "$OUT" | sed '/^[[:space:]]*$/d')"
[ "$RC" -eq 0 ] && [ "$(printf '%s\n' "$line" | wc -l)" -eq 1 ] &&
  printf '%s' "$line" | grep -Eq '^v?[0-9]+\.[0-9]+(\.[0-9]+)?(-[0-9A-Za-z.-]+)?$'
check "--version prints one version line" $? "exit $RC: ${OUT:-<no stdout>}"

# 2. `info` has the Platform/Languages lines the fingerprint reads (best effort there).
run "$TASK" info
[ "$RC" -eq 0 ] && printf '%s\n' "$OUT" | grep -q '^Platform:'
check "info has a Platform: line" $? "exit $RC: $(printf '%s\n' "$OUT" | grep -E '^(Elide v|Platform:|Languages:)' | tr '\n' ';')"

# 3. The default command line runs the script; no colour with NO_COLOR and --no-pretty.
run "$TASK" "$HEAP" run --no-pretty -p "$TASK" --host:allow-env local/probe.js --
[ "$RC" -eq 0 ] && printf '%s\n' "$OUT" | grep -qx 'smoke-ok'
check "run --no-pretty -p DIR --host:allow-env FILE --" $? "exit $RC: $(printf '%s' "$OUT" | tail -n 1) ${ERR:0:120}"
host_seen="$(var SMOKE_HOST_ONLY)"
[ "$host_seen" = host-value ]
check "--host:allow-env shows the task env" $? "SMOKE_HOST_ONLY=$host_seen"

# 4. Without --host:allow-env the guest sees none of Elide's environment.
run "$TASK" "$HEAP" run --no-pretty -p "$TASK" local/probe.js --
[ "$RC" -eq 0 ] && [ "$(var SMOKE_HOST_ONLY)" = undefined ]
check "env isolation without --host:allow-env" $? "exit $RC: SMOKE_HOST_ONLY=$(var SMOKE_HOST_ONLY)"

# 5. `--env K=V` (guest_env = "nomad"), right before the script as the driver places it.
run "$TASK" "$HEAP" run --no-pretty -p "$TASK" --env SMOKE_PAIR=pair-value local/probe.js --
[ "$RC" -eq 0 ] && [ "$(var SMOKE_PAIR)" = pair-value ] && [ "$(var SMOKE_HOST_ONLY)" = undefined ]
check "--env K=V reaches the guest" $? "exit $RC: SMOKE_PAIR=$(var SMOKE_PAIR) SMOKE_HOST_ONLY=$(var SMOKE_HOST_ONLY)"

# 6. Guest args after `--` arrive intact (JS process.argv may hold more before them).
run "$TASK" "$HEAP" run --no-pretty -p "$TASK" --host:allow-env local/probe.js -- \
  --flag -x "two words" "" input.csv
argv="$(var ARGV)"
case "$argv" in *'"--flag","-x","two words","","input.csv"]') ok=0 ;; *) ok=1 ;; esac
[ "$RC" -eq 0 ] && [ "$ok" -eq 0 ]
check "args after -- reach the guest intact" $? "exit $RC: process.argv=$argv"

# 7. Why the driver refuses some guest args: GraalVM takes them out even after `--` ...
run "$TASK" "$HEAP" run --no-pretty -p "$TASK" local/probe.js -- -Dsmoke.prop=1 -Xss2m keep
argv="$(var ARGV)"
case "$argv" in *'-Dsmoke'*|*'-Xss2m'*) ok=1 ;; *'"keep"]') ok=0 ;; *) ok=1 ;; esac
[ "$RC" -eq 0 ] && [ "$ok" -eq 0 ]
check "-D<k>=<v>, -Xss after -- never reach guest" $? "exit $RC: process.argv=$argv"
# ... and an unknown -XX: option anywhere aborts Elide before the app runs.
run "$TASK" "$HEAP" run --no-pretty -p "$TASK" local/probe.js -- -XX:+SmokeNoSuchOption
[ "$RC" -ne 0 ] && ! printf '%s\n' "$OUT" | grep -qx smoke-ok && printf '%s' "$ERR" | grep -q SmokeNoSuchOption
check "unknown -XX: after -- aborts Elide" $? "exit $RC: ${ERR:0:140}"

# 8. An uncaught guest exception exits 255 (boxed report on stderr, no colour).
run "$TASK" "$HEAP" run --no-pretty -p "$TASK" local/throw.js --
[ "$RC" -eq 255 ] && printf '%s' "$ERR" | grep -q 'smoke: uncaught guest error'
check "uncaught guest exception exits 255" $? "exit $RC: $(printf '%s' "$ERR" | grep -m1 'smoke: uncaught' || printf '%s' "${ERR:0:100}")"
! has_ansi
check "no ANSI colour with NO_COLOR + --no-pretty" $? "$(has_ansi && echo 'escape codes in the output' || echo 'no escape codes')"

# 9. SIGTERM to the Elide process: exit 143 (JVM Terminator, no guest hook).
term_check() {
  local fifo="$WORK/ready.fifo" envargs=() line="" pid rc
  mapfile -t envargs < <(elide_env "$TASK")
  mkfifo "$fifo" || { record "SIGTERM exits 143" FAIL "cannot create a FIFO"; return; }
  (cd "$TASK" && exec env "${envargs[@]}" "$ELIDE" "$HEAP" run --no-pretty -p "$TASK" \
     local/wait.js --) >"$fifo" 2>"$WORK/err" </dev/null &
  pid=$!
  exec 3<"$fifo"
  if read -r -t "$TIMEOUT" line <&3 && [ "$line" = ready ]; then
    kill -TERM "$pid" 2>/dev/null
    # Await the end of its output (EOF once Elide and its guest are gone), bounded.
    while read -r -t "$TIMEOUT" _ <&3; do :; done
    [ $? -gt 128 ] && kill -KILL "$pid" 2>/dev/null
  else
    kill -KILL "$pid" 2>/dev/null
  fi
  exec 3<&-
  wait "$pid"; rc=$?
  [ "$line" = ready ] && [ "$rc" -eq 143 ]
  check "SIGTERM exits 143" $? "ready line: ${line:-<none>}; exit $rc $(head -c 100 "$WORK/err")"
}
term_check

# 10. -Xmx caps the heap: the same guest fails under a small heap and completes under a big one.
run "$TASK" -Xmx96m run --no-pretty -p "$TASK" local/hog.js --
small_rc=$RC; small_started="$(printf '%s\n' "$OUT" | grep -cx started)"; small_held="$(printf '%s\n' "$OUT" | grep -c '^held')"
run "$TASK" -Xmx1g run --no-pretty -p "$TASK" local/hog.js --
big_rc=$RC; big_held="$(printf '%s\n' "$OUT" | grep -c '^held 256')"
[ "$small_started" -eq 1 ] && [ "$small_held" -eq 0 ] && [ "$small_rc" -ne 0 ] &&
  [ "$big_rc" -eq 0 ] && [ "$big_held" -eq 1 ]
check "-Xmx is honoured (96m fails, 1g holds 256 MiB)" $? "-Xmx96m: exit $small_rc, started=$small_started held=$small_held; -Xmx1g: exit $big_rc held=$big_held"

# 11. .env in the project root (-p) is loaded by default, and not with --env:dotenv=false.
run "$DOTENV_TASK" "$HEAP" run --no-pretty -p "$DOTENV_TASK" local/probe.js --
[ "$RC" -eq 0 ] && [ "$(var SMOKE_DOTENV)" = from-dotenv ]
check ".env in the project root is loaded" $? "exit $RC: SMOKE_DOTENV=$(var SMOKE_DOTENV)"
run "$DOTENV_TASK" "$HEAP" run --no-pretty -p "$DOTENV_TASK" --env:dotenv=false local/probe.js --
[ "$RC" -eq 0 ] && [ "$(var SMOKE_DOTENV)" = undefined ]
check "--env:dotenv=false skips .env" $? "exit $RC: SMOKE_DOTENV=$(var SMOKE_DOTENV)"

# 12. Precedence: .env over the task env (with --host:allow-env), --env over .env.
run "$DOTENV_TASK" "$HEAP" run --no-pretty -p "$DOTENV_TASK" --host:allow-env \
  --env SMOKE_PAIR=from-flag local/probe.js --
[ "$RC" -eq 0 ] && [ "$(var SMOKE_HOST_ONLY)" = from-dotenv ] && [ "$(var SMOKE_PAIR)" = from-flag ]
check "precedence: task env < .env < --env" $? "exit $RC: SMOKE_HOST_ONLY=$(var SMOKE_HOST_ONLY) SMOKE_PAIR=$(var SMOKE_PAIR)"

version="$("$ELIDE" --version 2>/dev/null | head -n 1)"
echo "Elide smoke check: $ELIDE (${version:-unknown version})"
printf '%-48s %-4s %s\n' CHECK RESULT OBSERVED
printf '%s\n' "${ROWS[@]}"
echo "$PASSED passed, $FAILED failed"
if [ "$FAILED" -ne 0 ]; then
  echo "MISMATCH: this Elide does not behave as nomad-driver-elide assumes; see docs/elide.md" >&2
  exit 1
fi
