//! One task as the plugin knows it: its `driver_state`, a cached client to its shim, and its
//! exit once known. When the shim is gone, the exit comes from the state file it wrote, and
//! what is left of the task (process group, cgroups) is killed so nothing is orphaned.

use super::blocking;
use super::handle::DriverState;
use crate::metrics::scrape::LogCounts;
use common::proto::executor as shim;
use common::state::TaskState as ShimState;
use common::sync::lock;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct TaskEntry {
    pub state: DriverState,
    client: tokio::sync::Mutex<Option<crate::metrics::timed::ShimClient>>,
    /// Set once the exit is known (from the shim or its state file).
    exit: Mutex<Option<shim::ExitStatus>>,
    /// Whether the exit's explanation was already published as a task event.
    noted: AtomicBool,
    /// Whether this task's lost shim was counted (WaitTask and StopTask may both find it).
    lost_counted: AtomicBool,
    /// The task that forwards the shim's events (see `logs`), stopped with the entry.
    event_forwarder: Mutex<Option<tokio::task::AbortHandle>>,
    /// The stdout FIFO of a task whose logmon Nomad no longer manages (see `logs`).
    orphaned_logmon_fifo: Mutex<Option<PathBuf>>,
    /// The log counters the shim pushes on its event stream (level 5; see `logs`): Some while
    /// that stream is open, so a metrics scrape reads them here instead of calling Status.
    pushed_logs: Mutex<Option<[LogCounts; 2]>>,
    /// Watched through the notify socket (`notify`): no connection is kept to the shim, and
    /// WaitTask waits for [`Self::set_exit`] instead of calling the shim's Wait.
    watched: AtomicBool,
    /// Set by the first to fetch the exit a datagram announced.
    collecting: AtomicBool,
    /// Wakes the WaitTask calls of a watched task once the exit is known.
    exit_known: tokio::sync::Notify,
    /// The task's cgroup dirs as its shim reported them (TaskStats reads its counters).
    cgroup: std::sync::OnceLock<String>,
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
            lost_counted: AtomicBool::new(false),
            event_forwarder: Mutex::new(None),
            orphaned_logmon_fifo: Mutex::new(None),
            pushed_logs: Mutex::new(None),
            watched: AtomicBool::new(false),
            collecting: AtomicBool::new(false),
            exit_known: tokio::sync::Notify::new(),
            cgroup: std::sync::OnceLock::new(),
        })
    }

    /// The shim pushes its log counters from now on (`Some`, the counts pushed so far, merged
    /// field-wise: they only grow), or no longer (`None`: its event stream ended).
    pub fn set_pushed_logs(&self, counts: Option<[LogCounts; 2]>) {
        let mut p = lock(&self.pushed_logs);
        *p = match (p.take(), counts) {
            (Some(old), Some(new)) => Some([old[0].max(&new[0]), old[1].max(&new[1])]),
            (_, new) => new,
        };
    }

    /// The log counters last pushed by the shim, while its event stream is open.
    pub fn pushed_logs(&self) -> Option<[LogCounts; 2]> {
        *lock(&self.pushed_logs)
    }

    pub fn set_event_forwarder(&self, f: tokio::task::AbortHandle) {
        if let Some(old) = lock(&self.event_forwarder).replace(f) {
            old.abort();
        }
    }

    /// Stops forwarding the shim's events (the task is being destroyed).
    pub fn stop_event_forwarder(&self) {
        if let Some(f) = lock(&self.event_forwarder).take() {
            f.abort();
        }
    }

    pub fn set_orphaned_logmon_fifo(&self, fifo: PathBuf) {
        *lock(&self.orphaned_logmon_fifo) = Some(fifo);
    }

    pub fn orphaned_logmon_fifo(&self) -> Option<PathBuf> {
        lock(&self.orphaned_logmon_fifo).clone()
    }

    /// True the first time only (concurrent WaitTask callers publish one event).
    pub fn note_reported(&self) -> bool {
        !self.noted.swap(true, Ordering::SeqCst)
    }

    pub fn cached_exit(&self) -> Option<shim::ExitStatus> {
        lock(&self.exit).clone()
    }

    pub fn set_exit(&self, e: shim::ExitStatus) {
        {
            let mut x = lock(&self.exit);
            if x.is_none() {
                crate::metrics::task_exited(&e);
            }
            *x = Some(e);
        }
        self.exit_known.notify_waiters();
    }

    pub fn cgroup(&self) -> Option<String> {
        self.cgroup.get().cloned()
    }

    pub fn set_cgroup(&self, cgroup: String) {
        let _ = self.cgroup.set(cgroup);
    }

    /// The task is watched through the notify socket from now on.
    pub fn set_watched(&self) {
        self.watched.store(true, Ordering::SeqCst);
    }

    pub fn watched(&self) -> bool {
        self.watched.load(Ordering::SeqCst)
    }

    /// True for the first caller only: it fetches the exit a datagram announced.
    pub fn start_collecting(&self) -> bool {
        !self.collecting.swap(true, Ordering::SeqCst)
    }

    /// The exit of a watched task, once someone set it (the datagram's or the pidfd's
    /// watcher: `notify`).
    pub async fn exit_set(&self) -> shim::ExitStatus {
        loop {
            let known = self.exit_known.notified();
            tokio::pin!(known);
            // Registered before the check, so a set_exit in between still wakes us.
            known.as_mut().enable();
            if let Some(e) = self.cached_exit() {
                return e;
            }
            known.await;
        }
    }

    /// A connected client to the shim (dialled lazily, re-dialled after failures). A watched
    /// task's is not kept: it is dialled for the call and closed after it.
    pub async fn client(
        &self,
    ) -> Result<crate::metrics::timed::ShimClient, common::client::ClientError> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = crate::metrics::timed::connect(&self.state.socket_path).await?;
        if !self.watched() {
            *guard = Some(c.clone());
        }
        Ok(c)
    }

    /// Keeps `client` (the one StartTask already dialled) for later calls.
    pub async fn keep_client(&self, client: crate::metrics::timed::ShimClient) {
        if !self.watched() {
            *self.client.lock().await = Some(client);
        }
    }

    #[cfg(test)]
    pub async fn has_cached_client(&self) -> bool {
        self.client.lock().await.is_some()
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

    /// Kills the shim when it is alive but out of reach (its socket deleted, hung), so that a
    /// task the plugin gives up on has no shim left running it. Never a reused pid.
    pub async fn kill_unreachable_shim(&self) {
        let (pid, start) = (self.state.shim_pid, self.state.shim_start_time);
        blocking(move || {
            if pid > 1 && common::proc::is_same_process(pid, start) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        })
        .await
    }

    /// Kills what is left of the task once its shim is gone — the runtime's process group
    /// and everything in the task's cgroups — and removes the cgroups we made and the shim's
    /// socket and index link (common::remains). Returns whether anything was killed.
    pub async fn clean_up_remains(&self) -> bool {
        let s = self.state.clone();
        let cleaned = blocking(move || {
            let remains = common::remains::Remains {
                names: common::cgroup::TaskNames {
                    task_id: &s.task_id,
                    alloc_id: &s.alloc_id,
                    task_name: &s.task_name,
                },
                runtime_pid: s.runtime_pid,
                runtime_start_time: s.runtime_start_time,
                state_path: &s.state_path,
                socket_path: &s.socket_path,
            };
            common::remains::clean_up(&remains, std::path::Path::new(common::cgroup::DEFAULT_ROOT))
        })
        .await;
        if !cleaned.kept_cgroups.is_empty() {
            tracing::warn!(task_id = %self.state.task_id, kept = ?cleaned.kept_cgroups, "task cgroups could not be removed");
        }
        if cleaned.killed_anything() {
            tracing::info!(task_id = %self.state.task_id, group = cleaned.group_killed, cgroup_pids = ?cleaned.cgroup_pids, "killed what was left of a task whose shim is gone");
        }
        cleaned.killed_anything()
    }

    /// What happened when the shim is gone: its recorded exit, or a clear failure. Either
    /// way what is left of the task is cleaned up first.
    pub async fn exit_without_shim(&self, why: &str) -> shim::ExitStatus {
        let recorded = self.exit_from_state_file().await;
        let killed = self.clean_up_remains().await;
        if let Some(e) = recorded {
            return e;
        }
        if !self.lost_counted.swap(true, Ordering::SeqCst) {
            crate::metrics::shim_lost();
        }
        shim::ExitStatus {
            exit_code: -1,
            signal: 0,
            oom_killed: false,
            message: format!(
                "elide-executor (pid {}) for this task died unexpectedly ({why}) before recording the exit; {}",
                self.state.shim_pid,
                if killed {
                    "what was left of the task (its process group and cgroup) was killed so nothing is left orphaned"
                } else {
                    "nothing of the task was left running"
                }
            ),
            exited_at_unix_ms: common::state::now_ms(),
        }
    }
}
