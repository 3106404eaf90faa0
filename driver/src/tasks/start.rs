//! StartTask: check the job's config and script, resolve the binaries, build the spec, launch
//! the shim, ask it to Start the runtime, and hand Nomad the handle.

use super::entry::TaskEntry;
use super::handle::{DriverState, HANDLE_VERSION};
use super::spec::{build_spec, dns_not_applied, hosts_not_applied, task_dir, SpecInput};
use super::{blocking, script, TaskError, Tasks};
use crate::config::{LogCollection, PluginConfig, TaskConfig};
use crate::fingerprint::{self, Located};
use common::dns::DnsSpec;
use common::proto::drivers::{
    start_task_response, StartTaskRequest, StartTaskResponse, TaskHandle,
};
use common::proto::executor as shim;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;

/// How long the shim may take from spawn to READY before StartTask gives up (recoverable).
const SHIM_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many tasks are between launching their shim and their runtime started, at most. In a
/// start storm (a 1,000-task job) the others wait before their shim is launched, holding
/// only their request: the sandbox set-ups do not all compete for the CPU at once (each
/// against its own deadline), and the plugin's heap does not grow with every start in
/// flight (docs/performance.md, "At scale").
pub const CONCURRENT_LAUNCHES: usize = 32;

/// What StartTask learns from the node before it builds the spec.
struct NodeFacts {
    elide: PathBuf,
    executor: PathBuf,
    script: String,
    task_tmp_exists: bool,
    /// The real directory of the Elide binary (its install dir, with `resources/`).
    elide_home: PathBuf,
    /// The target of `/etc/resolv.conf` when it is a symlink.
    resolv_conf: Option<PathBuf>,
    /// The `absolute_script_dirs` entry holding an absolute script.
    script_dir: Option<PathBuf>,
    /// The host's resolv.conf, parsed, when Nomad sent a DNS config.
    host_dns: Option<DnsSpec>,
    /// Task events to publish (e.g. execute bits cleared on the script).
    events: Vec<String>,
}

impl Tasks {
    pub async fn start(&self, req: StartTaskRequest) -> Result<StartTaskResponse, TaskError> {
        let task_id = req.task.as_ref().map(|t| t.id.clone()).unwrap_or_default();
        let r = self.start_task(req).await;
        if let Err(e) = &r {
            // A start that failed uses no model (a task already started keeps its refs).
            if !matches!(e, TaskError::AlreadyExists(_)) && !task_id.is_empty() {
                let dir = self.plugin.config().model_cache_dir.clone();
                self.models.release(&dir, &task_id).await;
            }
        }
        r
    }

    async fn start_task(&self, req: StartTaskRequest) -> Result<StartTaskResponse, TaskError> {
        let task = req
            .task
            .ok_or_else(|| TaskError::BadRequest("StartTask without a task config".into()))?;
        // Before anything is read or written in the task dir `<alloc>/<name>`.
        common::paths::check_task_name(&task.name)
            .map_err(|e| TaskError::Permanent(e.to_string()))?;
        if self.store.get(&task.id).is_some() {
            return Err(TaskError::AlreadyExists(format!(
                "task {} is already started",
                task.id
            )));
        }
        let cfg = self.plugin.config();
        let tc = TaskConfig::from_msgpack(&task.msgpack_driver_config)
            .map_err(|e| TaskError::Permanent(format!("invalid elide task config: {e}")))?;
        let wants_dns = task.dns.is_some();
        let facts = {
            let (cfg, tc, dir) = (cfg.clone(), tc.clone(), task_dir(&task));
            blocking(move || node_facts(&cfg, &tc, &dir, wants_dns)).await?
        };
        let emit = |msg: String| self.plugin.emit(&task.id, &task.alloc_id, &task.name, msg);
        facts.events.into_iter().for_each(emit);
        // Models: fetched into the node's cache (progress as task events), then bound
        // read-only into the task like read-only host volumes.
        let mut tc = tc;
        let models = self.prepare_models(&cfg, &task, &mut tc).await?;
        if cfg.log_collection == LogCollection::Nomad
            && (tc.log_max_files.is_some() || tc.log_max_file_size.is_some())
        {
            emit(
                "log_max_files and log_max_file_size in the task config apply only with the plugin's log_collection = \"executor\"; Nomad's logmon uses the job's logs {} block".into(),
            );
        }
        let not_applied = [
            dns_not_applied(cfg.fs_isolation, task.dns.as_ref()),
            hosts_not_applied(cfg.fs_isolation, task.network_isolation_spec.as_ref()),
        ];
        for msg in not_applied.into_iter().flatten() {
            tracing::warn!(task_id = %task.id, "{msg}");
            emit(msg);
        }
        let spec = build_spec(&SpecInput {
            plugin: &cfg,
            config: &tc,
            task: &task,
            elide: &facts.elide,
            script: &facts.script,
            task_tmp_exists: facts.task_tmp_exists,
            elide_home: &facts.elide_home,
            resolv_conf: facts.resolv_conf.as_deref(),
            script_dir: facts.script_dir.as_deref(),
            host_dns: facts.host_dns.as_ref(),
        })
        .map_err(|e| TaskError::Permanent(e.to_string()))?;
        let mut spec = spec;
        if let Some(sandbox) = spec.sandbox.as_mut() {
            sandbox.volumes.extend(models);
        }
        spec.validate()
            .map_err(|e| TaskError::Permanent(format!("cannot run this task: {e}")))?;
        let dirs = [(cfg.runtime_dir.clone(), "runtime_dir")];
        blocking(move || make_private_dirs(&dirs)).await?;
        // The state dir sits in the alloc dir: made and vetted without following a symlink.
        let state_dir = spec
            .state_path
            .parent()
            .unwrap_or(Path::new("/"))
            .to_path_buf();
        blocking(move || common::state::StateDir::open(&state_dir, true).map(drop))
            .await
            .map_err(|e| {
                let msg = format!("cannot create the task state dir: {e}");
                match e {
                    common::state::StateError::Unsafe { .. } => TaskError::Permanent(msg),
                    _ => TaskError::Recoverable(msg),
                }
            })?;

        let _launching = self.launches.acquire().await;
        let launch_started = std::time::Instant::now();
        let launched = self
            .launcher
            .launch(&facts.executor, &spec, SHIM_READY_TIMEOUT)
            .await
            .map_err(|e| {
                let msg = format!("cannot start the task's elide-executor: {e}");
                if e.is_recoverable() {
                    TaskError::Recoverable(msg)
                } else {
                    TaskError::Permanent(msg)
                }
            })?;
        crate::metrics::shim_ready(launch_started.elapsed());
        tracing::debug!(
            task_id = %task.id,
            shim_pid = launched.shim_pid,
            shim_ready_us = launch_started.elapsed().as_micros() as u64,
            "shim ready"
        );
        // Until the task runs, a shim this start gives up on (an error below, or Nomad
        // dropping the call) is told to leave instead of waiting out its start deadline.
        let mut unstarted = UnstartedShim::new(launched.shim_pid).await;
        // The shim is up; ask it to start the runtime.
        let mut client = crate::metrics::timed::connect(&spec.socket_path)
            .await
            .map_err(|e| {
                TaskError::Recoverable(format!(
                    "elide-executor (pid {}) reported ready but does not answer: {e}",
                    launched.shim_pid
                ))
            })?;
        let start_began = std::time::Instant::now();
        let started = match client.start(shim::StartRequest {}).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                // No orphaned shim: it goes away with its state.
                let _ = client.shutdown(shim::ShutdownRequest {}).await;
                let msg = s.message().to_owned();
                return Err(if s.code() == Code::Unavailable {
                    TaskError::Recoverable(msg)
                } else {
                    TaskError::Permanent(msg)
                });
            }
        };
        // Log FIFOs, cgroup, sandbox setup, exec: what tests/bench/bench.py compares.
        tracing::debug!(
            task_id = %task.id,
            runtime_start_us = start_began.elapsed().as_micros() as u64,
            "runtime started"
        );
        let shim_pid = launched.shim_pid;
        let shim_start_time = unstarted.start_time;
        // The version of the binary this task runs, as the fingerprint probed it (none when
        // it has not probed this binary as it is now).
        let version = self
            .plugin
            .elides()
            .version_of(&facts.elide)
            .unwrap_or_default();
        emit(if version.is_empty() {
            format!("Starting Elide: {}", tc.script)
        } else {
            format!("Starting Elide {version}: {}", tc.script)
        });
        let state = DriverState {
            version: HANDLE_VERSION,
            task_id: task.id.clone(),
            alloc_id: task.alloc_id.clone(),
            task_name: task.name.clone(),
            socket_path: spec.socket_path.clone(),
            state_path: spec.state_path.clone(),
            shim_pid,
            shim_start_time,
            runtime_pid: started.pid,
            runtime_start_time: started.pid_start_time,
            started_at_unix_ms: started.started_at_unix_ms,
            elide_version: version,
            script: tc.script.clone(),
            shim_api_level: started.api_level,
            executor_version: started.executor_version.clone(),
            log_collection: super::logs::collection_of(&spec).to_owned(),
        };
        let handle = TaskHandle {
            version: HANDLE_VERSION,
            config: Some(task.clone()),
            state: common::proto::drivers::TaskState::Running as i32,
            driver_state: state.encode(),
        };
        unstarted.disarm();
        let entry = TaskEntry::new(state);
        entry.keep_client(client).await;
        // In the store first: a datagram about the task finds it.
        self.store.insert(entry.clone());
        self.watch(&entry, 0).await;
        Ok(StartTaskResponse {
            result: start_task_response::Result::Success as i32,
            driver_error_msg: String::new(),
            handle: Some(handle),
            network_override: None,
        })
    }
}

/// The binaries (the task may pick its own Elide; the shim comes from the plugin config),
/// the checked script, and whether the task dir has a `tmp`.
fn node_facts(
    cfg: &PluginConfig,
    tc: &TaskConfig,
    task_dir: &Path,
    wants_dns: bool,
) -> Result<NodeFacts, TaskError> {
    let mut events = Vec::new();
    let checked = script::check(&tc.script, task_dir, &cfg.absolute_script_dirs)
        .map_err(|e| TaskError::Permanent(e.to_string()))?;
    if checked.cleared_exec_bits {
        events.push(format!(
            "Cleared the execute bits of {}: Elide would run an executable file as a host program instead of interpreting it",
            tc.script
        ));
    }
    let (script, script_dir) = (checked.arg, checked.allowed_dir);
    let bins = fingerprint::locate_binaries(cfg);
    let default = match bins.elide {
        Located::Found(p) => Some(p),
        Located::Missing { searched } => {
            if tc
                .elide_opts
                .as_ref()
                .is_none_or(|o| o.elide_version.is_none() && o.elide_binary.is_none())
            {
                return Err(TaskError::Recoverable(format!(
                    "Elide not found on this node (searched {}); install it or set elide_binary",
                    fingerprint::searched_list(&searched)
                )));
            }
            None
        }
    };
    let listed = elide_choices(cfg, default.as_deref());
    let picked = pick_elide(tc.elide_opts.as_ref(), &listed, &cfg.elide_versions)
        .map_err(|e| TaskError::Permanent(e.to_string()))?;
    // What runs (and whose install dir the sandbox shows) must be as safe as the fingerprint
    // found it: resolved, root's, writable by no one else.
    let elide = fingerprint::trusted(&picked)
        .map_err(|e| TaskError::Recoverable(format!("cannot run Elide: {e}")))?;
    let executor = match bins.executor {
        Located::Found(p) => fingerprint::trusted(&p)
            .map_err(|e| TaskError::Recoverable(format!("cannot run the elide-executor: {e}")))?,
        Located::Missing { searched } => {
            return Err(TaskError::Recoverable(format!(
                "elide-executor not found (searched {}); install it or set executor_binary",
                fingerprint::searched_list(&searched)
            )))
        }
    };
    // `elide` is canonical: its directory is the real install dir.
    let elide_home = elide
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let resolv_conf = std::fs::canonicalize("/etc/resolv.conf")
        .ok()
        .filter(|p| p != Path::new("/etc/resolv.conf"));
    Ok(NodeFacts {
        host_dns: wants_dns.then(host_dns),
        elide_home,
        resolv_conf,
        script_dir,
        elide,
        executor,
        script,
        task_tmp_exists: task_dir.join("tmp").is_dir(),
        events,
    })
}

/// The Elide binaries the operator lets jobs run, each as `(name, configured path, canonical
/// path)`: the default (name None: `elide_binary`, or the one found on the node) and the
/// `elide_versions`.
pub(super) type Choice = (Option<String>, PathBuf, Option<PathBuf>);

fn elide_choices(cfg: &PluginConfig, default: Option<&Path>) -> Vec<Choice> {
    let entry = |name: Option<&String>, p: &Path| {
        (
            name.cloned(),
            p.to_path_buf(),
            std::fs::canonicalize(p).ok(),
        )
    };
    default
        .map(|p| entry(None, p))
        .into_iter()
        .chain(cfg.elide_versions.iter().map(|(n, p)| entry(Some(n), p)))
        .collect()
}

/// Why a job's choice of Elide is refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum PickError {
    #[error(
        "config.elide_opts.elide_version {name:?} is not an Elide version of this node; {allowed}"
    )]
    UnknownVersion { name: String, allowed: String },
    #[error("config.elide_opts.elide_binary {path:?} is not an Elide binary the operator allows: a job may only pick one the plugin config lists; {allowed}")]
    NotListed { path: String, allowed: String },
}

/// What a job may pick, for the errors: the names, or that there is nothing to pick.
fn allowed_list(
    listed: &[Choice],
    versions: &std::collections::BTreeMap<String, PathBuf>,
) -> String {
    let default = listed
        .iter()
        .find(|(n, _, _)| n.is_none())
        .map(|(_, p, _)| format!("{} (the default; leave elide_binary out)", p.display()));
    if versions.is_empty() {
        return format!(
            "this node lists no elide_versions, so tasks run its default Elide{}; remove elide_opts.elide_binary/elide_version (operators add choices with the plugin's elide_versions)",
            default.map(|d| format!(" {d}")).unwrap_or_default()
        );
    }
    let names: Vec<String> = versions
        .iter()
        .map(|(n, p)| format!("{n:?} ({})", p.display()))
        .collect();
    format!(
        "use elide_version = one of {}{}",
        names.join(", "),
        default
            .map(|d| format!(", or the default {d}"))
            .unwrap_or_default()
    )
}

/// The binary a job runs: the default, an `elide_versions` entry by name, or (the old
/// `elide_binary`) one of those by its exact path. A path is never resolved against
/// anything a job controls: it must equal a listed path or its canonical form.
pub(super) fn pick_elide(
    opts: Option<&crate::config::ElideOpts>,
    listed: &[Choice],
    versions: &std::collections::BTreeMap<String, PathBuf>,
) -> Result<PathBuf, PickError> {
    let allowed = || allowed_list(listed, versions);
    let by_name = |name: Option<&String>| {
        listed
            .iter()
            .find(|(n, _, _)| n.as_ref() == name)
            .map(|(_, p, _)| p.clone())
    };
    match opts {
        Some(o) if o.elide_version.is_some() => {
            let name = o.elide_version.clone().unwrap_or_default();
            by_name(Some(&name)).ok_or_else(|| PickError::UnknownVersion {
                name,
                allowed: allowed(),
            })
        }
        Some(o) if o.elide_binary.is_some() => {
            let want = o.elide_binary.clone().unwrap_or_default();
            listed
                .iter()
                .find(|(_, p, c)| *p == want || c.as_ref() == Some(&want))
                .map(|(_, p, _)| p.clone())
                .ok_or_else(|| PickError::NotListed {
                    path: want.display().to_string(),
                    allowed: allowed(),
                })
        }
        _ => by_name(None).ok_or_else(|| PickError::NotListed {
            path: String::new(),
            allowed: allowed(),
        }),
    }
}

/// The host's resolver lists (what a job's empty `dns {}` lists fall back to); behind
/// systemd-resolved's local stub, which a task's network namespace cannot reach, its upstream
/// servers, as Nomad's exec (Docker's resolvconf) does. No file: nothing to fall back to.
fn host_dns() -> DnsSpec {
    let read =
        |p: &str| DnsSpec::parse_resolv_conf(&std::fs::read_to_string(p).unwrap_or_default());
    let host = read(common::dns::RESOLV_CONF);
    if host.is_resolved_stub() {
        let upstream = read(common::dns::RESOLVED_UPSTREAM);
        if !upstream.servers.is_empty() {
            return upstream;
        }
    }
    host
}

/// Creates each dir (mode 0700) or says which one could not be.
fn make_private_dirs(dirs: &[(PathBuf, &str)]) -> Result<(), TaskError> {
    for (dir, what) in dirs {
        std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| {
                TaskError::Recoverable(format!("cannot create the {what} {}: {e}", dir.display()))
            })?;
    }
    Ok(())
}

/// A launched shim whose task is not running yet: on drop (unless disarmed) it gets SIGTERM,
/// on which a shim before Start removes itself. Never a reused pid (start time checked).
struct UnstartedShim {
    pid: i32,
    start_time: u64,
    armed: bool,
}

impl UnstartedShim {
    async fn new(pid: i32) -> Self {
        let start_time = blocking(move || common::proc::start_time(pid).unwrap_or(0)).await;
        UnstartedShim {
            pid,
            start_time,
            armed: pid > 1 && start_time != 0,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for UnstartedShim {
    fn drop(&mut self) {
        if self.armed && common::proc::is_same_process(self.pid, self.start_time) {
            tracing::info!(
                shim_pid = self.pid,
                "the start did not complete: telling its shim to leave"
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}
