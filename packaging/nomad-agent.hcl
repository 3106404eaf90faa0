# Agent configuration for nomad-driver-elide. The .deb installs it as
# /etc/nomad.d/nomad-driver-elide.hcl (kept across upgrades once you edit it); from the tarball,
# copy it into the agent's config dir. Reference: docs/driver.md; guide: docs/operator-guide.md.
#
# Layout:
#   <plugin_dir>/nomad-driver-elide     the plugin, the only executable at this level
#                                       (.deb: /opt/nomad/data/plugins, Nomad's default
#                                       plugin_dir for data_dir = "/opt/nomad/data")
#   .../libexec/nomad-driver-elide/elide-executor   the per-task shim (.deb: /usr/libexec,
#                                       install.sh: /usr/local/libexec); found there by default
#
# The block label must equal the plugin binary's file name. Nomad >= 1.10 does not load a
# plugin binary that has no block, so keep this block even when `config` is empty.
plugin "nomad-driver-elide" {
  config {
    # enabled            = true
    # elide_binary       = "/usr/bin/elide"   # default: PATH, ~/elide/elide, /usr/bin/elide, ...
    # elide_versions     = { "1.1" = "/opt/elide-1.1/elide" }   # jobs pick by elide_version
    #                      # (every listed binary and dir above it: root's, not group/world-writable)
    # executor_binary    = "/usr/local/libexec/nomad-driver-elide/elide-executor"
    # runtime_dir        = "/run/nomad-driver-elide"   # shim sockets; keep it short
    # guest_env          = "host"    # host | nomad | none: what guest code sees of the task env
    # runtime_options    = []        # Elide runtime options before `run`, e.g. ["-XX:+PrintGC"]
    # run_flags          = []        # flags after `run` for every task
    # fingerprint_period = "30s"
    # version_timeout    = "10s"
    # pids_limit         = 0         # 0 = unlimited; else a ceiling jobs cannot raise
    # allow_no_cgroup    = false     # true: run tasks whose cgroup/limits cannot be set up
    # heap_percent       = 75        # -Xmx = this share of the task's memory limit
    # fifo_open_timeout  = "10s"
    # The task sandbox (docs/driver.md, "Sandbox"); these are the defaults:
    # allow_caps         = ["audit_write", "chown", "dac_override", "fowner", "fsetid", "kill",
    #                       "mknod", "net_bind_service", "setgid", "setpcap",
    #                       "setuid", "sys_chroot"]   # Nomad's list without setfcap
    # default_pid_mode   = "private"   # private | host
    # default_ipc_mode   = "private"   # private | host
    # allow_host_pid     = false       # let jobs set pid_mode = "host"
    # allow_host_ipc     = false       # let jobs set ipc_mode = "host"
    # fs_isolation       = "readonly"  # readonly | none (raw_exec-like file system access)
    # extra_host_paths   = []          # host paths added (read-only) to the tasks' view
    # hidden_paths       = ["/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-",
    #                       "/etc/sudoers", "/etc/sudoers.d", "/etc/ssl/private",
    #                       "/etc/nomad.d", "/etc/consul.d", "/etc/vault.d"]
    #                                  # replace it to add yours, e.g. "/etc/myapp/keys"
    # denied_host_uids   = ""          # e.g. "0" to refuse tasks running as root
    # denied_host_gids   = ""
    # absolute_script_dirs = []      # dirs whose files jobs may name as an absolute `script`
  }
}

# Bridge networking (network { mode = "bridge" }) needs the CNI plugins; Debian/Ubuntu's
# containernetworking-plugins install them in /usr/lib/cni:
# client {
#   cni_path = "/usr/lib/cni"
# }
