//! One task as the plugin knows it: its `driver_state`, a cached client to its shim, and its
//! exit once known. When the shim is gone, the exit comes from the state file it wrote, and
//! what is left of the runtime is killed so it is never orphaned.

use super::blocking;
use super::handle::DriverState;
use common::proto::executor as shim;
use common::proto::executor::executor_client::ExecutorClient;
use common::state::TaskState as ShimState;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tonic::transport::Channel;

pub struct TaskEntry {
    pub state: DriverState,
    client: tokio::sync::Mutex<Option<ExecutorClient<Channel>>>,
    /// Set once the exit is known (from the shim or its state file).
    exit: Mutex<Option<shim::ExitStatus>>,
    /// Whether the exit's explanation was already published as a task event.
    noted: AtomicBool,
    /// The task that forwards the shim's events (see `logs`), stopped with the entry.
    event_forwarder: Mutex<Option<tokio::task::AbortHandle>>,
    /// The stdout FIFO of a task whose logmon Nomad no longer manages (see `logs`).
    orphaned_logmon_fifo: Mutex<Option<PathBuf>>,
}

impl Drop for TaskEntry {
    fn drop(&mut self) {
        if let Some(f) = self.event_forwarder.get_mut().ok().and_then(|f| f.take()) {
            f.abort();
        }
    }
}

impl TaskEntry {
    pub fn new(state: DriverState) -> Arc<Self> {
        Arc::new(Self {
            state,
            client: tokio::sync::Mutex::new(None),
            exit: Mutex::new(None),
            noted: AtomicBool::new(false),
            event_forwarder: Mutex::new(None),
            orphaned_logmon_fifo: Mutex::new(None),
        })
    }

    pub fn set_event_forwarder(&self, f: tokio::task::AbortHandle) {
        if let Ok(mut old) = self.event_forwarder.lock() {
            if let Some(old) = old.replace(f) {
                old.abort();
            }
        }
    }

    /// Stops forwarding the shim's events (the task is being destroyed).
    pub fn stop_event_forwarder(&self) {
        if let Some(f) = self.event_forwarder.lock().ok().and_then(|mut f| f.take()) {
            f.abort();
        }
    }

    pub fn set_orphaned_logmon_fifo(&self, fifo: PathBuf) {
        if let Ok(mut f) = self.orphaned_logmon_fifo.lock() {
            *f = Some(fifo);
        }
    }

    pub fn orphaned_logmon_fifo(&self) -> Option<PathBuf> {
        self.orphaned_logmon_fifo.lock().ok()?.clone()
    }

    /// True the first time only (concurrent WaitTask callers publish one event).
    pub fn note_reported(&self) -> bool {
        !self.noted.swap(true, Ordering::SeqCst)
    }

    pub fn cached_exit(&self) -> Option<shim::ExitStatus> {
        self.exit.lock().ok()?.clone()
    }

    pub fn set_exit(&self, e: shim::ExitStatus) {
        if let Ok(mut x) = self.exit.lock() {
            *x = Some(e);
        }
    }

    /// A connected client to the shim (dialled lazily, re-dialled after failures).
    pub async fn client(&self) -> Result<ExecutorClient<Channel>, common::client::ClientError> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = common::client::connect(&self.state.socket_path).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Keeps `client` (the one StartTask already dialled) for later calls.
    pub async fn keep_client(&self, client: ExecutorClient<Channel>) {
        *self.client.lock().await = Some(client);
    }

    pub async fn forget_client(&self) {
        *self.client.lock().await = None;
    }

    /// The exit recorded in the shim's state file, if the shim got that far.
    pub async fn exit_from_state_file(&self) -> Option<shim::ExitStatus> {
        let path = self.state.state_path.clone();
        blocking(move || ShimState::read(&path).ok()?.exit)
            .await
            .map(|e| shim::ExitStatus::from(&e))
    }

    /// The known exit, else the one in the state file.
    pub async fn exit_if_known(&self) -> Option<shim::ExitStatus> {
        match self.cached_exit() {
            Some(e) => Some(e),
            None => self.exit_from_state_file().await,
        }
    }

    pub async fn shim_alive(&self) -> bool {
        let (pid, start) = (self.state.shim_pid, self.state.shim_start_time);
        blocking(move || common::proc::is_same_process(pid, start)).await
    }

    /// Kills what is left of the runtime when its shim is gone (never a reused pid).
    pub async fn kill_orphaned_runtime(&self) -> bool {
        let (pid, start) = (self.state.runtime_pid, self.state.runtime_start_time);
        blocking(move || {
            if pid > 0 && common::proc::is_same_process(pid, start) {
                // The runtime leads its own process group (setsid in the shim).
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return true;
            }
            false
        })
        .await
    }

    /// What happened when the shim cannot be reached: its recorded exit, or a clear failure.
    pub async fn exit_without_shim(&self, why: &str) -> shim::ExitStatus {
        if let Some(e) = self.exit_from_state_file().await {
            return e;
        }
        let killed = self.kill_orphaned_runtime().await;
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
            exited_at_unix_ms: common::state::now_ms(),
        }
    }
}
