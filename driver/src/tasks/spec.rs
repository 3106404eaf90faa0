//! Nomad's task config + the job's `config {}` + the plugin config → the `TaskSpec` the shim
//! runs. Pure: no file system, no processes; what it must know about the node (the resolved
//! Elide binary, the script path, whether `<task dir>/tmp` exists) comes in [`SpecInput`].
//! New task options land here (and in `command` when they become Elide flags).

use super::command;
use common::config::{LogCollection, PluginConfig, TaskConfig};
use common::paths::{self, PathError};
use common::proto::drivers::{Resources, TaskConfig as NomadTask};
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
    /// The script as Elide gets it (relative to the task dir when inside it).
    pub script: &'a str,
    pub task_tmp_exists: bool,
}

/// The task dir: `<alloc dir>/<task name>`.
pub fn task_dir(task: &NomadTask) -> PathBuf {
    Path::new(&task.alloc_dir).join(&task.name)
}

pub fn build_spec(i: &SpecInput<'_>) -> Result<TaskSpec, PathError> {
    let task = i.task;
    let alloc_dir = PathBuf::from(&task.alloc_dir);
    let task_dir = task_dir(task);
    let nomad_env: BTreeMap<String, String> = task.env.clone().into_iter().collect();
    let pids_limit = i.config.pids_limit.unwrap_or(i.plugin.pids_limit);
    let resources = resources_of(task.resources.as_ref(), pids_limit);
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
        fifo_open_timeout_ms: i.plugin.fifo_open_timeout.as_millis() as u64,
        user: task.user.clone(),
        socket_path,
        state_path: state_dir.join(paths::STATE_FILE),
        netns_path,
        resources,
        linger_after_exit_secs: DEFAULT_LINGER.as_secs(),
    })
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
        })
        .unwrap_err();
        assert!(e.to_string().contains("runtime_dir"), "{e}");
    }
}
