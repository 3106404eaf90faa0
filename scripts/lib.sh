# Shared helpers for scripts/test, scripts/demo and .ci/run (source it; bash only).

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
[ -t 2 ] || say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Put ~/.cargo/bin and /usr/local/go/bin on PATH when they exist (fresh rustup/Go installs).
for d in "$HOME/.cargo/bin" /usr/local/go/bin; do
  case ":$PATH:" in *":$d:"*) ;; *) [ -d "$d" ] && PATH="$d:$PATH" ;; esac
done
export PATH

need_cargo() {
  command -v cargo >/dev/null 2>&1 ||
    die "cargo is not installed: install Rust with rustup (see https://rustup.rs), or run .ci/run, which installs everything"
}

need_pytest() {
  python3 -c 'import pytest' 2>/dev/null ||
    die "pytest is not installed for $(command -v python3 || echo python3): apt-get install python3-pytest, or python3 -m pip install pytest (.ci/run does this)"
}

need_grpc() {
  python3 -c 'import grpc, grpc_tools' 2>/dev/null ||
    die "grpcio and grpcio-tools are not installed for $(command -v python3 || echo python3): python3 -m pip install grpcio grpcio-tools (.ci/run does this)"
}

need_go() {
  command -v go >/dev/null 2>&1 ||
    die "Go is not installed: the driver conformance suite (tests/conformance) is Nomad's own Go test code; install Go >= 1.21 (apt-get install golang-go, or the tarball from go.dev), or run .ci/run, which installs it"
}

# Prints the path of a real Nomad agent: $NOMAD_BIN, else one built (once, cached in
# ~/.cache/nomad-driver-elide) by tests/nomad/build-nomad.sh.
nomad_bin() {
  if [ -n "${NOMAD_BIN:-}" ]; then
    [ -x "$NOMAD_BIN" ] || die "NOMAD_BIN=$NOMAD_BIN is not an executable file"
    echo "$NOMAD_BIN"; return
  fi
  bash "$REPO/tests/nomad/build-nomad.sh" | tail -n 1
}

# Elapsed seconds since a `date +%s` value.
since() { echo $(( $(date +%s) - $1 )); }

# cargo-deb (builds the .deb of packaging/release), pinned; installed with `cargo install`
# when missing. Built without its C LZMA library: the package is gzip-compressed.
CARGO_DEB_VERSION="3.7.0"
need_cargo_deb() {
  local have
  have="$(cargo deb --version 2>/dev/null | awk '{print $2}')"
  [ "$have" = "$CARGO_DEB_VERSION" ] && return 0
  say "installing cargo-deb $CARGO_DEB_VERSION (cargo install; a few minutes, once)"
  cargo install --locked --version "$CARGO_DEB_VERSION" --no-default-features --features gzip cargo-deb ||
    die "cannot install cargo-deb: check access to crates.io, or install it by hand: cargo install cargo-deb"
}

# The shim ships statically linked (docs/performance.md): against musl when Rust's musl target
# is installed or rustup can add it, else against glibc (larger; a warning says so).
shim_target() { echo "${NDE_SHIM_TARGET:-$(uname -m)-unknown-linux-musl}"; }
host_target() { rustc -vV | sed -n 's/^host: //p'; }

# Succeeds when the musl target is there (adding it with rustup when possible).
have_shim_target() {
  local t; t="$(shim_target)"
  [ -d "$(rustc --print sysroot)/lib/rustlib/$t/lib" ] && return 0
  command -v rustup >/dev/null 2>&1 || return 1
  say "rustup target add $t (the static elide-executor; once)"
  rustup target add "$t" >&2
}

need_shim_target() {
  have_shim_target || say "warning: Rust's $(shim_target) target cannot be installed here: the shim will be linked statically against glibc instead (larger, see docs/performance.md)"
}

# Builds the release binaries as they ship: the plugin (cargo's target/release) and the shim
# (profile `shim`, static; copied to target/release/shim/elide-executor). Extra arguments go
# to both cargo builds (e.g. --locked).
build_release() {
  need_cargo
  local target="${CARGO_TARGET_DIR:-$REPO/target}" t
  cargo build --release --workspace "$@" || return
  if have_shim_target; then
    t="$(shim_target)"
    cargo build --profile shim --target "$t" -p elide-executor --bin elide-executor --features shipped "$@" || return
  else
    t="$(host_target)"
    say "warning: Rust's $(shim_target) target is not available: linking the shim statically against glibc ($t)"
    # An explicit --target keeps these flags off build scripts and proc macros.
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
      cargo build --profile shim --target "$t" -p elide-executor --bin elide-executor --features shipped "$@" || return
  fi
  install -D -m 0755 "$target/$t/shim/elide-executor" "$target/release/shim/elide-executor"
}
