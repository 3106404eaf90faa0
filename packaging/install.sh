#!/usr/bin/env bash
# Installs nomad-driver-elide on a Nomad client from the release tarball (run it from the
# unpacked directory) or from a source tree after `scripts/build-release`. The .deb does the
# same for Debian/Ubuntu (docs/operator-guide.md).
#   install.sh [PLUGIN_DIR] [LIBEXEC_DIR]
# Defaults: /opt/nomad/data/plugins and /usr/local/libexec/nomad-driver-elide.
# Files are replaced by rename, never rewritten in place: shims that are running keep their
# binary (an in-place upgrade, see "Upgrading" in the operator guide).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
plugin_dir=${1:-/opt/nomad/data/plugins}
libexec=${2:-/usr/local/libexec/nomad-driver-elide}
if [ -x "$here/nomad-driver-elide" ] && [ -x "$here/elide-executor" ]; then
  bin="$here" shim="$here"                       # the release tarball
else
  bin="$(cd "$here/.." && pwd)/target/release"   # a source tree (the static shim in shim/)
  shim="$bin/shim"
fi
for f in "$bin/nomad-driver-elide" "$shim/elide-executor"; do
  [ -x "$f" ] || { echo "$f is missing: run 'scripts/build-release' first (or use the release tarball)" >&2; exit 1; }
done
install -d -m 0755 "$plugin_dir" "$libexec"
# The shim never goes into the top level of plugin_dir: Nomad launches every executable there
# as a plugin, and one that fails the plugin handshake can keep the agent from starting.
put() {  # put SRC DEST: copy next to DEST, then rename over it (atomic, running copies unharmed)
  install -m 0755 "$1" "$2.new.$$" && mv -f "$2.new.$$" "$2"
}
put "$bin/nomad-driver-elide" "$plugin_dir/nomad-driver-elide"
put "$shim/elide-executor" "$libexec/elide-executor"
ln -sf "$libexec/elide-executor" /usr/local/bin/elide-executor 2>/dev/null || true
echo "installed: $plugin_dir/nomad-driver-elide, $libexec/elide-executor ($("$libexec/elide-executor" --version))"
echo "next: the plugin block (nomad-agent.hcl) in the agent config, KillMode=process for the agent"
echo "(nomad-driver-elide.conf as a systemd drop-in), then restart the agent"
