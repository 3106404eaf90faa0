# Agent configuration for nomad-driver-elide (merge into your Nomad client config).
#
# Layout (see install.sh):
#   <plugin_dir>/nomad-driver-elide            the plugin (the only executable at this level)
#   /usr/local/libexec/nomad-driver-elide/elide-executor   the per-task shim
#
# The block label must equal the plugin binary's file name. Nomad >= 1.10 does not load a
# plugin binary that has no block, so keep this block even when `config` is empty.
plugin "nomad-driver-elide" {
  config {
    # enabled            = true
    # elide_binary       = "/usr/bin/elide"   # default: PATH, ~/elide/elide, /usr/bin/elide, ...
    # executor_binary    = "/usr/local/libexec/nomad-driver-elide/elide-executor"
    # runtime_dir        = "/run/nomad-driver-elide"   # shim sockets; keep it short
    # guest_env          = "host"    # host | nomad | none: what guest code sees of the task env
    # runtime_options    = []        # Elide runtime options before `run`, e.g. ["-XX:+PrintGC"]
    # run_flags          = []        # flags after `run` for every task
    # fingerprint_period = "30s"
    # version_timeout    = "10s"
    # pids_limit         = 0         # 0 = unlimited
    # heap_percent       = 75        # -Xmx = this share of the task's memory limit
    # fifo_open_timeout  = "10s"
    # absolute_script_dirs = []      # dirs whose files jobs may name as an absolute `script`
  }
}
