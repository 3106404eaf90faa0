//! WaitTask, InspectTask and TaskStats: watching a task, through its shim while it answers
//! and from its state file after.

use super::entry::TaskEntry;
use super::{blocking, TaskError, Tasks};
use common::proto::drivers::{
    ExitResult, InspectTaskResponse, TaskDriverStatus, TaskState, TaskStatsRequest,
    TaskStatsResponse, TaskStatus, WaitTaskResponse,
};
use common::proto::executor as shim;
use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::Status;

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Longest pause between attempts to reach a shim that is alive but does not answer.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);

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

impl Tasks {
    pub async fn wait(&self, task_id: &str) -> WaitTaskResponse {
        let Some(entry) = self.store.get(task_id) else {
            return WaitTaskResponse {
                result: Some(ExitResult::default()),
                err: format!("task not found for given id: {task_id}"),
            };
        };
        let exit = wait_entry(&entry).await;
        if !exit.message.is_empty() && entry.note_reported() {
            // OOM kills, stop escalations and shim deaths, as a Driver event naming the cause.
            self.plugin.emit(
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

    pub async fn inspect(&self, task_id: &str) -> Result<InspectTaskResponse, TaskError> {
        let entry = self
            .store
            .get(task_id)
            .ok_or_else(|| TaskError::not_found(task_id))?;
        let exit = entry.exit_if_known().await;
        let state = if exit.is_some() {
            TaskState::Exited
        } else {
            TaskState::Running
        };
        let s = &entry.state;
        let attributes = HashMap::from([
            ("shim_pid".to_owned(), s.shim_pid.to_string()),
            ("runtime_pid".to_owned(), s.runtime_pid.to_string()),
            ("socket".to_owned(), s.socket_path.display().to_string()),
        ]);
        Ok(InspectTaskResponse {
            task: Some(TaskStatus {
                id: s.task_id.clone(),
                name: s.task_name.clone(),
                state: state as i32,
                started_at: Some(to_timestamp(s.started_at_unix_ms)),
                completed_at: Some(to_timestamp(
                    exit.as_ref().map(|e| e.exited_at_unix_ms).unwrap_or(0),
                )),
                result: Some(exit.as_ref().map(exit_result).unwrap_or_default()),
            }),
            driver: Some(TaskDriverStatus { attributes }),
            network_override: None,
        })
    }

    /// TaskStats. For a task with a cgroup the plugin reads its counters itself, for all
    /// tasks in one pass per interval (aligned on the monotonic clock, see
    /// `common::usage`): Nomad asks for a sample of every task every second, and waking
    /// every shim for it was most of the node's idle CPU (docs/performance.md). Without a
    /// cgroup (a shim not running as root) the shim's Stats stream measures `/proc`.
    pub async fn stats(
        &self,
        req: TaskStatsRequest,
    ) -> Result<BoxStream<TaskStatsResponse>, TaskError> {
        let entry = self
            .store
            .get(&req.task_id)
            .ok_or_else(|| TaskError::not_found(&req.task_id))?;
        let interval = req
            .collection_interval
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(1));
        let task_id = req.task_id.clone();
        // The task's cgroup never changes: asked of the shim once per plugin process (Nomad
        // opens TaskStats again after each of its own restarts, for every task at once).
        let cgroup = match entry.cgroup() {
            Some(cg) => cg,
            None => {
                let mut c = entry.client().await.map_err(|e| {
                    TaskError::ShimUnreachable(format!(
                        "cannot reach the task's elide-executor: {e}"
                    ))
                })?;
                match c.status(shim::StatusRequest {}).await {
                    Ok(s) => {
                        let cg = s.into_inner().cgroup;
                        entry.set_cgroup(cg.clone());
                        cg
                    }
                    Err(_) => String::new(),
                }
            }
        };
        let dirs = common::usage::cgroup_dirs(&cgroup);
        // One trip to the blocking pool: Nomad opens TaskStats for every task at once after
        // each of its restarts, and each trip may start a thread.
        let plugin = self.plugin.clone();
        let (mhz_per_core, reader) = blocking(move || {
            (
                plugin.mhz_per_core(),
                common::usage::CounterReader::open_dirs(&dirs),
            )
        })
        .await;
        if let Some(reader) = reader {
            return Ok(local_samples(entry, reader, interval, move |s| {
                TaskStatsResponse {
                    stats: Some(crate::stats::sample_to_task_stats(
                        &task_id,
                        s,
                        mhz_per_core,
                    )),
                }
            }));
        }
        let mut c = entry.client().await.map_err(|e| {
            TaskError::ShimUnreachable(format!("cannot reach the task's elide-executor: {e}"))
        })?;
        let inbound = c
            .stats(shim::StatsRequest {
                interval_ms: common::duration::millis(interval),
            })
            .await?
            .into_inner();
        use tokio_stream::StreamExt;
        Ok(Box::pin(inbound.map(move |u| {
            u.map(|u| TaskStatsResponse {
                stats: Some(crate::stats::to_task_stats(&task_id, &u, mhz_per_core)),
            })
        })))
    }
}

/// Samples of the task's cgroup, one at once, then one per `interval` until the task has
/// exited or Nomad stops listening (it drops the stream). The reads are a `pread` of each of
/// the two or three counter files the reader holds open (never blocking on I/O), done
/// inline. The stream is polled by the task that sends it to Nomad: one wake-up per task per
/// interval, no task or channel of its own, and one timer, re-armed after each sample.
fn local_samples(
    entry: std::sync::Arc<TaskEntry>,
    reader: common::usage::CounterReader,
    interval: Duration,
    to_response: impl Fn(&common::usage::Sample) -> TaskStatsResponse + Send + Unpin + 'static,
) -> BoxStream<TaskStatsResponse> {
    Box::pin(LocalSamples {
        entry,
        sampler: common::usage::Sampler::new(Box::new(reader)),
        to_response,
        interval,
        timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        state: SamplesState::First,
    })
}

struct LocalSamples<F> {
    entry: std::sync::Arc<TaskEntry>,
    sampler: common::usage::Sampler,
    to_response: F,
    interval: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    state: SamplesState,
}

#[derive(PartialEq)]
enum SamplesState {
    First,
    Waiting,
    Done,
}

impl<F> futures::Stream for LocalSamples<F>
where
    F: Fn(&common::usage::Sample) -> TaskStatsResponse + Unpin,
{
    type Item = Result<TaskStatsResponse, tonic::Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let me = &mut *self;
        match me.state {
            SamplesState::Done => return Poll::Ready(None),
            SamplesState::Waiting => {
                if std::future::Future::poll(me.timer.as_mut(), cx).is_pending() {
                    return Poll::Pending;
                }
                if me.entry.cached_exit().is_some() {
                    me.state = SamplesState::Done;
                    return Poll::Ready(None);
                }
            }
            SamplesState::First => me.state = SamplesState::Waiting,
        }
        let r = (me.to_response)(&me.sampler.next_sample());
        let next = tokio::time::Instant::now() + common::usage::until_aligned(me.interval);
        me.timer.as_mut().reset(next);
        Poll::Ready(Some(Ok(r)))
    }
}

/// The task's exit: for a task watched through the notify socket once the datagram (or the
/// shim's death) made it known (`notify`), else [`collect_exit`].
pub async fn wait_entry(entry: &TaskEntry) -> shim::ExitStatus {
    if entry.watched() {
        return entry.exit_set().await;
    }
    collect_exit(entry).await
}

/// The task's exit: from the shim's Wait, else (shim gone) from its state file, else a
/// failure that says the shim died. A transport error while the shim is alive is retried.
pub async fn collect_exit(entry: &TaskEntry) -> shim::ExitStatus {
    if let Some(e) = entry.cached_exit() {
        return e;
    }
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
        if !entry.shim_alive().await {
            // Its recorded exit if any, and what it left is cleaned up either way.
            let e = entry
                .exit_without_shim("its control socket stopped answering")
                .await;
            entry.set_exit(e.clone());
            return e;
        }
        if let Some(e) = entry.exit_from_state_file().await {
            entry.set_exit(e.clone());
            return e;
        }
        attempts += 1;
        let pause = Duration::from_millis(100) * attempts.min(20);
        tokio::time::sleep(pause.min(MAX_RETRY_PAUSE)).await;
    }
}
