#!/usr/bin/env bash
# Generates the harness's Go stubs from the repository's proto/ into tests/goclient/pb/
# (not committed: regenerated whenever proto/, the pinned generators or protoc change).
#
#   tests/goclient/generate.sh        (scripts/test goclient runs it)
#
# protoc-gen-go and protoc-gen-go-grpc are the versions pinned in go.mod (`tool` lines, from
# the Go module proxy). protoc: $PROTOC if set, else the one the Rust build already uses
# (crate protoc-bin-vendored, at the version in Cargo.lock, from cargo's registry), else
# `protoc` on PATH (Debian: apt-get install protobuf-compiler).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
MODULE="nomad-driver-elide/tests/goclient"
OUT="$HERE/pb"

# Nomad's plugin protos as re-typed in proto/, and the Go package each one becomes.
declare -A PKG=(
  [plugins/shared/hclspec/hcl_spec.proto]=hclspec
  [plugins/shared/structs/proto/attribute.proto]=structs
  [plugins/shared/structs/proto/recoverable_error.proto]=structs
  [plugins/base/proto/base.proto]=base
  [plugins/drivers/proto/driver.proto]=drivers
)
FILES=(plugins/shared/hclspec/hcl_spec.proto plugins/shared/structs/proto/attribute.proto
  plugins/shared/structs/proto/recoverable_error.proto plugins/base/proto/base.proto
  plugins/drivers/proto/driver.proto)

# The protoc of protoc-bin-vendored (what common/build.rs runs) and its well-known types.
vendored_protoc() {
  local arch ver dir
  case "$(uname -m)" in x86_64) arch=x86_64 ;; aarch64|arm64) arch=aarch_64 ;; *) return 1 ;; esac
  ver="$(awk '/^name = "protoc-bin-vendored-linux-'"$arch"'"$/ {getline; gsub(/"/, "", $3); print $3}' \
    "$REPO/Cargo.lock")"
  [ -n "$ver" ] || return 1
  for dir in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"protoc-bin-vendored-linux-$arch-$ver"; do
    if [ -x "$dir/bin/protoc" ] && [ -d "$dir/include/google/protobuf" ]; then
      echo "$dir/bin/protoc $dir/include"
      return 0
    fi
  done
  return 1
}

if [ -n "${PROTOC:-}" ]; then
  protoc="$PROTOC"; include="${PROTOC_INCLUDE:-$(dirname "$(dirname "$PROTOC")")/include}"
elif found="$(vendored_protoc)"; then
  read -r protoc include <<<"$found"
elif command -v protoc >/dev/null 2>&1; then
  protoc="$(command -v protoc)"; include="${PROTOC_INCLUDE:-/usr/include}"
else
  echo "generate.sh: no protoc: build the workspace once (cargo build: it fetches protoc-bin-vendored)," \
    "set PROTOC=/path/to/protoc, or apt-get install protobuf-compiler" >&2
  exit 1
fi
[ -f "$include/google/protobuf/timestamp.proto" ] || {
  echo "generate.sh: protoc's well-known types are not in $include (set PROTOC_INCLUDE)" >&2; exit 1; }

cd "$HERE"
# Everything the output depends on; nothing is done when it has not changed.
key="$( { "$protoc" --version; go version; cat go.mod go.sum "$0";
          for f in "${FILES[@]}"; do echo "$f"; cat "$REPO/proto/$f"; done; } | sha256sum | cut -d' ' -f1)"
if [ -f "$OUT/.key" ] && [ "$(cat "$OUT/.key")" = "$key" ]; then
  echo "generate.sh: pb/ is up to date ($($protoc --version), proto/ unchanged)" >&2
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/bin/" google.golang.org/protobuf/cmd/protoc-gen-go \
  google.golang.org/grpc/cmd/protoc-gen-go-grpc
maps=()
for f in "${FILES[@]}"; do maps+=("M$f=$MODULE/pb/${PKG[$f]}"); done
go_opts="module=$MODULE,$(IFS=,; echo "${maps[*]}")"
mkdir -p "$tmp/out"
"$protoc" -I "$REPO/proto" -I "$include" \
  --plugin=protoc-gen-go="$tmp/bin/protoc-gen-go" \
  --plugin=protoc-gen-go-grpc="$tmp/bin/protoc-gen-go-grpc" \
  --go_out="$tmp/out" --go_opt="$go_opts" \
  --go-grpc_out="$tmp/out" --go-grpc_opt="$go_opts" \
  "${FILES[@]}"
rm -rf "$OUT"
mv "$tmp/out/pb" "$OUT"
echo "$key" >"$OUT/.key"
echo "generate.sh: generated pb/ from proto/ with $($protoc --version) ($protoc)," \
  "$(grep -E '^\s+google.golang.org/(protobuf|grpc/cmd/protoc-gen-go-grpc) ' go.mod | awk '{print $1"@"$2}' | paste -sd' ')" >&2
