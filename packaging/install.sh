#!/usr/bin/env bash
# Installs a built nomad-driver-elide into a Nomad client.
#   packaging/install.sh [PLUGIN_DIR] [LIBEXEC_DIR]
# Defaults: /opt/nomad/data/plugins and /usr/local/libexec/nomad-driver-elide.
# Build first with `cargo build --release`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
plugin_dir=${1:-/opt/nomad/data/plugins}
libexec=${2:-/usr/local/libexec/nomad-driver-elide}
for b in nomad-driver-elide elide-executor; do
  [ -x "$here/target/release/$b" ] || { echo "target/release/$b is missing: run 'cargo build --release' first" >&2; exit 1; }
done
install -d -m 0755 "$plugin_dir" "$libexec"
# The shim never goes into the top level of plugin_dir: Nomad launches every executable there
# as a plugin, and one that fails the plugin handshake can keep the agent from starting.
install -m 0755 "$here/target/release/nomad-driver-elide" "$plugin_dir/nomad-driver-elide"
install -m 0755 "$here/target/release/elide-executor" "$libexec/elide-executor"
ln -sf "$libexec/elide-executor" /usr/local/bin/elide-executor 2>/dev/null || true
echo "installed: $plugin_dir/nomad-driver-elide, $libexec/elide-executor"
echo "add packaging/nomad-agent.hcl's plugin block to the agent config and restart the agent"
