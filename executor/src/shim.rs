//! One shim: the task's state, the runtime child, the reaper, and the control API.

use crate::fifo;
use crate::runtime;
use crate::stats::Sampler;
use common::cgroup::{self, TaskCgroup};
use common::proto::executor::{self as api, executor_server::Executor};
use common::spec::TaskSpec;
use common::state::{ExitRecord, TaskState, STATE_VERSION};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Notify};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// How long to wait for the runtime to die after SIGKILL before reporting.
const KILL_WAIT: Duration = Duration::from_secs(15);

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub struct Shim {
    pub spec: TaskSpec,
    state: Mutex<TaskState>,
    exit_tx: watch::Sender<Option<api::ExitStatus>>,
    cgroup: Mutex<Option<TaskCgroup>>,
    /// Our never-read read ends of the log FIFOs (see fifo::Sink).
    keepalive: Mutex<Vec<OwnedFd>>,
    /// Set when Stop escalated to SIGKILL, to explain the exit.
    kill_note: Mutex<Option<String>>,
    pub shutdown: Notify,
}

impl Shim {
    pub fn new(spec: TaskSpec) -> Arc<Self> {
        let me = std::process::id() as i32;
        let state = TaskState {
            version: STATE_VERSION,
            spec: spec.clone(),
            shim_pid: me,
            shim_start_time: common::proc::start_time(me).unwrap_or(0),
            boot_id: common::proc::boot_id(),
            runtime_pid: None,
            runtime_start_time: None,
            started_at_unix_ms: None,
            cgroup: None,
            exit: None,
        };
        let (exit_tx, _) = watch::channel(None);
        Arc::new(Shim {
            spec,
            state: Mutex::new(state),
            exit_tx,
            cgroup: Mutex::new(None),
            keepalive: Mutex::new(Vec::new()),
            kill_note: Mutex::new(None),
            shutdown: Notify::new(),
        })
    }

    pub fn snapshot(&self) -> TaskState {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn update(&self, f: impl FnOnce(&mut TaskState)) -> Result<(), common::state::StateError> {
        let snapshot = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut s);
            s.clone()
        };
        snapshot.write(&self.spec.state_path)
    }

    pub fn persist(&self) -> Result<(), common::state::StateError> {
        self.update(|_| {})
    }

    pub fn runtime_pid(&self) -> Option<i32> {
        self.state.lock().ok()?.runtime_pid
    }

    pub fn exit(&self) -> Option<api::ExitStatus> {
        self.exit_tx.borrow().clone()
    }

    pub fn subscribe_exit(&self) -> watch::Receiver<Option<api::ExitStatus>> {
        self.exit_tx.subscribe()
    }

    /// Waits for the exit, at most `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<api::ExitStatus> {
        let mut rx = self.exit_tx.subscribe();
        let r = tokio::time::timeout(timeout, rx.wait_for(|e| e.is_some())).await;
        match r {
            Ok(Ok(e)) => e.clone(),
            _ => self.exit(),
        }
    }

    /// Opens the log sinks, sets up the cgroup and spawns the runtime.
    pub async fn start(&self) -> Result<api::StartResponse, Status> {
        if self.runtime_pid().is_some() {
            return Err(Status::already_exists(
                "the runtime was already started by this shim",
            ));
        }
        let timeout = Duration::from_millis(self.spec.fifo_open_timeout_ms.max(1));
        let map = |e: fifo::FifoError| {
            if e.is_recoverable() {
                Status::unavailable(e.to_string())
            } else {
                Status::failed_precondition(e.to_string())
            }
        };
        let out = fifo::open_sink(&self.spec.stdout_path, timeout)
            .await
            .map_err(map)?;
        let err = fifo::open_sink(&self.spec.stderr_path, timeout)
            .await
            .map_err(map)?;

        let cg = self.make_cgroup();
        let procs = cg.as_ref().map(|c| c.procs_files()).unwrap_or_default();
        let spawned = runtime::spawn(&self.spec, out.write, err.write, procs).map_err(|e| {
            if let Some(c) = &cg {
                c.remove();
            }
            Status::failed_precondition(e.to_string())
        })?;
        if let Ok(mut k) = self.keepalive.lock() {
            k.extend(out.keepalive);
            k.extend(err.keepalive);
        }
        let pid = spawned.pid;
        let start_time = common::proc::start_time(pid).unwrap_or(0);
        let started = now_ms();
        let cg_desc = cg.as_ref().map(|c| {
            c.dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(",")
        });
        if let Ok(mut g) = self.cgroup.lock() {
            *g = cg;
        }
        self.update(|s| {
            s.runtime_pid = Some(pid);
            s.runtime_start_time = Some(start_time);
            s.started_at_unix_ms = Some(started);
            s.cgroup = cg_desc;
        })
        .map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(pid, argv = ?self.spec.argv, "runtime started");
        // The child may already have exited before its pid was recorded.
        self.reap();
        Ok(api::StartResponse {
            pid,
            pid_start_time: start_time,
            started_at_unix_ms: started,
        })
    }

    fn make_cgroup(&self) -> Option<TaskCgroup> {
        let root = std::path::Path::new(cgroup::DEFAULT_ROOT);
        let version = cgroup::detect(root)?;
        let key = common::paths::task_key(&self.spec.task_id);
        let name = match version {
            cgroup::Version::V2 => format!("elide.slice/{key}"),
            cgroup::Version::V1 => format!("nomad-elide/{key}"),
        };
        match TaskCgroup::create(root, version, &name, &self.spec.resources.nomad_cgroup) {
            Ok(cg) => {
                for note in cg.apply(&self.spec.resources) {
                    tracing::warn!(note, "cgroup limit not applied");
                }
                Some(cg)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no task cgroup (limits and cgroup stats off)");
                None
            }
        }
    }

    /// Reaps every exited child (we are a subreaper); records the runtime's exit.
    pub fn reap(&self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.on_exit(pid.as_raw(), code, 0),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.on_exit(pid.as_raw(), 128 + sig as i32, sig as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    }

    fn on_exit(&self, pid: i32, exit_code: i32, signal: i32) {
        if Some(pid) != self.runtime_pid() || self.exit().is_some() {
            return;
        }
        // Whatever the runtime left in its group or cgroup goes with it.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let cg = self.cgroup.lock().ok().and_then(|c| c.clone());
        let mut oom = false;
        if let Some(c) = &cg {
            oom = c.oom_kills() > 0;
            c.kill_all();
        }
        let mut message = self
            .kill_note
            .lock()
            .ok()
            .and_then(|n| n.clone())
            .unwrap_or_default();
        if oom {
            let limit = self.spec.resources.memory_max_mb;
            message = format!("OOM killed: the task exceeded its memory limit of {limit} MiB");
        }
        let exit = api::ExitStatus {
            exit_code,
            signal,
            oom_killed: oom,
            message: message.clone(),
            exited_at_unix_ms: now_ms(),
        };
        let record = ExitRecord {
            exit_code,
            signal,
            oom_killed: oom,
            message,
            exited_at_unix_ms: exit.exited_at_unix_ms,
        };
        if let Err(e) = self.update(|s| s.exit = Some(record)) {
            tracing::error!(error = %e, "cannot persist the exit result");
        }
        tracing::info!(pid, exit_code, signal, oom, "runtime exited");
        if let Ok(mut k) = self.keepalive.lock() {
            k.clear();
        }
        self.exit_tx.send_replace(Some(exit));
        if let Some(c) = cg {
            c.remove();
        }
    }

    /// Signal → grace → SIGKILL the group/cgroup. Returns the exit.
    pub async fn stop(
        &self,
        signal: Option<Signal>,
        timeout: Duration,
    ) -> Result<api::ExitStatus, Status> {
        if let Some(e) = self.exit() {
            return Ok(e);
        }
        let Some(pid) = self.runtime_pid() else {
            return Err(Status::failed_precondition("the runtime was never started"));
        };
        if let Some(sig) = signal {
            let _ = kill(Pid::from_raw(pid), sig);
        }
        if !timeout.is_zero() {
            if let Some(e) = self.wait_exit(timeout).await {
                return Ok(e);
            }
        }
        if let Ok(mut n) = self.kill_note.lock() {
            *n = Some(format!(
                "killed with SIGKILL after the {}s stop timeout",
                timeout.as_secs_f64()
            ));
        }
        self.kill_everything(pid);
        self.wait_exit(KILL_WAIT).await.ok_or_else(|| {
            Status::deadline_exceeded(format!(
                "runtime pid {pid} survived SIGKILL for {KILL_WAIT:?}"
            ))
        })
    }

    fn kill_everything(&self, pid: i32) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        if let Some(c) = self.cgroup.lock().ok().and_then(|c| c.clone()) {
            c.kill_all();
        }
    }

    /// Kills what is running and removes socket, index link and state.
    pub async fn teardown(&self) {
        if self.exit().is_none() {
            if let Some(pid) = self.runtime_pid() {
                self.kill_everything(pid);
                let _ = self.wait_exit(Duration::from_secs(5)).await;
            }
        }
        self.remove_socket();
        if let Some(dir) = self.spec.state_path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    pub fn index_link(&self) -> Option<std::path::PathBuf> {
        self.spec
            .socket_path
            .parent()
            .map(|d| common::paths::index_link(d, &self.spec.task_id))
    }

    pub fn remove_socket(&self) {
        let _ = std::fs::remove_file(&self.spec.socket_path);
        if let Some(l) = self.index_link() {
            let _ = std::fs::remove_file(l);
        }
    }
}

/// The tonic service.
pub struct Service {
    pub shim: Arc<Shim>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Executor for Service {
    async fn start(
        &self,
        _r: Request<api::StartRequest>,
    ) -> Result<Response<api::StartResponse>, Status> {
        self.shim.start().await.map(Response::new)
    }

    async fn wait(
        &self,
        _r: Request<api::WaitRequest>,
    ) -> Result<Response<api::WaitResponse>, Status> {
        if self.shim.runtime_pid().is_none() {
            return Err(Status::failed_precondition("the runtime was never started"));
        }
        let mut rx = self.shim.subscribe_exit();
        let exit = rx
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| Status::unavailable("the shim is shutting down"))?
            .clone();
        Ok(Response::new(api::WaitResponse { exit }))
    }

    async fn stop(
        &self,
        r: Request<api::StopRequest>,
    ) -> Result<Response<api::StopResponse>, Status> {
        let r = r.into_inner();
        let name = if r.signal.is_empty() {
            "SIGTERM"
        } else {
            r.signal.as_str()
        };
        let sig =
            common::signals::parse(name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let exit = self
            .shim
            .stop(sig, Duration::from_millis(r.timeout_ms))
            .await?;
        Ok(Response::new(api::StopResponse { exit: Some(exit) }))
    }

    async fn signal(
        &self,
        r: Request<api::SignalRequest>,
    ) -> Result<Response<api::SignalResponse>, Status> {
        let r = r.into_inner();
        let sig = common::signals::parse(&r.signal)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let pid = self
            .shim
            .runtime_pid()
            .filter(|_| self.shim.exit().is_none())
            .ok_or_else(|| Status::failed_precondition("the task is not running"))?;
        kill(Pid::from_raw(pid), sig).map_err(|e| Status::internal(format!("kill({pid}): {e}")))?;
        tracing::info!(pid, signal = %r.signal, "signal delivered");
        Ok(Response::new(api::SignalResponse {}))
    }

    async fn status(
        &self,
        _r: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        let s = self.shim.snapshot();
        let exit = self.shim.exit();
        let state = match (s.runtime_pid, &exit) {
            (_, Some(_)) => api::TaskState::Exited,
            (Some(_), None) => api::TaskState::Running,
            (None, None) => api::TaskState::Pending,
        };
        let memory = match (s.runtime_pid, &exit) {
            (Some(p), None) => common::proc::rss_bytes(p).unwrap_or(0),
            _ => 0,
        };
        Ok(Response::new(api::StatusResponse {
            task_id: s.spec.task_id.clone(),
            alloc_id: s.spec.alloc_id.clone(),
            job_id: s.spec.job_id.clone(),
            task_name: s.spec.task_name.clone(),
            shim_pid: s.shim_pid,
            runtime_pid: s.runtime_pid.unwrap_or(0),
            runtime_start_time: s.runtime_start_time.unwrap_or(0),
            state: state as i32,
            started_at_unix_ms: s.started_at_unix_ms.unwrap_or(0),
            exit,
            socket_path: s.spec.socket_path.display().to_string(),
            state_path: s.spec.state_path.display().to_string(),
            executor_version: VERSION.to_owned(),
            memory_bytes: memory,
            cgroup: s.cgroup.unwrap_or_default(),
        }))
    }

    type StatsStream = BoxStream<api::ResourceUsage>;

    async fn stats(
        &self,
        r: Request<api::StatsRequest>,
    ) -> Result<Response<Self::StatsStream>, Status> {
        let interval = Duration::from_millis(r.into_inner().interval_ms.max(100));
        let shim = self.shim.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let cg = shim.cgroup.lock().ok().and_then(|c| c.clone());
            let mut sampler = Sampler::new(cg, shim.runtime_pid());
            let mut exited = shim.subscribe_exit();
            loop {
                if tx.send(Ok(sampler.sample())).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = tx.closed() => return,
                    _ = exited.wait_for(|e| e.is_some()) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn shutdown(
        &self,
        _r: Request<api::ShutdownRequest>,
    ) -> Result<Response<api::ShutdownResponse>, Status> {
        self.shim.teardown().await;
        self.shim.shutdown.notify_one();
        Ok(Response::new(api::ShutdownResponse {}))
    }
}
