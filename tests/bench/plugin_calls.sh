#!/usr/bin/env bash
# The plugin's share of a Nomad agent's restore, per task (issue #21; docs/performance.md,
# "At scale"): Nomad 1.6 restores allocations one after another and makes three blocking
# calls to the driver per task (TaskConfigSchema, Capabilities, RecoverTask). This times
# those calls as Nomad's own client code makes them, and one gRPC round trip to the plugin
# against the same call to a Go gRPC server in another process (what any Go driver plugin
# answers with), and prints the ratio. Go benchmarks in tests/conformance
# (calls_bench_test.go); release binaries from scripts/build-release unless NDE_E2E_PLUGIN
# and NDE_E2E_EXECUTOR name them. Usage: tests/bench/plugin_calls.sh [CALLS per figure]
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
calls="${1:-3000}"
plugin="${NDE_E2E_PLUGIN:-}" executor="${NDE_E2E_EXECUTOR:-}"
if [ -z "$plugin" ] || [ -z "$executor" ]; then
  "$REPO/scripts/build-release" >/dev/null
  plugin="$REPO/target/release/nomad-driver-elide"
  executor="$REPO/target/release/shim/elide-executor"
fi
out="$(env -C "$REPO/tests/conformance" GOFLAGS="-buildvcs=false" NDE_PLUGIN="$plugin" \
  NDE_EXECUTOR="$executor" NDE_ELIDE="$REPO/tests/elide-standin/elide" \
  go test -count=1 -run '^$' -bench . -benchtime "${calls}x" .)"
echo "$out" | grep -E '^Benchmark' || { echo "$out"; exit 1; }
echo "$out" | awk '
  /^Benchmark/ { for (i = 1; i < NF; i++) if ($(i+1) == "ns/op") ns[$1] = $i }
  END {
    for (k in ns) {
      if (k ~ /RestoreCalls/) restore = ns[k]
      if (k ~ /RoundTrip\/plugin/) plugin = ns[k]
      if (k ~ /RoundTrip\/go-server/) goserver = ns[k]
      if (k ~ /SchemaConvert/) convert = ns[k]
    }
    if (!restore || !plugin || !goserver || !convert) { print "missing figures"; exit 1 }
    printf "\nper task in a restore: TaskConfigSchema + Convert + Capabilities %.0f us (of which Nomad'"'"'s Convert of the schema %.0f us), plus RecoverTask ~ one round trip\n", restore / 1000, convert / 1000
    printf "one gRPC round trip: plugin %.0f us, a Go gRPC server in another process %.0f us: plugin/Go %.2fx\n", plugin / 1000, goserver / 1000, plugin / goserver
    printf "at 1,000 tasks the restore waits about %.2f s for the plugin (%.2f s for a Go plugin at the same call count)\n", (restore + plugin) / 1e6, (restore - plugin * 2 + goserver * 3) / 1e6
  }'
