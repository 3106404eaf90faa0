//! The task lifecycle through per-task `elide-executor` shims.
//!
//! The plugin keeps only a cache (`TaskStore`) of what it can rebuild from a task's
//! `driver_state` and its shim; every RPC works the same in a plugin process that never saw the
//! task start.

pub mod command;
pub mod handle;
pub mod launch;
pub mod status;

use crate::plugin::Plugin;
use common::config::TaskConfig;
use common::proto::drivers::*;
use common::proto::executor as shim;
use common::proto::executor::executor_client::ExecutorClient;
use common::spec::{ResourceSpec, TaskSpec, TASK_SPEC_VERSION};
use common::state::TaskState as ShimState;
use handle::{DriverState, HANDLE_VERSION};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::{Code, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// How long the shim may take from spawn to READY before StartTask gives up (recoverable).
const SHIM_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One task as the plugin knows it.
pub struct TaskEntry {
    pub state: DriverState,
    pub config: TaskConfigProto,
    client: tokio::sync::Mutex<Option<ExecutorClient<Channel>>>,
    /// Set once the exit is known (from the shim or its state file).
    exit: Mutex<Option<shim::ExitStatus>>,
    /// Whether the exit's explanation was already published as a task event.
    noted: std::sync::atomic::AtomicBool,
}

pub type TaskConfigProto = common::proto::drivers::TaskConfig;

#[derive(Default)]
pub struct TaskStore {
    tasks: Mutex<HashMap<String, Arc<TaskEntry>>>,
}

impl TaskStore {
    fn get(&self, id: &str) -> Option<Arc<TaskEntry>> {
        self.tasks.lock().ok()?.get(id).cloned()
    }
    fn insert(&self, entry: Arc<TaskEntry>) {
        if let Ok(mut t) = self.tasks.lock() {
            t.insert(entry.state.task_id.clone(), entry);
        }
    }
    fn remove(&self, id: &str) {
        if let Ok(mut t) = self.tasks.lock() {
            t.remove(id);
        }
    }
    pub fn len(&self) -> usize {
        self.tasks.lock().map(|t| t.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn to_timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn exit_result(e: &shim::ExitStatus) -> ExitResult {
    ExitResult {
        exit_code: e.exit_code,
        signal: e.signal,
        oom_killed: e.oom_killed,
    }
}

impl TaskEntry {
    fn new(state: DriverState, config: TaskConfigProto) -> Arc<Self> {
        Arc::new(Self {
            state,
            config,
            client: tokio::sync::Mutex::new(None),
            exit: Mutex::new(None),
            noted: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// True the first time only (concurrent WaitTask callers publish one event).
    fn note_reported(&self) -> bool {
        !self.noted.swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    fn cached_exit(&self) -> Option<shim::ExitStatus> {
        self.exit.lock().ok()?.clone()
    }

    fn set_exit(&self, e: shim::ExitStatus) {
        if let Ok(mut x) = self.exit.lock() {
            *x = Some(e);
        }
    }

    /// A connected client to the shim (dialled lazily, re-dialled after failures).
    async fn client(&self) -> Result<ExecutorClient<Channel>, String> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = common::client::connect(&self.state.socket_path)
            .await
            .map_err(|e| e.to_string())?;
        *guard = Some(c.clone());
        Ok(c)
    }

    async fn forget_client(&self) {
        *self.client.lock().await = None;
    }

    /// The exit result recorded in the shim's state file, if the shim got that far.
    fn exit_from_state_file(&self) -> Option<shim::ExitStatus> {
        let st = ShimState::read(&self.state.state_path).ok()?;
        let e = st.exit?;
        Some(shim::ExitStatus {
            exit_code: e.exit_code,
            signal: e.signal,
            oom_killed: e.oom_killed,
            message: e.message,
            exited_at_unix_ms: e.exited_at_unix_ms,
        })
    }

    fn shim_alive(&self) -> bool {
        common::proc::is_same_process(self.state.shim_pid, self.state.shim_start_time)
    }

    /// Kills what is left of the runtime when its shim is gone (never a reused pid).
    fn kill_orphaned_runtime(&self) -> bool {
        let pid = self.state.runtime_pid;
        if pid > 0 && common::proc::is_same_process(pid, self.state.runtime_start_time) {
            // The runtime leads its own process group (setsid in the shim).
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            return true;
        }
        false
    }

    /// What happened when the shim cannot be reached: its recorded exit, or a clear failure.
    fn exit_without_shim(&self, why: &str) -> shim::ExitStatus {
        if let Some(e) = self.exit_from_state_file() {
            return e;
        }
        let killed = self.kill_orphaned_runtime();
        shim::ExitStatus {
            exit_code: -1,
            signal: 0,
            oom_killed: false,
            message: format!(
                "elide-executor (pid {}) for this task died unexpectedly ({why}) before recording the exit; {}",
                self.state.shim_pid,
                if killed {
                    "its Elide process was killed so it is not left orphaned"
                } else {
                    "its Elide process is gone too"
                }
            ),
            exited_at_unix_ms: now_ms(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// StartTask

pub async fn start(plugin: &Plugin, req: StartTaskRequest) -> Result<StartTaskResponse, Status> {
    let task = req
        .task
        .ok_or_else(|| Status::invalid_argument("StartTask without a task config"))?;
    if plugin.tasks.get(&task.id).is_some() {
        return Err(Status::already_exists(format!(
            "task {} is already started",
            task.id
        )));
    }
    let cfg = plugin.config();
    let tc = TaskConfig::from_msgpack(&task.msgpack_driver_config)
        .map_err(|e| status::permanent(format!("invalid elide task config: {e}")))?;

    let alloc_dir = PathBuf::from(&task.alloc_dir);
    let task_dir = alloc_dir.join(&task.name);
    let script = check_script(&tc.script, &task_dir, |msg| {
        plugin.emit(&task.id, &task.alloc_id, &task.name, msg)
    })?;

    // Binaries: the task may pick its own Elide; the shim comes from the plugin config.
    let bins = crate::fingerprint::locate_binaries(&cfg);
    let elide = match tc.elide_opts.as_ref().and_then(|o| o.elide_binary.clone()) {
        Some(p) => match crate::fingerprint::locate(
            Some(&p),
            "elide",
            std::env::var("PATH").ok().as_deref(),
            &[],
        ) {
            crate::fingerprint::Located::Found(p) => p,
            crate::fingerprint::Located::Missing { .. } => {
                return Err(status::permanent(format!(
                    "elide_opts.elide_binary {} does not exist or is not executable; fix the job's elide_binary or remove it to use the node's Elide",
                    p.display()
                )))
            }
        },
        None => match bins.elide {
            crate::fingerprint::Located::Found(p) => p,
            crate::fingerprint::Located::Missing { searched } => {
                return Err(status::recoverable(format!(
                    "Elide not found on this node (searched {}); install it or set elide_binary",
                    searched
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        },
    };
    let executor = match bins.executor {
        crate::fingerprint::Located::Found(p) => p,
        crate::fingerprint::Located::Missing { searched } => {
            return Err(status::recoverable(format!(
                "elide-executor not found (searched {}); install it or set executor_binary",
                searched
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };

    let nomad_env: BTreeMap<String, String> = task.env.clone().into_iter().collect();
    let (memory_mb, memory_max_mb, cpu_shares, cpuset_cpus, nomad_cgroup) =
        resources_of(task.resources.as_ref());
    let hard_limit = if memory_max_mb > 0 {
        memory_max_mb
    } else {
        memory_mb
    };
    let argv = command::argv(&command::CommandInput {
        elide: &elide,
        plugin: &cfg,
        task: &tc,
        nomad_env: &nomad_env,
        script: &script,
        task_hard_limit_mb: hard_limit,
        task_dir: &task_dir,
    });
    let env = command::environment(&nomad_env, &tc, &task_dir, &alloc_dir);

    let socket_path = common::paths::socket_path(&cfg.runtime_dir, &task.id)
        .map_err(|e| status::permanent(e.to_string()))?;
    let state_dir = common::paths::state_dir(&alloc_dir, &task.id);
    for (dir, what) in [
        (&cfg.runtime_dir, "runtime_dir"),
        (&state_dir, "task state dir"),
    ] {
        std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| {
                status::recoverable(format!("cannot create the {what} {}: {e}", dir.display()))
            })?;
    }
    let netns_path = task
        .network_isolation_spec
        .as_ref()
        .filter(|n| !n.path.is_empty())
        .map(|n| PathBuf::from(&n.path));
    let spec = TaskSpec {
        version: TASK_SPEC_VERSION,
        task_id: task.id.clone(),
        alloc_id: task.alloc_id.clone(),
        job_id: task.job_id.clone(),
        task_group: task.task_group_name.clone(),
        task_name: task.name.clone(),
        namespace: task.namespace.clone(),
        argv,
        env,
        cwd: task_dir.clone(),
        stdout_path: nonempty_path(&task.stdout_path),
        stderr_path: nonempty_path(&task.stderr_path),
        fifo_open_timeout_ms: cfg.fifo_open_timeout.as_millis() as u64,
        user: task.user.clone(),
        socket_path: socket_path.clone(),
        state_path: state_dir.join("state.json"),
        netns_path,
        resources: ResourceSpec {
            memory_mb,
            memory_max_mb: hard_limit,
            cpu_shares,
            cpuset_cpus,
            nomad_cgroup,
            pids_limit: tc.pids_limit.unwrap_or(cfg.pids_limit),
            mhz_per_core: plugin.mhz_per_core(),
        },
        linger_after_exit_secs: 300,
    };

    let launch_started = std::time::Instant::now();
    let launched = launch::launch_shim(&executor, &spec, SHIM_READY_TIMEOUT)
        .await
        .map_err(|e| {
            let msg = format!("cannot start the task's elide-executor: {e}");
            if e.is_recoverable() {
                status::recoverable(msg)
            } else {
                status::permanent(msg)
            }
        })?;

    tracing::debug!(
        task_id = %task.id,
        shim_pid = launched.shim_pid,
        shim_ready_us = launch_started.elapsed().as_micros() as u64,
        "shim ready"
    );
    // The shim is up; ask it to start the runtime.
    let mut client = match common::client::connect(&socket_path).await {
        Ok(c) => c,
        Err(e) => {
            return Err(status::recoverable(format!(
                "elide-executor (pid {}) reported ready but its socket {} does not answer: {e}",
                launched.shim_pid,
                socket_path.display()
            )))
        }
    };
    let started = match client.start(shim::StartRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            // No orphaned shim: it goes away with its state.
            let _ = client.shutdown(shim::ShutdownRequest {}).await;
            let msg = s.message().to_owned();
            return Err(if s.code() == Code::Unavailable {
                status::recoverable(msg)
            } else {
                status::permanent(msg)
            });
        }
    };
    let shim_start_time = common::proc::start_time(launched.shim_pid).unwrap_or(0);
    let version = plugin.elide_version().unwrap_or_default();
    plugin.emit(
        &task.id,
        &task.alloc_id,
        &task.name,
        if version.is_empty() {
            format!("Starting Elide: {script}")
        } else {
            format!("Starting Elide {version}: {script}")
        },
    );
    let state = DriverState {
        version: HANDLE_VERSION,
        task_id: task.id.clone(),
        alloc_id: task.alloc_id.clone(),
        task_name: task.name.clone(),
        socket_path,
        state_path: spec.state_path.clone(),
        shim_pid: launched.shim_pid,
        shim_start_time,
        runtime_pid: started.pid,
        runtime_start_time: started.pid_start_time,
        started_at_unix_ms: started.started_at_unix_ms,
        elide_version: version,
        script: script.clone(),
        shim_api_level: started.api_level,
        executor_version: started.executor_version.clone(),
    };
    let handle = TaskHandle {
        version: HANDLE_VERSION,
        config: Some(task.clone()),
        state: common::proto::drivers::TaskState::Running as i32,
        driver_state: state.encode(),
    };
    let entry = TaskEntry::new(state, task);
    *entry.client.lock().await = Some(client);
    plugin.tasks.insert(entry);
    Ok(StartTaskResponse {
        result: start_task_response::Result::Success as i32,
        driver_error_msg: String::new(),
        handle: Some(handle),
        network_override: None,
    })
}

fn nonempty_path(p: &str) -> PathBuf {
    if p.is_empty() {
        PathBuf::from("/dev/null")
    } else {
        PathBuf::from(p)
    }
}

fn resources_of(r: Option<&Resources>) -> (u64, u64, u64, String, String) {
    let Some(r) = r else {
        return (0, 0, 0, String::new(), String::new());
    };
    let alloc = r.allocated_resources.as_ref();
    let mem = alloc.and_then(|a| a.memory.as_ref());
    let memory_mb = mem.map(|m| m.memory_mb.max(0) as u64).unwrap_or(0);
    let memory_max_mb = mem.map(|m| m.memory_max_mb.max(0) as u64).unwrap_or(0);
    let lr = r.linux_resources.as_ref();
    let cpu = alloc
        .and_then(|a| a.cpu.as_ref())
        .map(|c| c.cpu_shares.max(0) as u64)
        .or_else(|| lr.map(|l| l.cpu_shares.max(0) as u64))
        .unwrap_or(0);
    (
        memory_mb,
        memory_max_mb,
        cpu,
        lr.map(|l| l.cpuset_cpus.clone()).unwrap_or_default(),
        lr.map(|l| l.cpuset_cgroup.clone()).unwrap_or_default(),
    )
}

/// Validates the script and returns the path to give Elide (relative to the task dir when
/// it is inside it). Elide runs an *executable* file as a host program instead of
/// interpreting it (elide-cli.md §1), so execute bits on a script in the task dir are cleared.
fn check_script(
    script: &str,
    task_dir: &Path,
    mut event: impl FnMut(String),
) -> Result<String, Status> {
    let given = Path::new(script);
    let abs = if given.is_absolute() {
        given.to_path_buf()
    } else {
        task_dir.join(given)
    };
    let meta = std::fs::metadata(&abs).map_err(|e| {
        status::permanent(format!(
            "script {script} not found ({}: {e}); create it in the task dir with a template or artifact block, or fix `script`",
            abs.display()
        ))
    })?;
    if !meta.is_file() {
        return Err(status::permanent(format!(
            "script {script} ({}) is not a regular file",
            abs.display()
        )));
    }
    if meta.permissions().mode() & 0o111 != 0 && abs.starts_with(task_dir) {
        let mode = meta.permissions().mode() & !0o111;
        match std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(mode)) {
            Ok(()) => event(format!(
                "Cleared the execute bits of {script}: Elide would run an executable file as a host program instead of interpreting it"
            )),
            Err(e) => {
                return Err(status::permanent(format!(
                    "script {script} is executable and its execute bits cannot be cleared ({e}); Elide would run it as a host program. Use perms = \"644\""
                )))
            }
        }
    }
    Ok(match abs.strip_prefix(task_dir) {
        Ok(rel) => rel.display().to_string(),
        Err(_) => abs.display().to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// RecoverTask

pub async fn recover(plugin: &Plugin, req: RecoverTaskRequest) -> Result<(), Status> {
    let handle = req
        .handle
        .ok_or_else(|| Status::invalid_argument("RecoverTask without a task handle"))?;
    let config = handle
        .config
        .clone()
        .ok_or_else(|| Status::invalid_argument("RecoverTask handle has no task config"))?;
    if plugin.tasks.get(&config.id).is_some() {
        return Ok(());
    }
    let state = DriverState::decode(&handle.driver_state).map_err(|e| {
        Status::failed_precondition(format!("cannot recover task {}: {e}", config.id))
    })?;
    crate::shim_compat::supported(&state)?;
    if state.task_id != config.id {
        return Err(Status::failed_precondition(format!(
            "task handle for {} holds the state of task {}; refusing to adopt it",
            config.id, state.task_id
        )));
    }
    let entry = TaskEntry::new(state, config);
    match entry.client().await {
        Ok(mut c) => {
            let st = c
                .status(shim::StatusRequest {})
                .await
                .map_err(|s| crate::shim_compat::status_refused(&entry.state, &s))?
                .into_inner();
            // Identity: same task, same runtime process (never a reused pid).
            if st.task_id != entry.state.task_id
                || (st.runtime_pid != 0
                    && (st.runtime_pid != entry.state.runtime_pid
                        || st.runtime_start_time != entry.state.runtime_start_time))
            {
                return Err(Status::failed_precondition(format!(
                    "the shim at {} serves task {} (runtime pid {}), not task {} (runtime pid {}); refusing to adopt it",
                    entry.state.socket_path.display(),
                    st.task_id,
                    st.runtime_pid,
                    entry.state.task_id,
                    entry.state.runtime_pid
                )));
            }
            if let Some(e) = st.exit {
                entry.set_exit(e);
            }
            tracing::info!(task_id = %entry.state.task_id, shim_pid = st.shim_pid, "reattached to running shim");
        }
        Err(dial) => {
            entry.forget_client().await;
            match entry.exit_from_state_file() {
                Some(e) => {
                    tracing::info!(task_id = %entry.state.task_id, exit_code = e.exit_code, "shim gone; exit result recovered from its state file");
                    entry.set_exit(e);
                }
                None => {
                    let killed = entry.kill_orphaned_runtime();
                    return Err(Status::failed_precondition(format!(
                        "cannot recover task {}: its elide-executor is gone ({dial}) and recorded no exit{}; Nomad will restart the task",
                        entry.state.task_id,
                        if killed { "; the orphaned Elide process was killed" } else { "" }
                    )));
                }
            }
        }
    }
    plugin.tasks.insert(entry);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// WaitTask

pub async fn wait(plugin: &Plugin, task_id: &str) -> WaitTaskResponse {
    let Some(entry) = plugin.tasks.get(task_id) else {
        return WaitTaskResponse {
            result: Some(ExitResult::default()),
            err: format!("task not found for given id: {task_id}"),
        };
    };
    let exit = wait_entry(&entry).await;
    if !exit.message.is_empty() && entry.note_reported() {
        // OOM kills, stop escalations and shim deaths, as a Driver event naming the cause.
        plugin.emit(
            &entry.state.task_id,
            &entry.state.alloc_id,
            &entry.state.task_name,
            exit.message.clone(),
        );
    }
    let err = if exit.exit_code == -1 && !exit.message.is_empty() {
        exit.message.clone()
    } else {
        String::new()
    };
    WaitTaskResponse {
        result: Some(exit_result(&exit)),
        err,
    }
}

async fn wait_entry(entry: &TaskEntry) -> shim::ExitStatus {
    if let Some(e) = entry.cached_exit() {
        return e;
    }
    // A transport error while the shim is alive (e.g. a hiccup) is retried; a dead shim ends it.
    let mut attempts = 0u32;
    loop {
        match entry.client().await {
            Ok(mut c) => match c.wait(shim::WaitRequest {}).await {
                Ok(r) => {
                    if let Some(e) = r.into_inner().exit {
                        entry.set_exit(e.clone());
                        return e;
                    }
                }
                Err(s) => {
                    tracing::warn!(task_id = %entry.state.task_id, error = %s.message(), "wait on shim failed");
                    entry.forget_client().await;
                }
            },
            Err(e) => {
                tracing::warn!(task_id = %entry.state.task_id, error = %e, "cannot reach shim");
            }
        }
        if let Some(e) = entry.exit_from_state_file() {
            entry.set_exit(e.clone());
            return e;
        }
        if !entry.shim_alive() {
            let e = entry.exit_without_shim("its control socket stopped answering");
            entry.set_exit(e.clone());
            return e;
        }
        attempts += 1;
        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempts.min(20)))).await;
    }
}

// ---------------------------------------------------------------------------------------------
// StopTask, SignalTask, DestroyTask

pub async fn stop(plugin: &Plugin, req: StopTaskRequest) -> Result<(), Status> {
    let Some(entry) = plugin.tasks.get(&req.task_id) else {
        // Unknown or already destroyed: nothing to stop (an error would only make Nomad retry).
        return Ok(());
    };
    if entry.cached_exit().is_some() {
        return Ok(());
    }
    let timeout = req
        .timeout
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(Duration::from_secs(5));
    let signal = if req.signal.is_empty() {
        "SIGTERM".to_owned()
    } else {
        req.signal.clone()
    };
    tracing::info!(task_id = %req.task_id, signal = %signal, timeout_ms = timeout.as_millis() as u64, "stopping task");
    match entry.client().await {
        Ok(mut c) => {
            match c
                .stop(shim::StopRequest {
                    signal: signal.clone(),
                    timeout_ms: timeout.as_millis() as u64,
                })
                .await
            {
                Ok(r) => {
                    if let Some(e) = r.into_inner().exit {
                        entry.set_exit(e);
                    }
                    Ok(())
                }
                Err(s) if s.code() == Code::InvalidArgument => Err(Status::invalid_argument(
                    format!("cannot stop task {}: {}", req.task_id, s.message()),
                )),
                Err(s) => {
                    entry.forget_client().await;
                    stop_without_shim(&entry, s.message())
                }
            }
        }
        Err(e) => stop_without_shim(&entry, &e),
    }
}

fn stop_without_shim(entry: &TaskEntry, why: &str) -> Result<(), Status> {
    if entry.shim_alive() {
        return Err(Status::unavailable(format!(
            "elide-executor (pid {}) of task {} is alive but does not answer ({why}); retry",
            entry.state.shim_pid, entry.state.task_id
        )));
    }
    let e = entry.exit_without_shim(why);
    entry.set_exit(e);
    Ok(())
}

pub async fn signal(plugin: &Plugin, req: SignalTaskRequest) -> Result<(), Status> {
    let entry = plugin
        .tasks
        .get(&req.task_id)
        .ok_or_else(|| status::not_found(&req.task_id))?;
    let mut c = entry
        .client()
        .await
        .map_err(|e| Status::unavailable(format!("cannot reach the task's elide-executor: {e}")))?;
    c.signal(shim::SignalRequest {
        signal: req.signal.clone(),
    })
    .await
    .map_err(|s| Status::new(s.code(), format!("cannot signal task: {}", s.message())))?;
    Ok(())
}

pub async fn destroy(plugin: &Plugin, req: DestroyTaskRequest) -> Result<(), Status> {
    let Some(entry) = plugin.tasks.get(&req.task_id) else {
        return Ok(());
    };
    let running = entry.cached_exit().is_none() && entry.exit_from_state_file().is_none();
    if running && !req.force {
        return Err(Status::failed_precondition(format!(
            "cannot destroy running task {}; stop it first or destroy with force",
            req.task_id
        )));
    }
    match entry.client().await {
        Ok(mut c) => {
            if let Err(s) = c.shutdown(shim::ShutdownRequest {}).await {
                // The shim exits while answering; only a refusal while alive matters.
                tracing::debug!(task_id = %req.task_id, error = %s.message(), "shim shutdown");
            }
        }
        Err(_) => {
            entry.kill_orphaned_runtime();
        }
    }
    // Whatever the shim did not get to: socket, index entry, state dir.
    let _ = std::fs::remove_file(&entry.state.socket_path);
    if let Some(dir) = entry.state.socket_path.parent() {
        let _ = std::fs::remove_file(common::paths::index_link(dir, &entry.state.task_id));
    }
    if let Some(dir) = entry.state.state_path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    plugin.tasks.remove(&req.task_id);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// InspectTask, TaskStats

pub async fn inspect(plugin: &Plugin, task_id: &str) -> Result<InspectTaskResponse, Status> {
    let entry = plugin
        .tasks
        .get(task_id)
        .ok_or_else(|| status::not_found(task_id))?;
    let exit = entry.cached_exit().or_else(|| entry.exit_from_state_file());
    let state = if exit.is_some() {
        common::proto::drivers::TaskState::Exited
    } else {
        common::proto::drivers::TaskState::Running
    };
    let mut attributes = HashMap::new();
    attributes.insert("shim_pid".to_owned(), entry.state.shim_pid.to_string());
    attributes.insert(
        "runtime_pid".to_owned(),
        entry.state.runtime_pid.to_string(),
    );
    attributes.insert(
        "socket".to_owned(),
        entry.state.socket_path.display().to_string(),
    );
    Ok(InspectTaskResponse {
        task: Some(TaskStatus {
            id: entry.state.task_id.clone(),
            name: entry.state.task_name.clone(),
            state: state as i32,
            started_at: Some(to_timestamp(entry.state.started_at_unix_ms)),
            completed_at: Some(to_timestamp(
                exit.as_ref().map(|e| e.exited_at_unix_ms).unwrap_or(0),
            )),
            result: Some(exit.as_ref().map(exit_result).unwrap_or_default()),
        }),
        driver: Some(TaskDriverStatus { attributes }),
        network_override: None,
    })
}

pub async fn stats(
    plugin: &Plugin,
    req: TaskStatsRequest,
) -> Result<BoxStream<TaskStatsResponse>, Status> {
    let entry = plugin
        .tasks
        .get(&req.task_id)
        .ok_or_else(|| status::not_found(&req.task_id))?;
    let interval = req
        .collection_interval
        .and_then(|d| Duration::try_from(d).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(1));
    let mut c = entry
        .client()
        .await
        .map_err(|e| Status::unavailable(format!("cannot reach the task's elide-executor: {e}")))?;
    let inbound = c
        .stats(shim::StatsRequest {
            interval_ms: interval.as_millis() as u64,
        })
        .await?
        .into_inner();
    let mhz_per_core = plugin.mhz_per_core();
    let task_id = req.task_id.clone();
    use tokio_stream::StreamExt;
    let out = inbound.map(move |u| {
        u.map(|u| TaskStatsResponse {
            stats: Some(crate::stats::to_task_stats(&task_id, &u, mhz_per_core)),
        })
    });
    Ok(Box::pin(out))
}
