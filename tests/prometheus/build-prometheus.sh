#!/usr/bin/env bash
# Builds a real Prometheus server and promtool from the Go module proxy into a cache and prints
# the cache directory (holding `prometheus` and `promtool`).
#
# Prometheus 3.x is served by the proxy as github.com/prometheus/prometheus v0.3MM.P (v0.316.0 is
# Prometheus 3.16.0). The candidates are tried newest first; the first one the proxy serves is
# built with `go install pkg@version` (the module has no replace directives, so its own go.mod
# applies as is). Tags: remove_all_sd drops every service-discovery plugin but the static and file
# ones (the E2E test scrapes fixed addresses), netgo avoids cgo's resolver. builtinassets is NOT
# set: the web UI's compiled assets are not in the module zip and the tests only use the HTTP API.
# Apache-2.0 licensed; the license is checked before building.
set -euo pipefail

CANDIDATES=(${PROMETHEUS_VERSIONS:-0.316.0 0.315.1 0.314.0})
CACHE_DIR="${NOMAD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nomad-driver-elide}"
mkdir -p "$CACHE_DIR"

log() { echo "build-prometheus: $*" >&2; }
built() { [ -x "$1/prometheus" ] && [ -x "$1/promtool" ] && [ -f "$1/BUILT" ]; }

for v in "${CANDIDATES[@]}"; do
  dir="$CACHE_DIR/prometheus-$v"
  if built "$dir"; then echo "$dir"; exit 0; fi
done

if ! command -v go >/dev/null 2>&1; then
  log "Go is not installed: install Go >= 1.21 (or run .ci/run, which installs it), or set PROMETHEUS_DIR"
  exit 1
fi
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
for v in "${CANDIDATES[@]}"; do
  mod="github.com/prometheus/prometheus@v$v"
  if ! info=$(go mod download -json "$mod" 2>&1) || grep -q '"Error"' <<<"$info"; then
    log "the Go module proxy does not serve $mod: $(grep -o '"Error": *"[^"]*' <<<"$info" | head -1 | cut -c11-)"
    continue
  fi
  src=$(sed -n 's/.*"Dir": *"\([^"]*\)".*/\1/p' <<<"$info")
  if ! head -5 "$src/LICENSE" | grep -q "Apache License"; then
    log "Prometheus v$v is not Apache-2.0 licensed; skipping"; continue
  fi
  # Its go.mod names the Go it needs (1.26.x for 3.16); an older local Go fetches that
  # toolchain from the module proxy by itself (GOTOOLCHAIN=auto, Go >= 1.21).
  export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
  dir="$CACHE_DIR/prometheus-$v"
  rm -rf "$dir"; mkdir -p "$dir"
  log "building Prometheus $(cat "$src/VERSION" 2>/dev/null || echo "$v") (first time only; takes several minutes)"
  start=$(date +%s)
  GOBIN="$dir" go install -trimpath -tags "netgo,remove_all_sd" \
    -ldflags "-X github.com/prometheus/common/version.Version=$(cat "$src/VERSION" 2>/dev/null || echo "$v")" \
    "github.com/prometheus/prometheus/cmd/prometheus@v$v" \
    "github.com/prometheus/prometheus/cmd/promtool@v$v" >&2
  log "built Prometheus v$v in $(( $(date +%s) - start ))s"
  "$dir/prometheus" --version >&2
  touch "$dir/BUILT"
  echo "$dir"
  exit 0
done
log "no Prometheus release could be fetched from the Go module proxy"
exit 1
