#!/usr/bin/env bash
# Builds a real Nomad agent from the Go module proxy into a cache and prints its path.
#
# Only MPL-2.0 releases are ever built: v1.6.5 is the last one (v1.6.6+ and 1.7+ are BUSL-1.1).
# The proxy refuses some of them ("403 ... This module version is not available"), so the
# candidates are tried newest first and the first one the proxy serves is built. Never add a
# version above v1.6.5 to this list.
#
# Nomad is built as a dependency of a tiny module, so its own `replace` lines do not apply and
# are re-declared here. Nomad points `nomad/api` at its own ./api folder, which the module zip
# does not contain (api is a module of its own), so it is pinned to the pseudo-version of the
# release's own commit. A release is only built when the proxy serves both.
set -euo pipefail

CANDIDATES=(${NOMAD_VERSIONS:-1.6.5 1.6.1})
# The nomad/api pseudo-version at each release's tagged commit.
api_version_for() {
  case "$1" in
    1.6.5) echo "v0.0.0-20231213151423-a7cfff372cd5" ;;
    1.6.1) echo "v0.0.0-20230721134942-515895c7690c" ;;
    *) return 1 ;;
  esac
}
CACHE_DIR="${NOMAD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nomad-driver-elide}"
mkdir -p "$CACHE_DIR"

log() { echo "build-nomad: $*" >&2; }

for v in "${CANDIDATES[@]}"; do
  case "$v" in 1.6.[0-5]) ;; *) log "refusing Nomad $v: only MPL-2.0 releases 1.6.0-1.6.5 may be built"; exit 2 ;; esac
  bin="$CACHE_DIR/nomad-$v/nomad"
  if [ -x "$bin" ] && "$bin" version 2>/dev/null | grep -q "Nomad v$v"; then
    echo "$bin"; exit 0
  fi
done

if ! command -v go >/dev/null 2>&1; then
  log "Go is not installed: install Go >= 1.21 (or run .ci/run, which installs it), or set NOMAD_BIN"
  exit 1
fi
gominor=$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
if [ "${gominor:-0}" -lt 21 ]; then
  log "$(go env GOVERSION) is too old to build Nomad 1.6: install Go >= 1.21 (or run .ci/run)"
  exit 1
fi
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED="${CGO_ENABLED:-1}"
for v in "${CANDIDATES[@]}"; do
  if ! info=$(go mod download -json "github.com/hashicorp/nomad@v$v" 2>&1) || grep -q '"Error"' <<<"$info"; then
    log "the Go module proxy does not serve Nomad v$v: $(grep -o '"Error": *"[^"]*' <<<"$info" | head -1 | cut -c11-)"
    continue
  fi
  api=$(api_version_for "$v") || { log "no nomad/api pin known for v$v"; continue; }
  if ! apiinfo=$(go mod download -json "github.com/hashicorp/nomad/api@$api" 2>&1) || grep -q '"Error"' <<<"$apiinfo"; then
    log "the Go module proxy does not serve nomad/api@$api for Nomad v$v: $(grep -o '"Error": *"[^"]*' <<<"$apiinfo" | head -1 | cut -c11-)"
    continue
  fi
  src=$(sed -n 's/.*"Dir": *"\([^"]*\)".*/\1/p' <<<"$info")
  if ! head -5 "$src/LICENSE" | grep -q "Mozilla Public License"; then
    log "Nomad v$v is not MPL-2.0 licensed; skipping"; continue
  fi
  work="$CACHE_DIR/build-$v"
  rm -rf "$work"; mkdir -p "$work"
  # Re-declare Nomad's own replace directives (they do not apply to a dependency).
  cat >"$work/go.mod" <<MOD
module nomadbuild

go 1.21

require github.com/hashicorp/nomad v$v

replace (
	github.com/Microsoft/go-winio => github.com/endocrimes/go-winio v0.4.13-0.20190628114223-fb47a8b41948
	github.com/hashicorp/hcl => github.com/hashicorp/hcl v1.0.1-0.20201016140508-a07e7d50bbee
	github.com/armon/go-metrics => github.com/armon/go-metrics v0.0.0-20230509193637-d9ca9af9f1f9
	github.com/hashicorp/nomad/api => github.com/hashicorp/nomad/api $api
)
MOD
  cat >"$work/tools.go" <<'GO'
//go:build tools

package nomadbuild

import _ "github.com/hashicorp/nomad"
GO
  log "building Nomad v$v (first time only; takes a few minutes)"
  start=$(date +%s)
  (
    cd "$work"
    go mod tidy -e >/dev/null 2>&1 || true
    # Nomad 1.6 predates Go 1.23's linkname restrictions: -checklinkname=0 is Go's escape
    # hatch. Older linkers do not know the flag (and do not need it).
    ldflags=""
    gominor=$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
    if [ "${gominor:-0}" -ge 23 ]; then ldflags="-checklinkname=0"; fi
    go build -tags "ui" -trimpath -ldflags "$ldflags" -o "$CACHE_DIR/nomad-$v/nomad" github.com/hashicorp/nomad
  ) >&2
  log "built Nomad v$v in $(( $(date +%s) - start ))s"
  "$CACHE_DIR/nomad-$v/nomad" version >&2
  echo "$CACHE_DIR/nomad-$v/nomad"
  exit 0
done
log "no MPL-2.0 Nomad release could be fetched from the Go module proxy"
exit 1
