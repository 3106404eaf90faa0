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
    die "cargo is not installed: install Rust with rustup (see https://rustup.rs); scripts/test and scripts/demo install it when it is missing"
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

# Prints the directory of a real Prometheus server and promtool (the metrics E2E test):
# $PROMETHEUS_DIR, else one built (once, cached in ~/.cache/nomad-driver-elide) by
# tests/prometheus/build-prometheus.sh.
prometheus_dir() {
  if [ -n "${PROMETHEUS_DIR:-}" ]; then
    [ -x "$PROMETHEUS_DIR/prometheus" ] && [ -x "$PROMETHEUS_DIR/promtool" ] ||
      die "PROMETHEUS_DIR=$PROMETHEUS_DIR has no prometheus and promtool"
    echo "$PROMETHEUS_DIR"; return
  fi
  bash "$REPO/tests/prometheus/build-prometheus.sh" | tail -n 1
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

# ---------------------------------------------------------------------------------------------
# Installing what is missing. scripts/test installs what the parts it runs need, scripts/demo
# what the demo needs, .ci/run everything; each install is announced before it runs.
# NDE_NO_INSTALL=1: install nothing, stop with the command to run instead.
#
# THE list: one line per tool, `name|needed by|check|install`, in install order.
#   needed by: scripts/test parts (unit standin compat conformance goclient e2e coverage),
#              `demo`, `nomad` (building a Nomad agent: only when NOMAD_BIN is unset and none
#              is cached), or `any`; `install_deps all` installs every line but those needed
#              by `coverage` alone (scripts/test --coverage installs them when it runs).
#   check:     a shell condition (no `|` in it: use a function), true when the tool is there.
#   install:   apt:<Debian packages> | pip:<PyPI packages> | fn:<function defined below>
NDE_DEPS=(
  "curl|any|command -v curl|apt:curl ca-certificates"
  "git|any|command -v git|apt:git"
  "a C toolchain (cc, for cargo)|any|command -v cc|apt:build-essential"
  "python3|any|command -v python3|apt:python3"
  "Node.js (the stand-in runs .js apps)|unit standin e2e demo|command -v node|apt:nodejs"
  "dpkg-deb (the .deb the cluster tests install)|e2e|command -v dpkg-deb|apt:dpkg"
  "CNI plugins (bridge networking tests)|e2e|[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/portmap ]|apt:containernetworking-plugins"
  "iptables (bridge networking tests)|e2e|command -v iptables|apt:iptables"
  "pytest|standin compat e2e cgroup2|python3 -c 'import pytest' 2>/dev/null|fn:install_pytest"
  "grpcio and grpcio-tools (the Nomad 2.0 compatibility test's client)|compat cgroup2|python3 -c 'import grpc, grpc_tools' 2>/dev/null|pip:grpcio grpcio-tools"
  "Go >= 1.21|conformance goclient nomad|go_ok|fn:install_go"
  "QEMU (the cgroup v2 lane's VM)|cgroup2|command -v qemu-system-x86_64|apt:qemu-system-x86"
  "a static busybox (the cgroup v2 guest's initramfs)|cgroup2|[ -x /bin/busybox ] && ! ldd /bin/busybox|apt:busybox-static"
  "Debian's package lists (the cgroup v2 lane downloads the kernel package)|cgroup2|apt-cache depends linux-image-amd64 2>/dev/null | grep -q 'linux-image-[0-9]'|fn:apt_update"
  "Rust (cargo)|any|command -v cargo >/dev/null 2>&1|fn:install_rust"
  "rustfmt and clippy (scripts/test's formatting and lint steps)|unit|cargo fmt --version >/dev/null 2>&1 && cargo clippy --version|fn:install_rust_components"
  "cargo-deb $CARGO_DEB_VERSION (packaging/release)|e2e|cargo_deb_ok|fn:need_cargo_deb"
  "llvm-tools (scripts/test --coverage)|coverage|llvm_tools_ok|fn:install_llvm_tools"
  "cargo-llvm-cov (scripts/test --coverage)|coverage|cargo llvm-cov --version|fn:install_cargo_llvm_cov"
)

GO_VERSION="${GO_VERSION:-1.23.6}"   # the go.dev tarball, only when no Go >= 1.21 can be had from apt

go_minor() { go env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p'; }
llvm_tools_ok() { rustup component list --installed 2>/dev/null | grep -q '^llvm-tools'; }
install_llvm_tools() { rustup component add llvm-tools; }
install_cargo_llvm_cov() { cargo install --locked cargo-llvm-cov; }
cargo_deb_ok() { [ "$(cargo deb --version 2>/dev/null | awk '{print $2}')" = "$CARGO_DEB_VERSION" ]; }
go_ok() { local m; m="$(go_minor)"; [ -n "$m" ] && [ "$m" -ge 21 ]; }

# Whether a Nomad agent must be built (then Go is needed): no NOMAD_BIN and none cached by
# tests/nomad/build-nomad.sh.
nomad_needs_build() {
  [ -z "${NOMAD_BIN:-}" ] || return 1
  local cache="${NOMAD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nomad-driver-elide}" b
  for b in "$cache"/nomad-1.6.*/nomad; do [ -x "$b" ] && return 1; done
  return 0
}

# Whether a Prometheus server must be built (then Go is needed): no PROMETHEUS_DIR and none
# cached by tests/prometheus/build-prometheus.sh.
prometheus_needs_build() {
  [ -z "${PROMETHEUS_DIR:-}" ] || return 1
  local cache="${NOMAD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nomad-driver-elide}" d
  for d in "$cache"/prometheus-*/; do [ -f "$d/BUILT" ] && return 1; done
  return 0
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
  die "cannot run '$*': not root and no sudo; run it as root"; fi; }

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "cannot install $*: no apt-get on this machine; install them by hand"
  if [ "$apt_updated" = 0 ]; then as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

install_rust_components() { rustup component add rustfmt clippy; }

apt_update() { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q && apt_updated=1; }

pip_install() {
  python3 -m pip --version >/dev/null 2>&1 || { say "installing pip (apt-get install python3-pip)"; apt_install python3-pip; }
  # A Debian python3 refuses system-wide pip installs (PEP 668) unless told.
  python3 -m pip install -q "$@" 2>/dev/null || python3 -m pip install -q --break-system-packages "$@"
}

install_pytest() {
  if [ "$(command -v python3)" = /usr/bin/python3 ]; then apt_install python3-pytest; else pip_install pytest; fi
}

install_go() {
  if ! command -v go >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    say "installing Go: apt-get install golang-go"
    apt_install golang-go || true
  fi
  go_ok && return 0
  local arch
  case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64|arm64) arch=arm64 ;;
    *) die "no Go >= 1.21 and no Go download for $(uname -m): install Go by hand" ;; esac
  say "installing Go $GO_VERSION into /usr/local/go (the go.dev tarball: the apt package is missing or older than 1.21)"
  curl -fsSL "https://go.dev/dl/go${GO_VERSION}.linux-${arch}.tar.gz" -o /tmp/go.tgz
  as_root rm -rf /usr/local/go && as_root tar -C /usr/local -xzf /tmp/go.tgz && rm -f /tmp/go.tgz
  export PATH="/usr/local/go/bin:$PATH"
}

install_rust() {
  curl --proto '=https' --tlsv1.2 -fsSL https://sh.rustup.rs | sh -s -- -y --profile minimal
  export PATH="$HOME/.cargo/bin:$PATH"
}

# install_deps PART...: installs, in list order, what the named parts need and is missing.
install_deps() {
  local want=" $* " line name needs check how part needed missing=() apt_pkgs=()
  # The E2E suite and the demo need Go only to build a Nomad agent.
  if [[ "$want" == *" e2e "* || "$want" == *" demo "* || "$want" == *" cgroup2 "* ]] && nomad_needs_build; then want+="nomad "; fi
  # ... and a Prometheus server for the metrics test.
  if [[ "$want" == *" e2e "* ]] && prometheus_needs_build; then want+="nomad "; fi
  for line in "${NDE_DEPS[@]}"; do
    IFS='|' read -r name needs check how <<<"$line"
    needed=0
    if { [[ "$want" == *" all "* ]] && [ "$needs" != coverage ]; } || [ "$needs" = any ]; then needed=1; else
      for part in $needs; do [[ "$want" == *" $part "* ]] && needed=1; done
    fi
    [ "$needed" = 1 ] || continue
    eval "$check" >/dev/null 2>&1 && continue
    missing+=("$line")
    case "$how" in apt:*) apt_pkgs+=(${how#apt:}) ;; esac
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  if [ -n "${NDE_NO_INSTALL:-}" ]; then
    for line in "${missing[@]}"; do
      IFS='|' read -r name needs check how <<<"$line"
      printf 'missing: %s (install: %s)\n' "$name" "${how/fn:/scripts/lib.sh }" >&2
    done
    die "missing tools (listed above) and NDE_NO_INSTALL is set: install them, or unset NDE_NO_INSTALL to let the script do it"
  fi
  if [ ${#apt_pkgs[@]} -gt 0 ]; then
    say "installing with apt-get: ${apt_pkgs[*]} (missing: $(for line in "${missing[@]}"; do
      IFS='|' read -r name needs check how <<<"$line"; [[ "$how" == apt:* ]] && printf '%s; ' "$name"; done | sed 's/; $//'))"
    apt_install "${apt_pkgs[@]}" || die "apt-get install ${apt_pkgs[*]} failed: install them by hand"
  fi
  for line in "${missing[@]}"; do
    IFS='|' read -r name needs check how <<<"$line"
    case "$how" in
      apt:*) ;;
      pip:*) say "installing $name: python3 -m pip install ${how#pip:}"
             pip_install ${how#pip:} || die "python3 -m pip install ${how#pip:} failed: install $name by hand" ;;
      fn:*) say "installing $name (${how#fn:})"
            "${how#fn:}" || die "installing $name failed: install it by hand" ;;
    esac
    eval "$check" >/dev/null 2>&1 || die "$name is still missing after installing it; install it by hand"
  done
}

# coverage_table LCOV MIN: lines covered per crate, by path prefix (driver/, executor/,
# common/ of the repository: right wherever files move inside a crate); fails when a crate
# is below MIN %.
coverage_table() {
  awk -v repo="$REPO/" -v min="$2" '
    /^SF:/ { f = substr($0, 4); if (index(f, repo) == 1) f = substr(f, length(repo) + 1)
             split(f, parts, "/"); crate = parts[1] }
    /^LF:/ { total[crate] += substr($0, 4) }
    /^LH:/ { hit[crate] += substr($0, 4) }
    END {
      bad = 0
      printf "%-10s %8s %8s %8s\n", "crate", "lines", "covered", "%"
      n = split("driver executor common", crates, " ")
      for (i = 1; i <= n; i++) {
        c = crates[i]; pct = total[c] ? 100 * hit[c] / total[c] : 0
        printf "%-10s %8d %8d %7.1f%%%s\n", c "/", total[c], hit[c], pct, pct < min ? "  < " min " %" : ""
        if (pct < min) bad = 1
      }
      exit bad
    }' "$1"
}

# One line with the versions of the tools (CI logs).
tools_summary() {
  echo "tools: $(cargo --version 2>&1) | $(cargo deb --version 2>&1) | $(go version 2>&1) | $(python3 --version 2>&1)" \
    "pytest $(python3 -c 'import pytest; print(pytest.__version__)' 2>&1)" \
    "grpcio $(python3 -c 'import grpc; print(grpc.__version__)' 2>&1) | node $(node --version 2>&1)"
}
