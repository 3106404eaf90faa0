//! The task lifecycle through per-task `elide-executor` shims.
//!
//! The plugin keeps only a cache ([`store::TaskStore`]) of what it can rebuild from a task's
//! `driver_state` and its shim; every RPC works the same in a plugin process that never saw
//! the task start.
//!
//! - [`spec`] — Nomad's task config + ours → the shim's `TaskSpec` (pure; new task options
//!   land here), with [`command`] for Elide's command line and environment;
//! - [`start`] — StartTask (checks — the script through [`script`] —, the spec, launching the shim through [`launch`], its
//!   Start RPC, the handle);
//! - [`wait`] — WaitTask, InspectTask and TaskStats;
//! - [`stop`] — StopTask, SignalTask and DestroyTask;
//! - [`recover`] — RecoverTask;
//! - [`exec`] — ExecTaskStreaming and ExecTask (relayed to the shim's Exec);
//! - [`entry`] — one task as the plugin knows it, and what to do when its shim is gone;
//! - [`notify`] — watching idle tasks through the notify socket (no connection per task);
//! - [`logs`] — `log_collection`: the shim's events as task events, and the logmon Nomad
//!   left to tasks started with logmon;
//! - [`handle`] — `driver_state`; [`error`] — why a task RPC failed ([`TaskError`]) and its one
//!   mapping to the gRPC status Nomad reads (recoverable/permanent start errors).

mod command;
mod entry;
pub(crate) mod error;
mod exec;
pub(crate) mod handle;
mod launch;
mod logs;
mod metrics;
mod models;
mod notify;
mod recover;
mod script;
mod spec;
mod start;
mod stop;
mod store;
mod wait;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use crate::plugin::Plugin;
pub use error::TaskError;
use launch::Launcher;
use std::sync::Arc;
use store::TaskStore;

/// The task RPCs, with what they share: the plugin state, the task cache, and how shims are
/// launched (a real process, or a fake in the unit tests).
pub struct Tasks {
    plugin: Arc<Plugin>,
    store: Arc<TaskStore>,
    launcher: Arc<dyn Launcher>,
    /// The notify socket (`notify`), bound on first use; None if it cannot be.
    hub: tokio::sync::OnceCell<Option<Arc<common::notify::Hub>>>,
    /// Starts between their shim's launch and their runtime started (`start`).
    launches: tokio::sync::Semaphore,
    /// The node-wide model cache's downloads (driver/src/models).
    models: crate::models::Models,
}

impl Tasks {
    pub fn new(plugin: Arc<Plugin>) -> Self {
        Self::with_launcher(plugin, Arc::new(launch::ProcessLauncher))
    }

    fn with_launcher(plugin: Arc<Plugin>, launcher: Arc<dyn Launcher>) -> Self {
        Tasks {
            plugin,
            store: Arc::default(),
            launcher,
            hub: Default::default(),
            launches: tokio::sync::Semaphore::new(start::CONCURRENT_LAUNCHES),
            models: Default::default(),
        }
    }

    /// How many tasks this plugin process tracks (for logs).
    pub fn tracked(&self) -> usize {
        self.store.len()
    }
}

/// Runs blocking work (state-file reads under `flock`, `/proc` and `/sys` reads, file system
/// checks) on tokio's blocking pool, off the two worker threads that serve the agent.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
