//! Nomad's task config + the job's `config {}` + the plugin config → the `TaskSpec` the shim
//! runs. Pure: no file system, no processes; what it must know about the node (the resolved
//! Elide binary, the script path, whether `<task dir>/tmp` exists) comes in [`SpecInput`].
//! New task options land here (and in `command` when they become Elide flags).

use super::command;
use common::config::{LogCollection, PluginConfig, TaskConfig};
use common::dns::DnsSpec;
use common::hosts::HostsSpec;
use common::paths::{self, PathError};
use common::proto::drivers::network_isolation_spec::NetworkIsolationMode;
use common::proto::drivers::{DnsConfig, NetworkIsolationSpec, Resources, TaskConfig as NomadTask};
use common::sandbox::{self, DeviceSpec, FsIsolation, SandboxSpec, VolumeSpec};
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
    let pids_limit = i.config.pids_limit.unwrap_or(i.plugin.pids_limit);
    let resources = resources_of(task.resources.as_ref(), pids_limit);
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
/// the file system view: the task dir and the alloc's `alloc/` writable at their host paths;
/// hidden: the allocations root (other allocations, this alloc's other tasks and the shims'
/// state in `<alloc>/.elide`), Nomad's data dir when the alloc dir sits in its default place
/// (`<data_dir>/alloc/<id>`: the client state DB), the plugin's runtime dir (shim sockets),
/// the task's `private/` dir, and the operator's `hidden_paths`; kept readable even below
/// a hidden path or in the private `/tmp`: Elide's home, resolv.conf's target and the
/// allowed dir of an absolute script.
pub fn sandbox_of(i: &SpecInput<'_>) -> Result<SandboxSpec, BuildError> {
    let (plugin, config, task) = (i.plugin, i.config, i.task);
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
        pid_mode: config.pid_mode.unwrap_or(plugin.default_pid_mode),
        ipc_mode: config.ipc_mode.unwrap_or(plugin.default_ipc_mode),
        fs_isolation: plugin.fs_isolation,
        writable_paths: vec![task_dir, alloc_dir.join("alloc")],
        readable_paths: [Some(i.elide_home), i.resolv_conf, i.script_dir]
            .into_iter()
            .flatten()
            .map(Path::to_path_buf)
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
    spec.validate()
        .map_err(|(field, e)| BuildError::Sandbox(format!("{field}: {e}")))?;
    Ok(spec)
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
    dns.validate().map_err(|(field, e)| {
        BuildError::Sandbox(format!(
            "network.dns.{field}: {e}; fix the group's network {{ dns {{}} }} block"
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
    hosts.validate().map_err(|(field, e)| {
        BuildError::Sandbox(format!(
            "the allocation's network {field} from Nomad (NetworkIsolationSpec.hosts_config.{field}): {e}; check the group's network {{ hostname }}"
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
        assert_eq!(s.capabilities.len(), 13);
        assert!(s.pid_mode.is_private() && s.ipc_mode.is_private());
        assert_eq!(s.fs_isolation, FsIsolation::Readonly);
        assert_eq!(
            s.writable_paths,
            [
                PathBuf::from("/var/lib/nomad/alloc/a1/web"),
                PathBuf::from("/var/lib/nomad/alloc/a1/alloc")
            ]
        );
        assert_eq!(
            s.readable_paths,
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
        // Then the plugin's hidden_paths, by default the sockets of /run, /var/lib, homes…
        for p in [
            "/run",
            "/var/lib",
            "/root",
            "/home",
            "/etc/shadow",
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
        assert_eq!(
            s.readable_paths,
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
            hidden_paths: vec!["/etc/nomad.d".into()],
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
        let s = sandbox_for(&plugin, &host, &nomad_task()).unwrap();
        assert!(s.seccomp.unwrap().denied.iter().any(|n| n == "ptrace"));
        assert_eq!(s.user_capabilities, ["CAP_NET_BIND_SERVICE"]);
        assert_eq!(s.capabilities.len(), 13);
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
}
