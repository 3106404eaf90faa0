//! The control API (proto/elide/executor/v1/executor.proto) on top of [`Shim`].

use crate::error::{ExecError, StartError, TaskError};
use crate::shim::Shim;
use common::proto::executor::{self as api, executor_server::Executor};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Code, Request, Response, Status, Streaming};

/// Shortest Stats interval honoured (Nomad's default collection_interval is 1 s).
pub const MIN_STATS_INTERVAL: Duration = Duration::from_millis(100);

pub struct Service {
    pub shim: Arc<Shim>,
}

/// The gRPC code of each Start failure: the plugin retries `Unavailable` (no FIFO reader yet,
/// a sandbox setup that timed out) and fails the task for good on the others.
fn start_status(e: StartError) -> Status {
    let code = match &e {
        StartError::AlreadyStarted(_) | StartError::InProgress => Code::AlreadyExists,
        StartError::ShuttingDown => Code::Unavailable,
        StartError::Fifo(f) if f.is_transient() => Code::Unavailable,
        StartError::Spawn(e) if e.is_transient() => Code::Unavailable,
        StartError::Fifo(_) | StartError::Spawn(_) | StartError::Cgroup(_) => {
            Code::FailedPrecondition
        }
        StartError::Record { .. } => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// The gRPC code of each Wait/Stop/Signal failure.
fn task_status(e: TaskError) -> Status {
    let code = match &e {
        TaskError::NeverStarted(_) | TaskError::NotRunning(_) => Code::FailedPrecondition,
        TaskError::ShuttingDown => Code::Unavailable,
        TaskError::SurvivedKill { .. } => Code::DeadlineExceeded,
        TaskError::Signal { .. } => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// The gRPC code of each Exec failure. Never `Unavailable` for a refused command: Nomad's
/// plugin client takes that code for a plugin that shut down.
fn exec_status(e: ExecError) -> Status {
    let code = match &e {
        ExecError::NoSetup | ExecError::EmptyCommand | ExecError::Nul(_) => Code::InvalidArgument,
        ExecError::NotRunning(_) | ExecError::User(_) => Code::FailedPrecondition,
        // The command itself cannot run (the plugin tells `nomad alloc exec` in-band, with
        // a shell's 127 or 126).
        ExecError::NotFound { .. } => Code::NotFound,
        ExecError::NotExecutable { .. } | ExecError::Exec { .. } => Code::PermissionDenied,
        ExecError::Setup { .. } => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// Whether nothing was written or lost yet (no counts to send a new subscriber).
fn counts_are_zero(l: &api::LogStatus) -> bool {
    l.streams.iter().all(|s| {
        s.bytes_written == 0
            && s.bytes_dropped == 0
            && s.lines_written == 0
            && s.lines_dropped == 0
            && s.write_errors == 0
    })
}

fn parse_signal(name: &str) -> Result<Option<common::signals::TaskSignal>, Status> {
    common::signals::parse(name).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl Executor for Service {
    async fn start(
        &self,
        _r: Request<api::StartRequest>,
    ) -> Result<Response<api::StartResponse>, Status> {
        Ok(Response::new(
            self.shim.start().await.map_err(start_status)?,
        ))
    }

    async fn wait(
        &self,
        _r: Request<api::WaitRequest>,
    ) -> Result<Response<api::WaitResponse>, Status> {
        let exit = self.shim.wait().await.map_err(task_status)?;
        Ok(Response::new(api::WaitResponse { exit: Some(exit) }))
    }

    async fn stop(
        &self,
        r: Request<api::StopRequest>,
    ) -> Result<Response<api::StopResponse>, Status> {
        let r = r.into_inner();
        let name = if r.signal.is_empty() {
            common::spec::DEFAULT_STOP_SIGNAL
        } else {
            r.signal.as_str()
        };
        let sig = parse_signal(name)?;
        let exit = self
            .shim
            .stop(sig, Duration::from_millis(r.timeout_ms))
            .await
            .map_err(task_status)?;
        Ok(Response::new(api::StopResponse { exit: Some(exit) }))
    }

    async fn signal(
        &self,
        r: Request<api::SignalRequest>,
    ) -> Result<Response<api::SignalResponse>, Status> {
        let sig = parse_signal(&r.into_inner().signal)?;
        self.shim.signal(sig).map_err(task_status)?;
        Ok(Response::new(api::SignalResponse {}))
    }

    async fn status(
        &self,
        _r: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        Ok(Response::new(self.shim.status()))
    }

    type StatsStream = tonic::codegen::BoxStream<api::ResourceUsage>;

    async fn stats(
        &self,
        r: Request<api::StatsRequest>,
    ) -> Result<Response<Self::StatsStream>, Status> {
        let interval = Duration::from_millis(r.into_inner().interval_ms).max(MIN_STATS_INTERVAL);
        let mut sampler = self.shim.sampler().ok_or_else(|| {
            Status::failed_precondition("the runtime was never started; call Start first")
        })?;
        let shim = self.shim.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let mut exited = shim.subscribe_exit();
            // One sample at once, then one per interval, until the runtime exits or the
            // caller goes away.
            loop {
                if tx.send(Ok(sampler.sample())).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(common::usage::until_aligned(interval)) => {}
                    _ = tx.closed() => return,
                    _ = exited.wait_for(|e| e.is_some()) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type ExecStream = tonic::codegen::BoxStream<api::ExecResponse>;

    /// The first message names the command; the session runs in a task of its own, so a
    /// caller that goes away during the setup still gets its command killed (the relay sees
    /// nobody reading its replies).
    async fn exec(
        &self,
        r: Request<Streaming<api::ExecRequest>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let mut inbound = r.into_inner();
        let setup = inbound
            .message()
            .await?
            .and_then(|m| m.setup)
            .ok_or_else(|| exec_status(ExecError::NoSetup))?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let (reply, started) = tokio::sync::oneshot::channel();
        let shim = self.shim.clone();
        tokio::spawn(async move {
            match crate::exec::start(&shim, &setup).await {
                Ok(s) => {
                    let _ = reply.send(Ok(()));
                    crate::exec::relay(s, inbound, tx).await;
                }
                Err(e) => {
                    tracing::info!(error = %e, command = ?setup.command, "exec refused");
                    let _ = reply.send(Err(exec_status(e)));
                }
            }
        });
        started
            .await
            .map_err(|_| Status::internal("the exec session ended before it started"))??;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type EventsStream = tonic::codegen::BoxStream<api::ShimEvent>;

    async fn events(
        &self,
        r: Request<api::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        use tokio_stream::StreamExt;
        let r = r.into_inner();
        if !r.notify_socket.is_empty() {
            return self.subscribe_notify(r);
        }
        let (past, live) = self.shim.events.subscribe(r.since_unix_ms);
        // A subscriber too slow for the burst loses the events in between (they are
        // summaries; the counts stay in Status).
        let live = tokio_stream::wrappers::BroadcastStream::new(live)
            .filter_map(|e| e.ok())
            .map(Ok);
        let events = tokio_stream::iter(past.into_iter().map(Ok)).chain(live);
        if !r.log_counts {
            return Ok(Response::new(Box::pin(events)));
        }
        // Level 5: the log counters too. Subscribed first, then the current counts read, so
        // no push is missed (one may repeat them).
        let pushed = self.shim.events.subscribe_log_counts();
        let now = self.shim.log_status().filter(|l| !counts_are_zero(l));
        let counts = tokio_stream::iter(now)
            .chain(tokio_stream::wrappers::WatchStream::from_changes(pushed).filter_map(|l| l))
            .map(|l| {
                Ok(api::ShimEvent {
                    message: String::new(),
                    at_unix_ms: common::state::now_ms(),
                    logs: Some(l),
                    ..Default::default()
                })
            });
        Ok(Response::new(Box::pin(events.merge(counts))))
    }

    async fn shutdown(
        &self,
        _r: Request<api::ShutdownRequest>,
    ) -> Result<Response<api::ShutdownResponse>, Status> {
        self.shim.shutdown().await;
        Ok(Response::new(api::ShutdownResponse {}))
    }
}

impl Service {
    /// Level 6 (`EventsRequest.notify_socket`): the events from now on, the log counters (when
    /// asked) and the runtime's exit go to the plugin's notify socket as datagrams; the
    /// response is what was remembered (and the current counts) and ends at once, so the
    /// plugin need not keep a connection to this shim.
    fn subscribe_notify(
        &self,
        r: api::EventsRequest,
    ) -> Result<Response<<Self as Executor>::EventsStream>, Status> {
        let socket = std::path::Path::new(&r.notify_socket);
        let notifier = common::notify::Notifier::connect(socket, self.shim.spec.task_id.clone())
            .map_err(|e| {
                Status::invalid_argument(format!(
                    "cannot send to the notify socket {}: {e}",
                    socket.display()
                ))
            })?;
        let exit_watch = {
            let notifier = notifier.clone();
            let mut exit = self.shim.subscribe_exit();
            tokio::spawn(async move {
                if exit.wait_for(|e| e.is_some()).await.is_ok() {
                    notifier.exited();
                }
            })
            .abort_handle()
        };
        let past =
            self.shim
                .events
                .subscribe_notify(r.since_unix_ms, notifier, r.log_counts, exit_watch);
        // Subscribed first, then the current counts read: no push is missed.
        let counts = r
            .log_counts
            .then(|| self.shim.log_status())
            .flatten()
            .filter(|l| !counts_are_zero(l))
            .map(|l| api::ShimEvent {
                at_unix_ms: common::state::now_ms(),
                logs: Some(l),
                ..Default::default()
            });
        let all: Vec<_> = past.into_iter().chain(counts).map(Ok).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(all))))
    }
}
