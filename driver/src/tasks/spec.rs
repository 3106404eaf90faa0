//! Nomad's task config + the job's `config {}` + the plugin config → the `TaskSpec` the shim
//! runs. Pure: no file system, no processes; what it must know about the node (the resolved
//! Elide binary, the script path, whether `<task dir>/tmp` exists) comes in [`SpecInput`].
//! New task options land here (and in `command` when they become Elide flags).

use super::command;
use crate::config::{LogCollection, PluginConfig, TaskConfig};
use common::dns::DnsSpec;
use common::error::FieldError;
use common::hosts::HostsSpec;
use common::paths::{self, PathError};
use common::proto::drivers::network_isolation_spec::NetworkIsolationMode;
use common::proto::drivers::{DnsConfig, NetworkIsolationSpec, Resources, TaskConfig as NomadTask};
use common::sandbox::{self, DeviceSpec, FsIsolation, NamespaceMode, SandboxSpec, VolumeSpec};
use common::spec::{LogFilesSpec, ResourceSpec, TaskSpec, DEFAULT_LINGER, TASK_SPEC_VERSION};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct SpecInput<'a> {
    pub plugin: &'a PluginConfig,
    /// The job's `config {}` block.
    pub config: &'a TaskConfig,
    /// What Nomad sent in StartTask.
    pub task: &'a NomadTask,
    /// The Elide binary, resolved.
    pub elide: &'a Path,
    /// The script as Elide gets it (`./<path>` inside the task dir; see `script`).
    pub script: &'a str,
    pub task_tmp_exists: bool,
    /// Elide's install dir (the real directory of the binary, with its `resources/`): kept
    /// visible in the sandbox even below a hidden path.
    pub elide_home: &'a Path,
    /// Where the host's `/etc/resolv.conf` really is when it is a symlink (systemd-resolved's
    /// `/run/systemd/resolve/…`, resolvconf's `/run/resolvconf/…`): kept visible too, or a
    /// hidden `/run` would take DNS away.
    pub resolv_conf: Option<&'a Path>,
    /// The operator's `absolute_script_dirs` entry holding the script, when it is not in the
    /// task dir: kept visible (read-only) too, or the private `/tmp` or a hidden path could
    /// take the script away from the runtime.
    pub script_dir: Option<&'a Path>,
    /// The host's resolv.conf, parsed: the lists a job's `dns {}` block leaves empty come
    /// from it (as in Nomad's exec). Only read when Nomad sends a DNS config.
    pub host_dns: Option<&'a DnsSpec>,
}

/// Why a task cannot be turned into a spec; every case is the job's or the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("config.cap_add: {0}")]
    Capabilities(#[from] common::capabilities::NotAllowed),
    #[error("{0}")]
    Sandbox(String),
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("config.{field} = \"host\" is not allowed on this node: the task would share the host's {what} namespace ({risk}); the operator must set {option} = true in the plugin config to allow it; remove {field} or set it to \"private\"")]
    HostNamespace {
        field: &'static str,
        what: &'static str,
        risk: &'static str,
        option: &'static str,
    },
    #[error("config.pids_limit = {job} would lift the plugin's pids_limit = {plugin} (the operator's ceiling){}; set it between 1 and {plugin}, or leave it out", if *job == 0 { " with no limit at all" } else { "" })]
    PidsOverCeiling { job: u64, plugin: u64 },
    #[error("config.log_max_files × config.log_max_file_size = {files} × {size} MiB = {total} MiB of log files per stream, more than the plugin allows ({plugin_files} × {plugin_size} MiB = {plugin_total} MiB, the operator's ceiling, kept below the allocations' ephemeral_disk); lower log_max_files or log_max_file_size")]
    LogsOverCeiling {
        files: u64,
        size: u64,
        total: u64,
        plugin_files: u64,
        plugin_size: u64,
        plugin_total: u64,
    },
    #[error("user {user:?} is not a valid user name: {why}; use a user name (letters, digits, '.', '_', '-', not starting with '-') or a numeric uid in the task's user")]
    BadUser { user: String, why: &'static str },
    #[error("elide_opts.memory_limit ({heap} MiB) is more than the task's memory limit ({limit} MiB): the runtime would be OOM-killed once its heap grows; lower memory_limit or raise the task's resources.memory (or memory_max)")]
    HeapOverLimit { heap: u64, limit: u64 },
}

/// The task dir: `<alloc dir>/<task name>`.
pub fn task_dir(task: &NomadTask) -> PathBuf {
    Path::new(&task.alloc_dir).join(&task.name)
}

pub fn build_spec(i: &SpecInput<'_>) -> Result<TaskSpec, BuildError> {
    let task = i.task;
    let alloc_dir = PathBuf::from(&task.alloc_dir);
    let task_dir = task_dir(task);
    let nomad_env: BTreeMap<String, String> = task.env.clone().into_iter().collect();
    let pids_limit = pids_limit(i.plugin, i.config)?;
    check_log_sizes(i.plugin, i.config)?;
    check_user(&task.user)?;
    let mut resources = resources_of(task.resources.as_ref(), pids_limit);
    resources.allow_no_cgroup = i.plugin.allow_no_cgroup;
    check_heap(i.config, &resources)?;
    let argv = command::argv(&command::CommandInput {
        elide: i.elide,
        plugin: i.plugin,
        task: i.config,
        nomad_env: &nomad_env,
        script: i.script,
        task_hard_limit_mb: resources.memory_max_mb,
        task_dir: &task_dir,
    });
    let env = command::environment(
        &nomad_env,
        i.config,
        &task_dir,
        &alloc_dir,
        i.task_tmp_exists,
    );
    let socket_path = paths::socket_path(&i.plugin.runtime_dir, &task.id)?;
    let state_dir = paths::state_dir(&alloc_dir, &task.id);
    let netns_path = task
        .network_isolation_spec
        .as_ref()
        .filter(|n| !n.path.is_empty())
        .map(|n| PathBuf::from(&n.path));
    Ok(TaskSpec {
        version: TASK_SPEC_VERSION,
        task_id: task.id.clone(),
        alloc_id: task.alloc_id.clone(),
        job_id: task.job_id.clone(),
        task_group: task.task_group_name.clone(),
        task_name: task.name.clone(),
        namespace: task.namespace.clone(),
        argv,
        env,
        cwd: task_dir,
        stdout_path: log_sink(&task.stdout_path),
        stderr_path: log_sink(&task.stderr_path),
        log_files: log_files(i.plugin, i.config, task),
        fifo_open_timeout_ms: common::duration::millis(i.plugin.fifo_open_timeout),
        user: task.user.clone(),
        socket_path,
        state_path: state_dir.join(paths::STATE_FILE),
        netns_path,
        resources,
        linger_after_exit_secs: DEFAULT_LINGER.as_secs(),
        sandbox: Some(sandbox_of(i)?),
    })
}

/// The sandbox (docs/driver.md, "Sandbox"): exec's capability rules, the PID/IPC modes, and
/// the file system view: a new root holding only the allow-list, read-only (the system's
/// programs, libraries and `/etc`: `DEFAULT_HOST_PATHS`; Elide's home, resolv.conf's target,
/// the allowed dir of an absolute script and the operator's `extra_host_paths`), and the task
/// dir and the alloc's `alloc/` writable at their host paths; hidden wherever that view would
/// show them: the allocations root (other allocations, this alloc's other tasks and the
/// shims' state in `<alloc>/.elide`), Nomad's data dir when the alloc dir sits in its default
/// place (`<data_dir>/alloc/<id>`: the client state DB), the plugin's runtime dir (shim
/// sockets), the task's `private/` dir, and the operator's `hidden_paths` (by default the
/// credential stores of `/etc`).
pub fn sandbox_of(i: &SpecInput<'_>) -> Result<SandboxSpec, BuildError> {
    let (plugin, config, task) = (i.plugin, i.config, i.task);
    let (pid_mode, ipc_mode) = namespace_modes(plugin, config)?;
    let capabilities =
        common::capabilities::calculate(&plugin.allow_caps, &config.cap_add, &config.cap_drop)?;
    let alloc_dir = PathBuf::from(&task.alloc_dir);
    let task_dir = task_dir(task);
    let allocs_root = alloc_dir.parent().filter(|p| p.parent().is_some());
    let data_dir = allocs_root
        .filter(|r| r.file_name().is_some_and(|n| n == "alloc"))
        .and_then(Path::parent)
        .filter(|p| p.parent().is_some());
    let mut hidden_paths: Vec<PathBuf> = [allocs_root, data_dir]
        .into_iter()
        .flatten()
        .map(Path::to_path_buf)
        .collect();
    hidden_paths.push(plugin.runtime_dir.clone());
    hidden_paths.push(task_dir.join("private"));
    // Other jobs' models: a task sees only its own, bound at local/models/<name>, even if
    // an extra_host_paths entry would show the cache dir.
    hidden_paths.push(plugin.model_cache_dir.clone());
    hidden_paths.extend(plugin.hidden_paths.iter().cloned());
    let volumes = task
        .mounts
        .iter()
        .map(|m| {
            let dest = &m.task_path;
            if !matches!(m.propagation_mode.as_str(), "" | "private") {
                return Err(BuildError::Sandbox(format!(
                    "volume_mount at {dest:?}: propagation_mode {:?} is not supported by the elide driver (a task cannot mount anything); use \"private\"",
                    m.propagation_mode
                )));
            }
            sandbox::relative_task_path(dest)
                .map_err(|e| BuildError::Sandbox(format!("volume_mount destination {e}")))?;
            if !Path::new(&m.host_path).is_absolute() {
                return Err(BuildError::Sandbox(format!(
                    "volume_mount at {dest:?}: the host path {:?} is not absolute; check the client's host_volume",
                    m.host_path
                )));
            }
            Ok(VolumeSpec {
                host_path: PathBuf::from(&m.host_path),
                task_path: dest.clone(),
                read_only: m.readonly,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let devices = task
        .devices
        .iter()
        .map(|d| {
            let device = DeviceSpec {
                host_path: PathBuf::from(&d.host_path),
                task_path: PathBuf::from(if d.task_path.is_empty() {
                    &d.host_path
                } else {
                    &d.task_path
                }),
                permissions: d.cgroup_permissions.clone(),
            };
            if plugin.fs_isolation == FsIsolation::None && device.task_path != device.host_path {
                return Err(BuildError::Sandbox(format!(
                    "device {} cannot appear at {} with fs_isolation = \"none\" (the task sees the host's /dev); use the readonly file system isolation",
                    d.host_path, d.task_path
                )));
            }
            Ok(device)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let spec = SandboxSpec {
        capabilities,
        pid_mode,
        ipc_mode,
        fs_isolation: plugin.fs_isolation,
        writable_paths: vec![task_dir, alloc_dir.join("alloc")],
        readable_paths: sandbox::DEFAULT_HOST_PATHS
            .iter()
            .map(PathBuf::from)
            .chain(
                [Some(i.elide_home), i.resolv_conf, i.script_dir]
                    .into_iter()
                    .flatten()
                    .map(Path::to_path_buf),
            )
            .chain(plugin.extra_host_paths.iter().cloned())
            .collect(),
        hidden_paths,
        volumes,
        devices,
        denied_uids: plugin.denied_host_uids.clone(),
        denied_gids: plugin.denied_host_gids.clone(),
        dns: dns_of(task.dns.as_ref(), plugin.fs_isolation, i.host_dns)?,
        hosts: hosts_of(task.network_isolation_spec.as_ref(), plugin.fs_isolation)?,
        user_capabilities: common::capabilities::for_non_root(&config.cap_add),
        seccomp: plugin.seccomp.as_ref().map(|f| {
            f.for_host_pid(
                !config
                    .pid_mode
                    .unwrap_or(plugin.default_pid_mode)
                    .is_private(),
            )
            .clone()
        }),
    };
    spec.validate()?;
    Ok(spec)
}

/// The task's PID and IPC modes: the job's, else the plugin's defaults. A job's `"host"`
/// needs the operator's consent (`allow_host_pid` / `allow_host_ipc`, or a host default):
/// a task in the host's PID namespace reads other tasks' `/proc/<pid>/environ` and
/// `/proc/<pid>/root`, and one in the host's IPC namespace their SysV shared memory and
/// POSIX message queues.
pub fn namespace_modes(
    plugin: &PluginConfig,
    config: &TaskConfig,
) -> Result<(NamespaceMode, NamespaceMode), BuildError> {
    if config.pid_mode == Some(NamespaceMode::Host) && !plugin.host_pid_allowed() {
        return Err(BuildError::HostNamespace {
            field: "pid_mode",
            what: "PID",
            risk: "it could read other tasks' environment and files through /proc and signal or trace host processes",
            option: "allow_host_pid",
        });
    }
    if config.ipc_mode == Some(NamespaceMode::Host) && !plugin.host_ipc_allowed() {
        return Err(BuildError::HostNamespace {
            field: "ipc_mode",
            what: "IPC",
            risk: "it could read and write the host's and other tasks' SysV shared memory, semaphores and POSIX message queues",
            option: "allow_host_ipc",
        });
    }
    Ok((
        config.pid_mode.unwrap_or(plugin.default_pid_mode),
        config.ipc_mode.unwrap_or(plugin.default_ipc_mode),
    ))
}

/// The task's pids limit: the job's, else the plugin's. The plugin's (when set) is a
/// ceiling: a job may lower it, never raise or lift it (0 = unlimited).
pub fn pids_limit(plugin: &PluginConfig, config: &TaskConfig) -> Result<u64, BuildError> {
    match config.pids_limit {
        None => Ok(plugin.pids_limit),
        Some(job) if plugin.pids_limit > 0 && (job == 0 || job > plugin.pids_limit) => {
            Err(BuildError::PidsOverCeiling {
                job,
                plugin: plugin.pids_limit,
            })
        }
        Some(job) => Ok(job),
    }
}

/// The job's log rotation may not keep more than the operator's: `log_max_files ×
/// log_max_file_size` (per stream) is capped by the plugin's product. Nomad checks its own
/// `logs {}` block against the allocation's `ephemeral_disk`, but gives drivers neither
/// (its driver API carries no disk size), so the operator's values are the ceiling.
pub fn check_log_sizes(plugin: &PluginConfig, config: &TaskConfig) -> Result<(), BuildError> {
    if plugin.log_collection != LogCollection::Executor {
        return Ok(());
    }
    let files = u64::from(config.log_max_files.unwrap_or(plugin.log_max_files));
    let size = config.log_max_file_size.unwrap_or(plugin.log_max_file_size);
    let (plugin_files, plugin_size) = (u64::from(plugin.log_max_files), plugin.log_max_file_size);
    let total = files.saturating_mul(size);
    let plugin_total = plugin_files.saturating_mul(plugin_size);
    if total > plugin_total {
        return Err(BuildError::LogsOverCeiling {
            files,
            size,
            total,
            plugin_files,
            plugin_size,
            plugin_total,
        });
    }
    Ok(())
}

/// The task's `user` as Nomad sent it: empty (the shim's own), a numeric uid, or a POSIX
/// portable user name (`[A-Za-z0-9._-]`, not starting with `-`, at most 256 bytes). Never
/// something a lookup tool would read as an option (`--service=files`).
pub fn check_user(user: &str) -> Result<(), BuildError> {
    if user.is_empty() {
        return Ok(());
    }
    let bad = |why| {
        Err(BuildError::BadUser {
            user: user.to_owned(),
            why,
        })
    };
    if user.starts_with('-') {
        return bad("it starts with '-'");
    }
    if user.len() > 256 {
        return bad("it is longer than 256 bytes");
    }
    if !user
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'$'))
    {
        return bad(
            "it holds characters other than letters, digits, '.', '_', '-' (and a final '$')",
        );
    }
    if user.find('$').is_some_and(|i| i != user.len() - 1) {
        return bad("'$' may only end a name");
    }
    Ok(())
}

/// The task's resolv.conf from Nomad's DNS config (the group's `network { dns {} }`),
/// checked even when it cannot apply. None when Nomad sent none or an empty one (the task
/// keeps the host's, as exec copies it), or with `fs_isolation = "none"` (no mount namespace
/// of the task's own to show it in: StartTask says so in a task event).
pub fn dns_of(
    nomad: Option<&DnsConfig>,
    fs_isolation: FsIsolation,
    host: Option<&DnsSpec>,
) -> Result<Option<DnsSpec>, BuildError> {
    let Some(n) = nomad else { return Ok(None) };
    let dns = DnsSpec {
        servers: n.servers.clone(),
        searches: n.searches.clone(),
        options: n.options.clone(),
    };
    dns.validate().map_err(|e| {
        BuildError::Sandbox(format!(
            "{}; fix the group's network {{ dns {{}} }} block",
            e.within("network.dns")
        ))
    })?;
    if dns.is_empty() || fs_isolation == FsIsolation::None {
        return Ok(None);
    }
    Ok(Some(dns.or_host(host.unwrap_or(&DnsSpec::default()))))
}

/// The task event for a DNS config the sandbox cannot show: with `fs_isolation = "none"` the
/// task shares the host's file system (and its resolv.conf).
pub fn dns_not_applied(fs_isolation: FsIsolation, nomad: Option<&DnsConfig>) -> Option<String> {
    let n = nomad?;
    let empty = n.servers.is_empty() && n.searches.is_empty() && n.options.is_empty();
    (fs_isolation == FsIsolation::None && !empty).then(|| {
        "The group's network { dns {} } block is not applied: with the plugin's fs_isolation = \"none\" the task shares the host's file system and sees the host's /etc/resolv.conf; use fs_isolation = \"readonly\" (the default) for a resolv.conf of the task's own".to_owned()
    })
}

/// Whether the task runs in the group's network namespace (bridge, CNI or `none` mode).
fn in_group_network(nomad: Option<&NetworkIsolationSpec>) -> bool {
    nomad.is_some_and(|n| n.mode == NetworkIsolationMode::Group as i32 && !n.path.is_empty())
}

/// The task's `/etc/hosts` in group network mode: Nomad's hosts config when it sent one (a
/// docker task of the group made the network), checked; else empty fields the sandbox fills
/// with the allocation's address and the task's hostname (see `common::hosts`). None in host
/// mode, and with `fs_isolation = "none"` (StartTask says so in a task event).
pub fn hosts_of(
    nomad: Option<&NetworkIsolationSpec>,
    fs_isolation: FsIsolation,
) -> Result<Option<HostsSpec>, BuildError> {
    if !in_group_network(nomad) {
        return Ok(None);
    }
    let given = |f: fn(&common::proto::drivers::HostsConfig) -> &String| {
        nomad
            .and_then(|n| n.hosts_config.as_ref())
            .map(f)
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let hosts = HostsSpec {
        hostname: given(|h| &h.hostname),
        address: given(|h| &h.address),
    };
    hosts.validate().map_err(|FieldError { field, message }| {
        BuildError::Sandbox(format!(
            "the allocation's network {field} from Nomad (NetworkIsolationSpec.hosts_config.{field}): {message}; check the group's network {{ hostname }}"
        ))
    })?;
    Ok((fs_isolation != FsIsolation::None).then_some(hosts))
}

/// The task event for the `/etc/hosts` the sandbox cannot show in group network mode: with
/// `fs_isolation = "none"` the task shares the host's file system (and its hosts file).
pub fn hosts_not_applied(
    fs_isolation: FsIsolation,
    nomad: Option<&NetworkIsolationSpec>,
) -> Option<String> {
    (fs_isolation == FsIsolation::None && in_group_network(nomad)).then(|| {
        "The allocation's /etc/hosts (its address and hostname in the group's network namespace) is not applied: with the plugin's fs_isolation = \"none\" the task shares the host's file system and sees the host's /etc/hosts; use fs_isolation = \"readonly\" (the default) for a hosts file of the task's own".to_owned()
    })
}

/// `elide_opts.memory_limit` (the heap) must fit in the task's hard memory limit: a heap
/// above it gets the runtime OOM-killed once it grows, long after a start that looked fine.
fn check_heap(config: &TaskConfig, resources: &ResourceSpec) -> Result<(), BuildError> {
    match config.elide_opts.as_ref().and_then(|o| o.memory_limit) {
        Some(heap) if resources.memory_max_mb > 0 && heap > resources.memory_max_mb => {
            Err(BuildError::HeapOverLimit {
                heap,
                limit: resources.memory_max_mb,
            })
        }
        _ => Ok(()),
    }
}

/// With `log_collection = "executor"` the shim writes the task's log files where logmon
/// would: `<alloc dir>/alloc/logs/<task>.stdout.<N>` and `.stderr.<N>`, rotated at the task's
/// `log_max_file_size` (else the plugin's), keeping `log_max_files`. None when Nomad sends
/// /dev/null (`logs { disabled = true }`): then nothing is written.
fn log_files(plugin: &PluginConfig, config: &TaskConfig, task: &NomadTask) -> Option<LogFilesSpec> {
    if plugin.log_collection != LogCollection::Executor {
        return None;
    }
    let disabled = |p: &str| p.is_empty() || Path::new(p) == Path::new("/dev/null");
    if disabled(&task.stdout_path) && disabled(&task.stderr_path) {
        return None;
    }
    Some(LogFilesSpec {
        dir: Path::new(&task.alloc_dir).join("alloc").join("logs"),
        stdout_name: format!("{}.stdout", task.name),
        stderr_name: format!("{}.stderr", task.name),
        max_files: config.log_max_files.unwrap_or(plugin.log_max_files),
        max_file_size_mb: config.log_max_file_size.unwrap_or(plugin.log_max_file_size),
    })
}

/// Nomad's log FIFO, or /dev/null when it gave none (`logs { disabled = true }`).
fn log_sink(p: &str) -> PathBuf {
    if p.is_empty() {
        PathBuf::from("/dev/null")
    } else {
        PathBuf::from(p)
    }
}

/// The task's limits and cgroup from Nomad's `Resources`. The hard memory limit is
/// `memory_max` when set, else `memory`; CPU shares come from the allocated resources, else
/// from the Linux resources.
pub fn resources_of(r: Option<&Resources>, pids_limit: u64) -> ResourceSpec {
    let Some(r) = r else {
        return ResourceSpec {
            pids_limit,
            ..Default::default()
        };
    };
    let alloc = r.allocated_resources.as_ref();
    let mem = alloc.and_then(|a| a.memory.as_ref());
    let memory_mb = mem.map(|m| m.memory_mb.max(0) as u64).unwrap_or(0);
    let memory_max_mb = mem.map(|m| m.memory_max_mb.max(0) as u64).unwrap_or(0);
    let linux = r.linux_resources.as_ref();
    let cpu_shares = alloc
        .and_then(|a| a.cpu.as_ref())
        .map(|c| c.cpu_shares.max(0) as u64)
        .or_else(|| linux.map(|l| l.cpu_shares.max(0) as u64))
        .unwrap_or(0);
    ResourceSpec {
        memory_mb,
        memory_max_mb: if memory_max_mb > 0 {
            memory_max_mb
        } else {
            memory_mb
        },
        cpu_shares,
        cpuset_cpus: linux.map(|l| l.cpuset_cpus.clone()).unwrap_or_default(),
        nomad_cgroup: linux.map(|l| l.cpuset_cgroup.clone()).unwrap_or_default(),
        pids_limit,
        allow_no_cgroup: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::proto::drivers::{
        AllocatedCpuResources, AllocatedMemoryResources, AllocatedTaskResources, LinuxResources,
        NetworkIsolationSpec,
    };

    fn resources(memory: i64, memory_max: i64, cpu: i64) -> Resources {
        Resources {
            allocated_resources: Some(AllocatedTaskResources {
                memory: Some(AllocatedMemoryResources {
                    memory_mb: memory,
                    memory_max_mb: memory_max,
                }),
                cpu: Some(AllocatedCpuResources { cpu_shares: cpu }),
                ..Default::default()
            }),
            linux_resources: Some(LinuxResources {
                cpuset_cpus: "0-1".into(),
                cpuset_cgroup: "/sys/fs/cgroup/nomad.slice/share.slice/a1.web.scope".into(),
                cpu_shares: 7,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn resources_take_memory_max_else_memory_and_nomads_cgroup() {
        let r = resources_of(Some(&resources(256, 512, 500)), 64);
        assert_eq!(
            r,
            ResourceSpec {
                memory_mb: 256,
                memory_max_mb: 512,
                cpu_shares: 500,
                cpuset_cpus: "0-1".into(),
                nomad_cgroup: "/sys/fs/cgroup/nomad.slice/share.slice/a1.web.scope".into(),
                pids_limit: 64,
                allow_no_cgroup: false,
            }
        );
        let r = resources_of(Some(&resources(256, 0, 500)), 0);
        assert_eq!((r.memory_mb, r.memory_max_mb), (256, 256));
        let mut no_alloc_cpu = resources(1, 0, 0);
        no_alloc_cpu.allocated_resources.as_mut().unwrap().cpu = None;
        assert_eq!(resources_of(Some(&no_alloc_cpu), 0).cpu_shares, 7);
        assert_eq!(resources_of(None, 9).pids_limit, 9);
    }

    fn nomad_task() -> NomadTask {
        NomadTask {
            id: "a1/web/0a1b2c3d".into(),
            name: "web".into(),
            alloc_id: "a1".into(),
            alloc_dir: "/var/nomad/alloc/a1".into(),
            stdout_path: "/var/nomad/alloc/a1/alloc/logs/.web.stdout.fifo".into(),
            env: [("NOMAD_ALLOC_ID".to_owned(), "a1".to_owned())].into(),
            resources: Some(resources(128, 0, 250)),
            ..Default::default()
        }
    }

    #[test]
    fn the_spec_places_everything_by_task_id_and_takes_nomads_inputs() {
        let plugin = PluginConfig::default();
        let config = TaskConfig {
            script: "local/app.py".into(),
            pids_limit: Some(32),
            ..Default::default()
        };
        let mut task = nomad_task();
        task.network_isolation_spec = Some(NetworkIsolationSpec {
            path: "/var/run/netns/x".into(),
            ..Default::default()
        });
        let input = SpecInput {
            plugin: &plugin,
            config: &config,
            task: &task,
            elide: Path::new("/usr/bin/elide"),
            script: "local/app.py",
            task_tmp_exists: false,
            elide_home: Path::new("/usr/bin"),
            resolv_conf: None,
            script_dir: None,
            host_dns: None,
        };
        let s = build_spec(&input).unwrap();
        assert_eq!(s.cwd, Path::new("/var/nomad/alloc/a1/web"));
        assert_eq!(s.argv[0], "/usr/bin/elide");
        assert!(s.argv.contains(&"-Xmx96m".to_owned()), "{:?}", s.argv);
        assert_eq!(
            s.socket_path,
            paths::socket_path(&plugin.runtime_dir, &task.id).unwrap()
        );
        assert_eq!(
            s.state_path,
            Path::new("/var/nomad/alloc/a1/.elide")
                .join(paths::task_key(&task.id))
                .join("state.json")
        );
        assert_eq!(s.stdout_path, Path::new(&task.stdout_path));
        assert_eq!(s.stderr_path, Path::new("/dev/null"), "no FIFO: /dev/null");
        assert_eq!(s.netns_path.as_deref(), Some(Path::new("/var/run/netns/x")));
        assert_eq!(s.resources.pids_limit, 32, "the job's pids_limit wins");
        assert_eq!(s.resources.memory_max_mb, 128);
        assert_eq!(s.env["NOMAD_ALLOC_ID"], "a1");
        assert_eq!(s.env["TMPDIR"], "/var/nomad/alloc/a1/web/local");
        assert_eq!(s.fifo_open_timeout_ms, 10_000);
        assert_eq!(s.linger_after_exit_secs, 300);
        assert!(s.sandbox.is_some(), "the plugin always sandboxes");
        // The default log_collection = "executor": the shim writes logmon's files.
        assert_eq!(
            s.log_files,
            Some(LogFilesSpec {
                dir: "/var/nomad/alloc/a1/alloc/logs".into(),
                stdout_name: "web.stdout".into(),
                stderr_name: "web.stderr".into(),
                max_files: 10,
                max_file_size_mb: 10,
            })
        );
        s.validate().unwrap();
        // The same input gives the same spec: nothing depends on the node.
        assert_eq!(build_spec(&input).unwrap(), s);
    }

    #[test]
    fn log_files_follow_log_collection_the_task_overrides_and_disabled_logs() {
        let mut plugin = PluginConfig {
            log_max_files: 4,
            log_max_file_size: 20,
            ..Default::default()
        };
        let mut config = TaskConfig {
            script: "local/app.py".into(),
            log_max_files: Some(3),
            ..Default::default()
        };
        let mut task = nomad_task();
        let spec = |plugin: &PluginConfig, config: &TaskConfig, task: &NomadTask| {
            build_spec(&SpecInput {
                plugin,
                config,
                task,
                elide: Path::new("/usr/bin/elide"),
                script: "local/app.py",
                task_tmp_exists: true,
                elide_home: Path::new("/usr/bin"),
                resolv_conf: None,
                script_dir: None,
                host_dns: None,
            })
            .unwrap()
        };
        let l = spec(&plugin, &config, &task).log_files.unwrap();
        assert_eq!((l.max_files, l.max_file_size_mb), (3, 20));
        config.log_max_file_size = Some(1);
        let l = spec(&plugin, &config, &task).log_files.unwrap();
        assert_eq!((l.max_files, l.max_file_size_mb), (3, 1));
        // logs { disabled = true }: Nomad sends /dev/null, nothing is written.
        task.stdout_path = "/dev/null".into();
        task.stderr_path = "/dev/null".into();
        let s = spec(&plugin, &config, &task);
        assert_eq!(s.log_files, None);
        assert_eq!(s.stdout_path, Path::new("/dev/null"));
        // log_collection = "nomad": the FIFOs, as before.
        plugin.log_collection = LogCollection::Nomad;
        let task = nomad_task();
        let s = spec(&plugin, &config, &task);
        assert_eq!(s.log_files, None);
        assert_eq!(s.stdout_path, Path::new(&task.stdout_path));
    }

    #[test]
    fn a_runtime_dir_too_long_for_a_socket_is_an_error_naming_the_option() {
        let plugin = PluginConfig {
            runtime_dir: PathBuf::from("/").join("d".repeat(100)),
            ..Default::default()
        };
        let config = TaskConfig {
            script: "local/app.py".into(),
            ..Default::default()
        };
        let task = nomad_task();
        let e = build_spec(&SpecInput {
            plugin: &plugin,
            config: &config,
            task: &task,
            elide: Path::new("/usr/bin/elide"),
            script: "local/app.py",
            task_tmp_exists: true,
            elide_home: Path::new("/usr/bin"),
            resolv_conf: None,
            script_dir: None,
            host_dns: None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("runtime_dir"), "{e}");
    }

    fn sandbox_for(
        plugin: &PluginConfig,
        config: &TaskConfig,
        task: &NomadTask,
    ) -> Result<SandboxSpec, BuildError> {
        sandbox_with_host_dns(plugin, config, task, None)
    }

    fn sandbox_with_host_dns(
        plugin: &PluginConfig,
        config: &TaskConfig,
        task: &NomadTask,
        host_dns: Option<&DnsSpec>,
    ) -> Result<SandboxSpec, BuildError> {
        sandbox_of(&SpecInput {
            plugin,
            config,
            task,
            elide: Path::new("/opt/elide/1.0/elide"),
            script: "local/app.py",
            task_tmp_exists: true,
            elide_home: Path::new("/opt/elide/1.0"),
            resolv_conf: Some(Path::new("/run/systemd/resolve/stub-resolv.conf")),
            script_dir: None,
            host_dns,
        })
    }

    #[test]
    fn the_default_sandbox_hides_nomads_and_other_tasks_dirs_and_keeps_the_task_writable() {
        let plugin = PluginConfig::default();
        let config = TaskConfig::default();
        let mut task = nomad_task();
        task.alloc_dir = "/var/lib/nomad/alloc/a1".into();
        let s = sandbox_for(&plugin, &config, &task).unwrap();
        assert_eq!(s.capabilities.len(), 12);
        assert!(s.pid_mode.is_private() && s.ipc_mode.is_private());
        assert_eq!(s.fs_isolation, FsIsolation::Readonly);
        assert_eq!(
            s.writable_paths,
            [
                PathBuf::from("/var/lib/nomad/alloc/a1/web"),
                PathBuf::from("/var/lib/nomad/alloc/a1/alloc")
            ]
        );
        // The allow-list: the system's programs, libraries and /etc, then Elide's home and
        // resolv.conf's target.
        let n = common::sandbox::DEFAULT_HOST_PATHS.len();
        assert!(s.readable_paths[..n]
            .iter()
            .zip(common::sandbox::DEFAULT_HOST_PATHS)
            .all(|(a, b)| a == Path::new(b)));
        for p in ["/usr", "/etc", "/bin", "/lib"] {
            assert!(s.readable_paths.contains(&PathBuf::from(p)), "{p}");
        }
        for p in ["/opt", "/var", "/home", "/root", "/run", "/srv", "/"] {
            assert!(!s.readable_paths.contains(&PathBuf::from(p)), "{p}");
        }
        assert_eq!(
            s.readable_paths[n..],
            [
                PathBuf::from("/opt/elide/1.0"),
                PathBuf::from("/run/systemd/resolve/stub-resolv.conf")
            ]
        );
        assert_eq!(
            s.hidden_paths[..4],
            [
                PathBuf::from("/var/lib/nomad/alloc"),
                PathBuf::from("/var/lib/nomad"),
                plugin.runtime_dir.clone(),
                PathBuf::from("/var/lib/nomad/alloc/a1/web/private"),
            ]
        );
        // Then the plugin's hidden_paths, by default the credential stores of /etc.
        for p in [
            "/etc/shadow",
            "/etc/gshadow",
            "/etc/ssl/private",
            "/etc/sudoers.d",
            "/etc/nomad.d",
        ] {
            assert!(s.hidden_paths.contains(&PathBuf::from(p)), "{p}: {s:?}");
        }
        // A custom client alloc_dir: its parent is hidden, nothing above it is guessed.
        task.alloc_dir = "/srv/allocs/a1".into();
        let plugin = PluginConfig {
            hidden_paths: vec![],
            ..Default::default()
        };
        let s = sandbox_for(&plugin, &config, &task).unwrap();
        assert_eq!(s.hidden_paths[0], Path::new("/srv/allocs"));
        assert_eq!(s.hidden_paths[1], plugin.runtime_dir);
        // The model cache: a task sees its own models only (bound at local/models).
        assert!(s.hidden_paths.contains(&plugin.model_cache_dir), "{s:?}");
        // Never "/" itself.
        task.alloc_dir = "/a1".into();
        let s = sandbox_for(&plugin, &config, &task).unwrap();
        assert!(s.hidden_paths.iter().all(|p| p.parent().is_some()), "{s:?}");
    }

    #[test]
    fn an_absolute_script_keeps_its_allowed_dir_readable_in_the_sandbox() {
        let (plugin, config, task) = (PluginConfig::default(), TaskConfig::default(), nomad_task());
        let s = sandbox_of(&SpecInput {
            plugin: &plugin,
            config: &config,
            task: &task,
            elide: Path::new("/usr/bin/elide"),
            script: "/tmp/apps/v1/app.py",
            task_tmp_exists: true,
            elide_home: Path::new("/usr/bin"),
            resolv_conf: None,
            script_dir: Some(Path::new("/tmp/apps")),
            host_dns: None,
        })
        .unwrap();
        let n = common::sandbox::DEFAULT_HOST_PATHS.len();
        assert_eq!(
            s.readable_paths[n..],
            [PathBuf::from("/usr/bin"), PathBuf::from("/tmp/apps")]
        );
        assert!(!s.writable_paths.iter().any(|p| p.starts_with("/tmp")));
    }

    #[test]
    fn task_options_override_the_plugin_and_caps_follow_exec() {
        use common::capabilities::parse_name;
        use common::sandbox::NamespaceMode;
        let plugin = PluginConfig {
            default_pid_mode: NamespaceMode::Host,
            allow_host_ipc: true,
            hidden_paths: vec!["/etc/nomad.d".into()],
            extra_host_paths: vec!["/srv/models".into()],
            denied_host_uids: "0".into(),
            ..Default::default()
        };
        let config = TaskConfig {
            cap_drop: vec![parse_name("all").unwrap()],
            cap_add: vec![parse_name("net_bind_service").unwrap()],
            pid_mode: Some(NamespaceMode::Private),
            ipc_mode: Some(NamespaceMode::Host),
            ..Default::default()
        };
        let s = sandbox_for(&plugin, &config, &nomad_task()).unwrap();
        assert_eq!(s.capabilities, ["CAP_NET_BIND_SERVICE"]);
        assert_eq!(s.pid_mode, NamespaceMode::Private);
        assert_eq!(s.ipc_mode, NamespaceMode::Host);
        assert_eq!(s.hidden_paths.last().unwrap(), Path::new("/etc/nomad.d"));
        // The operator's extra host paths join the allow-list, last.
        assert_eq!(s.readable_paths.last().unwrap(), Path::new("/srv/models"));
        assert_eq!(s.denied_uids, "0");

        let config = TaskConfig {
            cap_add: vec![parse_name("SYS_ADMIN").unwrap()],
            ..Default::default()
        };
        let e = sandbox_for(&plugin, &config, &nomad_task())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config.cap_add: the driver does not allow the capabilities sys_admin"),
            "{e}"
        );
    }

    #[test]
    fn the_syscall_filter_follows_the_pid_mode_and_a_non_root_user_gets_only_cap_add() {
        use common::capabilities::parse_name;
        use common::sandbox::NamespaceMode;
        let plugin = PluginConfig::default();
        let s = sandbox_for(&plugin, &TaskConfig::default(), &nomad_task()).unwrap();
        assert!(s.user_capabilities.is_empty());
        let f = s.seccomp.expect("the filter is on by default");
        assert!(f.denied.iter().any(|n| n == "keyctl"));
        assert!(!f.denied.iter().any(|n| n == "ptrace"), "{f:?}");
        let host = TaskConfig {
            pid_mode: Some(NamespaceMode::Host),
            cap_add: vec![parse_name("net_bind_service").unwrap()],
            ..Default::default()
        };
        // pid_mode = "host" takes the operator's allow_host_pid.
        let host_ok = PluginConfig {
            allow_host_pid: true,
            ..Default::default()
        };
        let s = sandbox_for(&host_ok, &host, &nomad_task()).unwrap();
        assert!(s.seccomp.unwrap().denied.iter().any(|n| n == "ptrace"));
        assert_eq!(s.user_capabilities, ["CAP_NET_BIND_SERVICE"]);
        assert_eq!(s.capabilities.len(), 12);
        let off = PluginConfig {
            seccomp: None,
            ..Default::default()
        };
        let s = sandbox_for(&off, &TaskConfig::default(), &nomad_task()).unwrap();
        assert!(s.seccomp.is_none());
    }

    #[test]
    fn volumes_and_devices_are_passed_on_or_refused_with_the_reason() {
        use common::proto::drivers::{Device, Mount};
        let plugin = PluginConfig::default();
        let config = TaskConfig::default();
        let mut task = nomad_task();
        task.mounts = vec![
            Mount {
                task_path: "/data".into(),
                host_path: "/srv/data".into(),
                readonly: true,
                ..Default::default()
            },
            Mount {
                task_path: "cache".into(),
                host_path: "/srv/cache".into(),
                propagation_mode: "private".into(),
                ..Default::default()
            },
        ];
        task.devices = vec![Device {
            task_path: "/dev/nvidia0".into(),
            host_path: "/dev/nvidia0".into(),
            cgroup_permissions: "rwm".into(),
        }];
        let s = sandbox_for(&plugin, &config, &task).unwrap();
        assert_eq!(
            s.volumes,
            [
                VolumeSpec {
                    host_path: "/srv/data".into(),
                    task_path: "/data".into(),
                    read_only: true
                },
                VolumeSpec {
                    host_path: "/srv/cache".into(),
                    task_path: "cache".into(),
                    read_only: false
                }
            ]
        );
        assert_eq!(s.devices[0].task_path, Path::new("/dev/nvidia0"));
        assert_eq!(s.devices[0].permissions, "rwm");

        for (m, want) in [
            (
                Mount {
                    task_path: "/data".into(),
                    host_path: "/srv/data".into(),
                    propagation_mode: "bidirectional".into(),
                    ..Default::default()
                },
                "propagation_mode \"bidirectional\" is not supported",
            ),
            (
                Mount {
                    task_path: "/../etc".into(),
                    host_path: "/srv/data".into(),
                    ..Default::default()
                },
                "leaves the task dir",
            ),
        ] {
            task.mounts = vec![m];
            let e = sandbox_for(&plugin, &config, &task)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
        task.mounts.clear();
        task.devices = vec![Device {
            task_path: "/etc/gpu".into(),
            host_path: "/dev/nvidia0".into(),
            cgroup_permissions: "rw".into(),
        }];
        let e = sandbox_for(&plugin, &config, &task)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a task path under /dev"), "{e}");
        let none = PluginConfig {
            fs_isolation: FsIsolation::None,
            ..Default::default()
        };
        task.devices[0].task_path = "/dev/gpu0".into();
        let e = sandbox_for(&none, &config, &task).unwrap_err().to_string();
        assert!(e.contains("fs_isolation = \"none\""), "{e}");
    }

    /// Group (bridge) network mode gives the task an /etc/hosts: Nomad's hosts config when it
    /// sent one, checked (the error names the field), else left for the sandbox to fill; host
    /// mode and fs_isolation = "none" give none (the latter with a task event).
    #[test]
    fn group_network_mode_gives_the_task_an_etc_hosts() {
        use common::proto::drivers::HostsConfig;
        let plugin = PluginConfig::default();
        let config = TaskConfig::default();
        let mut task = nomad_task();
        let group = NetworkIsolationMode::Group as i32;
        assert_eq!(sandbox_for(&plugin, &config, &task).unwrap().hosts, None);
        task.network_isolation_spec = Some(NetworkIsolationSpec {
            mode: NetworkIsolationMode::Host as i32,
            path: "/var/run/netns/x".into(),
            ..Default::default()
        });
        assert_eq!(sandbox_for(&plugin, &config, &task).unwrap().hosts, None);
        task.network_isolation_spec = Some(NetworkIsolationSpec {
            mode: group,
            path: "/var/run/netns/x".into(),
            ..Default::default()
        });
        assert_eq!(
            sandbox_for(&plugin, &config, &task).unwrap().hosts,
            Some(HostsSpec::default())
        );
        let with = |hostname: &str, address: &str| {
            let mut t = task.clone();
            t.network_isolation_spec.as_mut().unwrap().hosts_config = Some(HostsConfig {
                hostname: hostname.into(),
                address: address.into(),
            });
            t
        };
        assert_eq!(
            sandbox_for(&plugin, &config, &with("a1b2c3d4e5f6", "172.26.64.5"))
                .unwrap()
                .hosts,
            Some(HostsSpec {
                hostname: Some("a1b2c3d4e5f6".into()),
                address: Some("172.26.64.5".into()),
            })
        );
        let e = sandbox_for(&plugin, &config, &with("web_1", "172.26.64.5"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hosts_config.hostname") && e.contains("RFC 1123"),
            "{e}"
        );
        let e = sandbox_for(&plugin, &config, &with("web-1", "172.26.64"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hosts_config.address") && e.contains("not an IP"),
            "{e}"
        );
        let none = PluginConfig {
            fs_isolation: FsIsolation::None,
            ..Default::default()
        };
        assert_eq!(sandbox_for(&none, &config, &task).unwrap().hosts, None);
        let event = hosts_not_applied(FsIsolation::None, task.network_isolation_spec.as_ref());
        assert!(event.unwrap().contains("fs_isolation = \"none\""));
        assert_eq!(
            hosts_not_applied(FsIsolation::Readonly, task.network_isolation_spec.as_ref()),
            None
        );
        assert_eq!(hosts_not_applied(FsIsolation::None, None), None);
    }

    /// Nomad's `network { dns {} }` reaches the sandbox spec, merged with the host's lists
    /// the job left empty; bad entries fail the start naming the field; no sandbox mount
    /// namespace (fs_isolation = "none") or an empty block: nothing to mount.
    #[test]
    fn nomads_dns_config_lands_in_the_sandbox_checked_and_merged_with_the_host() {
        let plugin = PluginConfig::default();
        let config = TaskConfig::default();
        let mut task = nomad_task();
        assert_eq!(sandbox_for(&plugin, &config, &task).unwrap().dns, None);
        task.dns = Some(DnsConfig {
            servers: vec!["10.9.8.7".into()],
            searches: vec!["example.internal".into()],
            options: vec![],
        });
        let host = DnsSpec::parse_resolv_conf("nameserver 10.0.0.2\noptions ndots:5\n");
        let with_host = |plugin: &PluginConfig, task: &NomadTask| {
            sandbox_with_host_dns(plugin, &config, task, Some(&host))
        };
        let dns = with_host(&plugin, &task).unwrap().dns.unwrap();
        assert_eq!(
            dns.render(),
            "search example.internal\nnameserver 10.9.8.7\noptions ndots:5\n"
        );
        let none = PluginConfig {
            fs_isolation: FsIsolation::None,
            ..Default::default()
        };
        assert_eq!(with_host(&none, &task).unwrap().dns, None);
        let event = dns_not_applied(FsIsolation::None, task.dns.as_ref()).unwrap();
        assert!(event.contains("fs_isolation = \"none\""), "{event}");
        assert_eq!(
            dns_not_applied(FsIsolation::Readonly, task.dns.as_ref()),
            None
        );
        assert_eq!(
            dns_not_applied(FsIsolation::None, Some(&DnsConfig::default())),
            None
        );
        task.dns = Some(DnsConfig::default());
        assert_eq!(with_host(&plugin, &task).unwrap().dns, None);
        task.dns = Some(DnsConfig {
            servers: vec!["10.9.8.7".into(), "ns1.example".into()],
            ..Default::default()
        });
        for p in [&plugin, &none] {
            let e = with_host(p, &task).unwrap_err().to_string();
            assert!(
                e.starts_with("network.dns.servers[1]: \"ns1.example\" is not an IP address"),
                "{e}"
            );
        }
        task.dns = Some(DnsConfig {
            options: vec!["ndots:1\nnameserver 6.6.6.6".into()],
            ..Default::default()
        });
        let e = with_host(&plugin, &task).unwrap_err().to_string();
        assert!(e.starts_with("network.dns.options[0]:"), "{e}");
    }

    /// A job's host PID/IPC namespace needs the operator's consent (issue #18 item 4): by
    /// default it is refused naming the plugin option; with the option (or a host default)
    /// it is granted.
    #[test]
    fn host_namespaces_need_the_operators_consent() {
        let task = nomad_task();
        let pid_host = TaskConfig {
            pid_mode: Some(NamespaceMode::Host),
            ..Default::default()
        };
        let ipc_host = TaskConfig {
            ipc_mode: Some(NamespaceMode::Host),
            ..Default::default()
        };
        let plugin = PluginConfig::default();
        let e = sandbox_for(&plugin, &pid_host, &task)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config.pid_mode = \"host\" is not allowed on this node")
                && e.contains("allow_host_pid = true"),
            "{e}"
        );
        let e = sandbox_for(&plugin, &ipc_host, &task)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config.ipc_mode = \"host\" is not allowed")
                && e.contains("allow_host_ipc = true"),
            "{e}"
        );
        // Consent for one is not consent for the other.
        let pid_ok = PluginConfig {
            allow_host_pid: true,
            ..Default::default()
        };
        assert_eq!(
            sandbox_for(&pid_ok, &pid_host, &task).unwrap().pid_mode,
            NamespaceMode::Host
        );
        assert!(sandbox_for(&pid_ok, &ipc_host, &task).is_err());
        let ipc_default = PluginConfig {
            default_ipc_mode: NamespaceMode::Host,
            ..Default::default()
        };
        assert_eq!(
            sandbox_for(&ipc_default, &ipc_host, &task)
                .unwrap()
                .ipc_mode,
            NamespaceMode::Host
        );
        // Private is always allowed.
        let private = TaskConfig {
            pid_mode: Some(NamespaceMode::Private),
            ipc_mode: Some(NamespaceMode::Private),
            ..Default::default()
        };
        assert!(sandbox_for(&plugin, &private, &task).is_ok());
    }

    /// The operator's pids_limit is a ceiling: a job may lower it, never raise or lift it.
    #[test]
    fn the_plugins_pids_limit_is_a_ceiling() {
        let job = |n: Option<u64>| TaskConfig {
            pids_limit: n,
            ..Default::default()
        };
        let capped = PluginConfig {
            pids_limit: 50,
            ..Default::default()
        };
        assert_eq!(pids_limit(&capped, &job(None)).unwrap(), 50);
        assert_eq!(pids_limit(&capped, &job(Some(20))).unwrap(), 20);
        assert_eq!(pids_limit(&capped, &job(Some(50))).unwrap(), 50);
        let e = pids_limit(&capped, &job(Some(0))).unwrap_err().to_string();
        assert!(
            e.starts_with("config.pids_limit = 0 would lift the plugin's pids_limit = 50")
                && e.contains("between 1 and 50"),
            "{e}"
        );
        let e = pids_limit(&capped, &job(Some(51))).unwrap_err().to_string();
        assert!(e.starts_with("config.pids_limit = 51 would lift"), "{e}");
        // No operator limit: the job's is taken as it is.
        let open = PluginConfig::default();
        assert_eq!(pids_limit(&open, &job(Some(0))).unwrap(), 0);
        assert_eq!(pids_limit(&open, &job(Some(9000))).unwrap(), 9000);
        // build_spec refuses too.
        let task = nomad_task();
        let config = TaskConfig {
            script: "local/app.py".into(),
            pids_limit: Some(0),
            ..Default::default()
        };
        let e = build_spec(&input(&capped, &config, &task)).unwrap_err();
        assert!(
            matches!(e, BuildError::PidsOverCeiling { job: 0, plugin: 50 }),
            "{e}"
        );
    }

    /// Log files per stream may not exceed the operator's product (issue #18 item 11).
    #[test]
    fn log_rotation_may_not_keep_more_than_the_operator_allows() {
        let plugin = PluginConfig::default(); // 10 × 10 MiB
        let job = |files: Option<u32>, size: Option<u64>| TaskConfig {
            log_max_files: files,
            log_max_file_size: size,
            ..Default::default()
        };
        assert!(check_log_sizes(&plugin, &job(None, None)).is_ok());
        assert!(check_log_sizes(&plugin, &job(Some(20), Some(5))).is_ok());
        assert!(check_log_sizes(&plugin, &job(Some(1), Some(100))).is_ok());
        let e = check_log_sizes(&plugin, &job(Some(100), Some(1024)))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "config.log_max_files × config.log_max_file_size = 100 × 1024 MiB = 102400 MiB"
            ) && e.contains("10 × 10 MiB = 100 MiB"),
            "{e}"
        );
        assert!(check_log_sizes(&plugin, &job(Some(11), None)).is_err());
        // With Nomad's logmon the job's values do not apply (a task event says so).
        let nomad = PluginConfig {
            log_collection: LogCollection::Nomad,
            ..Default::default()
        };
        assert!(check_log_sizes(&nomad, &job(Some(100), Some(1024))).is_ok());
    }

    /// A task user is a name or a uid, never an option for a lookup tool (item 13).
    #[test]
    fn task_users_must_be_plain_names() {
        for ok in ["", "nobody", "www-data", "app_1.svc", "1001", "HOST$"] {
            assert!(check_user(ok).is_ok(), "{ok:?}");
        }
        for bad in ["--service=files", "-x", "a b", "a:b", "a/b", "x$y", "ünï"] {
            let e = check_user(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("user {bad:?} is not a valid user name")),
                "{e}"
            );
        }
        let mut task = nomad_task();
        task.user = "--service=files".into();
        let config = TaskConfig {
            script: "local/app.py".into(),
            ..Default::default()
        };
        let e = build_spec(&input(&PluginConfig::default(), &config, &task)).unwrap_err();
        assert!(e.to_string().contains("starts with '-'"), "{e}");
    }

    /// The plugin's allow_no_cgroup reaches the shim with the limits.
    #[test]
    fn allow_no_cgroup_reaches_the_spec() {
        let task = nomad_task();
        let config = TaskConfig {
            script: "local/app.py".into(),
            ..Default::default()
        };
        let s = build_spec(&input(&PluginConfig::default(), &config, &task)).unwrap();
        assert!(!s.resources.allow_no_cgroup);
        let allow = PluginConfig {
            allow_no_cgroup: true,
            ..Default::default()
        };
        assert!(
            build_spec(&input(&allow, &config, &task))
                .unwrap()
                .resources
                .allow_no_cgroup
        );
    }

    fn input<'a>(
        plugin: &'a PluginConfig,
        config: &'a TaskConfig,
        task: &'a NomadTask,
    ) -> SpecInput<'a> {
        SpecInput {
            plugin,
            config,
            task,
            elide: Path::new("/opt/elide/1.0/elide"),
            script: "local/app.py",
            task_tmp_exists: true,
            elide_home: Path::new("/opt/elide/1.0"),
            resolv_conf: None,
            script_dir: None,
            host_dns: None,
        }
    }
}
