//! RecoverTask: adopt a task from its `driver_state` in a plugin process that never saw it
//! start. The shim must prove it is the same task (task id, runtime pid and start time);
//! with the shim gone, the exit it recorded is enough; with neither, what is left of the
//! task is killed (process group and cgroup, entry.rs) and Nomad restarts the task.

use super::entry::TaskEntry;
use super::handle::DriverState;
use super::{TaskError, Tasks};
use crate::config::LogCollection;
use common::proto::drivers::RecoverTaskRequest;
use common::proto::executor as shim;

impl Tasks {
    pub async fn recover(&self, req: RecoverTaskRequest) -> Result<(), TaskError> {
        // Refusals are `failed`; a shim gone without an exit says `lost` instead.
        let mut failure = crate::metrics::RecoveryOutcome::failed;
        let r = self.recover_inner(req, &mut failure).await;
        if let Err(s) = &r {
            tracing::warn!(outcome = ?failure, error = %s.message(), "RecoverTask did not recover the task");
            crate::metrics::recovered(failure);
        }
        r
    }

    async fn recover_inner(
        &self,
        req: RecoverTaskRequest,
        failure: &mut crate::metrics::RecoveryOutcome,
    ) -> Result<(), TaskError> {
        let handle = req
            .handle
            .ok_or_else(|| TaskError::BadRequest("RecoverTask without a task handle".into()))?;
        let config = handle
            .config
            .clone()
            .ok_or_else(|| TaskError::BadRequest("RecoverTask handle has no task config".into()))?;
        if self.store.get(&config.id).is_some() {
            crate::metrics::recovered(crate::metrics::RecoveryOutcome::already_tracked);
            return Ok(());
        }
        let state = DriverState::decode(&handle.driver_state)
            .map_err(|e| TaskError::Refused(format!("cannot recover task {}: {e}", config.id)))?;
        crate::shim_compat::supported(&state)?;
        if state.task_id != config.id {
            return Err(TaskError::Refused(format!(
                "task handle for {} holds the state of task {}; refusing to adopt it",
                config.id, state.task_id
            )));
        }
        let entry = TaskEntry::new(state);
        if super::logs::has_logmon(&entry.state.log_collection)
            && self.plugin.config().log_collection == LogCollection::Executor
            && !config.stdout_path.is_empty()
            && config.stdout_path != "/dev/null"
        {
            // Started with logmon; Nomad no longer manages it (see `logs`).
            entry.set_orphaned_logmon_fifo(config.stdout_path.clone().into());
        }
        let mut reattached = false;
        match entry.client().await {
            Ok(mut c) => {
                let st = c
                    .status(shim::StatusRequest {})
                    .await
                    .map_err(|s| crate::shim_compat::status_refused(&entry.state, &s))?
                    .into_inner();
                check_identity(&entry, &st)?;
                if let Some(msg) = super::logs::loss_summary(st.logs.as_ref()) {
                    let s = &entry.state;
                    self.plugin.emit(&s.task_id, &s.alloc_id, &s.task_name, msg);
                }
                if let Some(e) = st.exit {
                    entry.set_exit(e);
                }
                // Events from now on (losses before are in the summary above).
                reattached = true;
                crate::metrics::recovered(crate::metrics::RecoveryOutcome::reattached);
            }
            Err(dial) => {
                // A shim that was shut down (DestroyTask) took its socket and state file
                // with it; one that died left them (for the metrics: destroyed vs lost).
                let (socket, state) = (
                    entry.state.socket_path.clone(),
                    entry.state.state_path.clone(),
                );
                let left_traces = super::blocking(move || {
                    socket.symlink_metadata().is_ok() || state.symlink_metadata().is_ok()
                })
                .await;
                entry.forget_client().await;
                // Out of reach is as good as gone: a shim left alive would run the task on
                // beside the one Nomad restarts.
                entry.kill_unreachable_shim().await;
                let recorded = entry.exit_from_state_file().await;
                let killed = entry.clean_up_remains().await;
                let Some(e) = recorded else {
                    *failure = if left_traces {
                        crate::metrics::shim_lost();
                        crate::metrics::RecoveryOutcome::lost
                    } else {
                        crate::metrics::RecoveryOutcome::destroyed
                    };
                    return Err(TaskError::Refused(format!(
                        "cannot recover task {}: its elide-executor is gone ({dial}) and recorded no exit{}; Nomad will restart the task",
                        entry.state.task_id,
                        if killed { "; what was left of the task (its process group and cgroup) was killed" } else { "" }
                    )));
                };
                tracing::info!(task_id = %entry.state.task_id, exit_code = e.exit_code, "shim gone; exit result recovered from its state file");
                crate::metrics::recovered(crate::metrics::RecoveryOutcome::exited);
                entry.set_exit(e);
            }
        }
        // In the store first: a datagram about the task finds it.
        self.store.insert(entry.clone());
        if reattached {
            self.watch(&entry, common::state::now_ms()).await;
            tracing::info!(task_id = %entry.state.task_id, shim_pid = entry.state.shim_pid, watched = entry.watched(), "reattached to running shim");
        }
        Ok(())
    }
}

/// Same task, same runtime process (never a reused pid).
fn check_identity(entry: &TaskEntry, st: &shim::StatusResponse) -> Result<(), TaskError> {
    let s = &entry.state;
    let other_runtime = st.runtime_pid != 0
        && (st.runtime_pid != s.runtime_pid || st.runtime_start_time != s.runtime_start_time);
    if st.task_id != s.task_id || other_runtime {
        return Err(TaskError::Refused(format!(
            "the shim at {} serves task {} (runtime pid {}), not task {} (runtime pid {}); refusing to adopt it",
            s.socket_path.display(),
            st.task_id,
            st.runtime_pid,
            s.task_id,
            s.runtime_pid
        )));
    }
    Ok(())
}
