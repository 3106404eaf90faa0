//! StopTask, SignalTask and DestroyTask. The shim does the work (signal → timeout → SIGKILL
//! of the whole group/cgroup); without a shim, what is left of the task is killed here
//! (entry.rs, common::remains).

use super::entry::TaskEntry;
use super::{blocking, TaskError, Tasks};
use common::proto::drivers::{DestroyTaskRequest, SignalTaskRequest, StopTaskRequest};
use common::proto::executor as shim;
use common::spec::DEFAULT_STOP_SIGNAL;
use std::time::Duration;
use tonic::Code;

/// Stop timeout when Nomad sends none.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl Tasks {
    pub async fn stop(&self, req: StopTaskRequest) -> Result<(), TaskError> {
        let Some(entry) = self.store.get(&req.task_id) else {
            // Unknown or already destroyed: nothing to stop (an error would only make Nomad retry).
            return Ok(());
        };
        if entry.cached_exit().is_some() {
            return Ok(());
        }
        let timeout = req
            .timeout
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(DEFAULT_STOP_TIMEOUT);
        let signal = if req.signal.is_empty() {
            DEFAULT_STOP_SIGNAL
        } else {
            req.signal.as_str()
        };
        tracing::info!(task_id = %req.task_id, signal, timeout_ms = common::duration::millis(timeout), "stopping task");
        let begun = std::time::Instant::now();
        let mut c = match entry.client().await {
            Ok(c) => c,
            Err(e) => return stop_without_shim(&entry, &e.to_string()).await,
        };
        let stopped = c
            .stop(shim::StopRequest {
                signal: signal.to_owned(),
                timeout_ms: common::duration::millis(timeout),
            })
            .await;
        match stopped {
            Ok(r) => {
                if let Some(e) = r.into_inner().exit {
                    entry.set_exit(e);
                }
                // How long the shim's Stop took (signal, exit, output drained, exit recorded):
                // with many stops at once, whether they queue (docs/performance.md).
                tracing::debug!(task_id = %req.task_id, stop_ms = begun.elapsed().as_millis() as u64, "task stopped");
                Ok(())
            }
            Err(s) if s.code() == Code::InvalidArgument => Err(TaskError::BadRequest(format!(
                "cannot stop task {}: {}",
                req.task_id,
                s.message()
            ))),
            Err(s) => {
                entry.forget_client().await;
                stop_without_shim(&entry, s.message()).await
            }
        }
    }

    pub async fn signal(&self, req: SignalTaskRequest) -> Result<(), TaskError> {
        let entry = self
            .store
            .get(&req.task_id)
            .ok_or_else(|| TaskError::not_found(&req.task_id))?;
        let mut c = entry.client().await.map_err(|e| {
            TaskError::ShimUnreachable(format!("cannot reach the task's elide-executor: {e}"))
        })?;
        c.signal(shim::SignalRequest {
            signal: req.signal.clone(),
        })
        .await
        .map_err(|s| TaskError::Shim {
            code: s.code(),
            message: format!("cannot signal task: {}", s.message()),
        })?;
        Ok(())
    }

    pub async fn destroy(&self, req: DestroyTaskRequest) -> Result<(), TaskError> {
        let Some(entry) = self.store.get(&req.task_id) else {
            return Ok(());
        };
        let running = entry.exit_if_known().await.is_none();
        if running && !req.force {
            return Err(TaskError::Refused(format!(
                "cannot destroy running task {}; stop it first or destroy with force",
                req.task_id
            )));
        }
        let shut_down = match entry.client().await {
            Ok(mut c) => match c.shutdown(shim::ShutdownRequest {}).await {
                Ok(_) => true,
                Err(s) => {
                    // The shim may exit while answering; then it did its work, and the
                    // clean-up below finds nothing.
                    tracing::debug!(task_id = %req.task_id, error = %s.message(), "shim shutdown");
                    false
                }
            },
            Err(_) => false,
        };
        if !shut_down {
            // Destroy leaves nothing: a shim out of reach goes too, then what it left.
            entry.kill_unreachable_shim().await;
            entry.clean_up_remains().await;
        }
        entry.stop_event_forwarder();
        if let Some(fifo) = entry.orphaned_logmon_fifo() {
            let exited_at = entry
                .cached_exit()
                .map(|e| e.exited_at_unix_ms)
                .unwrap_or_else(common::state::now_ms);
            let stopped =
                blocking(move || super::logs::stop_orphaned_logmon(&fifo, exited_at)).await;
            if !stopped.is_empty() {
                tracing::info!(task_id = %req.task_id, pids = ?stopped, "stopped the logmon Nomad left to this task (started with log_collection = \"nomad\")");
            }
        }
        // Whatever the shim did not get to: its state dir.
        let s = entry.state.clone();
        blocking(move || {
            if let Some(dir) = s.state_path.parent() {
                let _ = common::state::StateDir::remove_dir(dir);
            }
        })
        .await;
        self.store.remove(&req.task_id);
        let cache_dir = self.plugin.config().model_cache_dir.clone();
        self.models.release(&cache_dir, &req.task_id).await;
        Ok(())
    }
}

/// Stop when the shim cannot be reached: retry later while it lives, else take the recorded
/// exit (or kill the orphaned runtime and say the shim died).
async fn stop_without_shim(entry: &TaskEntry, why: &str) -> Result<(), TaskError> {
    if entry.shim_alive().await {
        return Err(TaskError::ShimUnreachable(format!(
            "elide-executor (pid {}) of task {} is alive but does not answer ({why}); retry",
            entry.state.shim_pid, entry.state.task_id
        )));
    }
    let e = entry.exit_without_shim(why).await;
    entry.set_exit(e);
    Ok(())
}
