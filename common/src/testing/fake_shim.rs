//! A fake shim for tests: the executor's control API (`executor.v1.Executor`) served on a
//! real Unix socket, answering as a [`Script`] says and recording what it was asked. The
//! plugin's lifecycle tests launch one per task; the client's tests talk to one.

use crate::proto::executor::{self as api, executor_server};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};
use tonic::{Request, Response, Status};

/// The runtime pid the fake shim reports (no process has it).
pub const RUNTIME_PID: i32 = 4_000_000;

/// What the fake shim answers, and what it was asked.
pub struct Script {
    pub start_error: Mutex<Option<Status>>,
    pub stop_error: Mutex<Option<Status>>,
    /// What Wait returns once set; Stop sets it to `stop_exit` when nothing has.
    pub exit: watch::Sender<Option<api::ExitStatus>>,
    pub stop_exit: api::ExitStatus,
    pub status_task_id: Mutex<Option<String>>,
    pub stops: Mutex<Vec<api::StopRequest>>,
    pub signals: Mutex<Vec<String>>,
    pub shutdowns: Mutex<u32>,
    /// Every Exec request received, setups included.
    pub exec_requests: Mutex<Vec<api::ExecRequest>>,
    /// Counts Exec calls whose caller went away before the command ended.
    pub exec_abandoned: watch::Sender<u32>,
    /// Events the shim publishes (Events RPC), and the `since_unix_ms` of each subscription.
    pub events: broadcast::Sender<api::ShimEvent>,
    pub event_subscriptions: Mutex<Vec<i64>>,
    /// Whether each subscription asked for the log counters (level 5).
    pub event_log_counts: Mutex<Vec<bool>>,
    /// The log status Status reports, and how often Status was called.
    pub logs: Mutex<Option<api::LogStatus>>,
    pub status_calls: Mutex<u32>,
    /// The API level Start and Status report (this build's by default; lower to play an
    /// older shim).
    pub api_level: Mutex<u32>,
    /// The cgroup Status reports, and how often Stats was called.
    pub cgroup: Mutex<String>,
    pub stats_calls: Mutex<u32>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            start_error: Mutex::new(None),
            stop_error: Mutex::new(None),
            exit: watch::channel(None).0,
            stop_exit: api::ExitStatus {
                exit_code: 143,
                signal: 15,
                ..Default::default()
            },
            status_task_id: Mutex::new(None),
            stops: Mutex::new(Vec::new()),
            signals: Mutex::new(Vec::new()),
            shutdowns: Mutex::new(0),
            exec_requests: Mutex::new(Vec::new()),
            exec_abandoned: watch::channel(0).0,
            events: broadcast::channel(16).0,
            event_subscriptions: Mutex::new(Vec::new()),
            event_log_counts: Mutex::new(Vec::new()),
            logs: Mutex::new(None),
            status_calls: Mutex::new(0),
            api_level: Mutex::new(crate::shim_api::API_LEVEL),
            cgroup: Mutex::new(String::new()),
            stats_calls: Mutex::new(0),
        }
    }
}

/// The fake shim's control API, answering as [`Script`] says.
pub struct FakeExecutor {
    task_id: String,
    script: Arc<Script>,
}

#[tonic::async_trait]
impl executor_server::Executor for FakeExecutor {
    async fn start(
        &self,
        _: Request<api::StartRequest>,
    ) -> Result<Response<api::StartResponse>, Status> {
        if let Some(e) = self.script.start_error.lock().unwrap().take() {
            return Err(e);
        }
        Ok(Response::new(api::StartResponse {
            pid: RUNTIME_PID,
            pid_start_time: 77,
            started_at_unix_ms: 1_700_000_000_000,
            api_level: *self.script.api_level.lock().unwrap(),
            executor_version: "fake".into(),
        }))
    }
    async fn wait(
        &self,
        _: Request<api::WaitRequest>,
    ) -> Result<Response<api::WaitResponse>, Status> {
        let mut rx = self.script.exit.subscribe();
        let exit = rx
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| Status::unavailable("gone"))?
            .clone();
        Ok(Response::new(api::WaitResponse { exit }))
    }
    async fn stop(
        &self,
        r: Request<api::StopRequest>,
    ) -> Result<Response<api::StopResponse>, Status> {
        self.script.stops.lock().unwrap().push(r.into_inner());
        if let Some(e) = self.script.stop_error.lock().unwrap().take() {
            return Err(e);
        }
        let stop_exit = self.script.stop_exit.clone();
        self.script.exit.send_if_modified(|e| {
            let unset = e.is_none();
            if unset {
                *e = Some(stop_exit);
            }
            unset
        });
        let exit = self.script.exit.borrow().clone();
        Ok(Response::new(api::StopResponse { exit }))
    }
    async fn signal(
        &self,
        r: Request<api::SignalRequest>,
    ) -> Result<Response<api::SignalResponse>, Status> {
        self.script
            .signals
            .lock()
            .unwrap()
            .push(r.into_inner().signal);
        Ok(Response::new(api::SignalResponse {}))
    }
    async fn status(
        &self,
        _: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        *self.script.status_calls.lock().unwrap() += 1;
        let task_id = self.script.status_task_id.lock().unwrap().clone();
        Ok(Response::new(api::StatusResponse {
            task_id: task_id.unwrap_or_else(|| self.task_id.clone()),
            runtime_pid: RUNTIME_PID,
            runtime_start_time: 77,
            exit: self.script.exit.borrow().clone(),
            logs: self.script.logs.lock().unwrap().clone(),
            cgroup: self.script.cgroup.lock().unwrap().clone(),
            api_level: *self.script.api_level.lock().unwrap(),
            ..Default::default()
        }))
    }
    type StatsStream = tonic::codegen::BoxStream<api::ResourceUsage>;
    async fn stats(
        &self,
        _: Request<api::StatsRequest>,
    ) -> Result<Response<Self::StatsStream>, Status> {
        *self.script.stats_calls.lock().unwrap() += 1;
        Err(Status::unimplemented("fake"))
    }
    type EventsStream = tonic::codegen::BoxStream<api::ShimEvent>;
    async fn events(
        &self,
        r: Request<api::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        use tokio_stream::StreamExt;
        let r = r.into_inner();
        self.script
            .event_log_counts
            .lock()
            .unwrap()
            .push(r.log_counts);
        self.script
            .event_subscriptions
            .lock()
            .unwrap()
            .push(r.since_unix_ms);
        if !r.notify_socket.is_empty() {
            // Level 6: what the script publishes, and the exit, as datagrams.
            let notifier = crate::notify::Notifier::connect(
                std::path::Path::new(&r.notify_socket),
                self.task_id.clone(),
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let mut events = self.script.events.subscribe();
            let mut exit = self.script.exit.subscribe();
            tokio::spawn(async move {
                let mut exited = false;
                loop {
                    tokio::select! {
                        e = events.recv() => match e {
                            Ok(ev) if ev.logs.is_some() => notifier.logs(ev.logs.unwrap_or_default()),
                            Ok(ev) => notifier.message(ev.message, ev.at_unix_ms),
                            Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(_) => break,
                        },
                        r = exit.wait_for(|e| e.is_some()), if !exited => {
                            if r.is_err() {
                                break;
                            }
                            exited = true;
                            notifier.exited();
                        }
                    }
                }
            });
            return Ok(Response::new(Box::pin(tokio_stream::empty())));
        }
        let live = tokio_stream::wrappers::BroadcastStream::new(self.script.events.subscribe())
            .filter_map(|e| e.ok())
            .map(Ok);
        Ok(Response::new(Box::pin(live)))
    }
    async fn shutdown(
        &self,
        _: Request<api::ShutdownRequest>,
    ) -> Result<Response<api::ShutdownResponse>, Status> {
        *self.script.shutdowns.lock().unwrap() += 1;
        Ok(Response::new(api::ShutdownResponse {}))
    }
    type ExecStream = tonic::codegen::BoxStream<api::ExecResponse>;
    async fn exec(
        &self,
        r: Request<tonic::Streaming<api::ExecRequest>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let mut inbound = r.into_inner();
        let first = inbound.message().await?.unwrap_or_default();
        let command = first.setup.as_ref().map(|s| s.command.clone());
        *self.script.exec_requests.lock().unwrap() = vec![first];
        match command
            .as_deref()
            .and_then(|c| c.first())
            .map(String::as_str)
        {
            Some("echo" | "cat" | "sleep" | "flood" | "killed" | "noexit") => {}
            Some(other) => {
                return Err(Status::not_found(format!(
                    "{other:?} was not found inside the task"
                )))
            }
            None => return Err(Status::invalid_argument("no setup")),
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(fake_exec(self.script.clone(), inbound, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The fake shim's commands (`command[0]` of the setup):
/// - `echo ARGS…`: `ARGS\n` on stdout, `err\n` on stderr, both closed, exit 3;
/// - `cat`: stdin back on stdout (a tty size as `[rows x cols]`) until stdin's close, exit 0;
/// - `sleep`: runs until the caller goes away (counted in `exec_abandoned`);
/// - `flood`: 10 KiB of `o` on stdout, then `END` on stderr, exit 0;
/// - `killed`: exit 137 by signal 9; `noexit`: the stream ends without an exit;
/// - anything else: refused, NOT_FOUND.
async fn fake_exec(
    script: Arc<Script>,
    mut inbound: tonic::Streaming<api::ExecRequest>,
    tx: tokio::sync::mpsc::Sender<Result<api::ExecResponse, Status>>,
) {
    let reply = |m: api::ExecResponse| async { tx.send(Ok(m)).await.is_ok() };
    let exit = |code: i32, signal: i32| api::ExecResponse {
        exit: Some(api::ExitStatus {
            exit_code: code,
            signal,
            ..Default::default()
        }),
        ..Default::default()
    };
    let setup = script.exec_requests.lock().unwrap()[0]
        .setup
        .clone()
        .unwrap_or_default();
    let args = setup.command.clone();
    if !reply(api::ExecResponse {
        pid: 4242,
        ..Default::default()
    })
    .await
    {
        return;
    }
    match args[0].as_str() {
        "echo" => {
            for m in [
                api::ExecResponse {
                    stdout: format!("{}\n", args[1..].join(" ")).into_bytes(),
                    ..Default::default()
                },
                api::ExecResponse {
                    stderr: b"err\n".to_vec(),
                    stdout_closed: true,
                    stderr_closed: true,
                    ..Default::default()
                },
                exit(3, 0),
            ] {
                reply(m).await;
            }
        }
        "cat" => loop {
            let m = tokio::select! {
                m = inbound.message() => m,
                _ = tx.closed() => break,
            };
            let Ok(Some(m)) = m else {
                script.exec_abandoned.send_modify(|n| *n += 1);
                return;
            };
            script.exec_requests.lock().unwrap().push(m.clone());
            if let Some(sz) = m.tty_size {
                reply(api::ExecResponse {
                    stdout: format!("[{} x {}]", sz.rows, sz.cols).into_bytes(),
                    ..Default::default()
                })
                .await;
            }
            if !m.stdin.is_empty() {
                reply(api::ExecResponse {
                    stdout: m.stdin,
                    ..Default::default()
                })
                .await;
            }
            if m.stdin_close {
                reply(api::ExecResponse {
                    stdout_closed: true,
                    stderr_closed: true,
                    ..Default::default()
                })
                .await;
                reply(exit(0, 0)).await;
                return;
            }
        },
        "sleep" => {
            loop {
                tokio::select! {
                    m = inbound.message() => {
                        if let Ok(Some(m)) = m {
                            script.exec_requests.lock().unwrap().push(m);
                            continue;
                        }
                    }
                    _ = tx.closed() => {}
                }
                break;
            }
            script.exec_abandoned.send_modify(|n| *n += 1);
        }
        "flood" => {
            for _ in 0..10 {
                reply(api::ExecResponse {
                    stdout: vec![b'o'; 1024],
                    ..Default::default()
                })
                .await;
            }
            reply(api::ExecResponse {
                stderr: b"END".to_vec(),
                ..Default::default()
            })
            .await;
            reply(exit(0, 0)).await;
        }
        "killed" => {
            reply(exit(137, 9)).await;
        }
        _ => {}
    }
}

/// A fake shim serving on a socket from its own runtime, so that [`FakeShim::kill`] drops
/// every connection at once, as a dying process would.
pub struct FakeShim {
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeShim {
    pub fn serve(socket: &Path, task_id: &str, script: Arc<Script>) -> FakeShim {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = {
            let _in = runtime.enter();
            tokio::net::UnixListener::bind(socket).unwrap()
        };
        let svc = FakeExecutor {
            task_id: task_id.to_owned(),
            script,
        };
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(executor_server::ExecutorServer::new(svc))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        FakeShim {
            runtime: Some(runtime),
        }
    }

    /// The shim dies: connections drop; the socket file stays behind, stale. Returns once
    /// its server is gone (its listener closed), so a dial after this is refused, as it is
    /// for a dead process; the runtime is shut down on a thread of its own because a
    /// runtime cannot be dropped inside another one (the tests are async).
    pub fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            let gone =
                std::thread::spawn(move || rt.shutdown_timeout(std::time::Duration::from_secs(10)));
            let _ = gone.join();
        }
    }
}

impl Drop for FakeShim {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the fake answers is what its script says: Start's error once, Stop's exit, the
    /// recorded requests; a killed fake drops its connections.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_from_its_script_and_records_requests() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("f.sock");
        let script = Arc::new(Script::default());
        *script.start_error.lock().unwrap() = Some(Status::internal("no"));
        let mut shim = FakeShim::serve(&sock, "a/t/0", script.clone());
        let mut c = crate::client::connect(&sock).await.unwrap();
        let e = c.start(api::StartRequest {}).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        let s = c.start(api::StartRequest {}).await.unwrap().into_inner();
        assert_eq!(s.pid, RUNTIME_PID);
        let st = c.status(api::StatusRequest {}).await.unwrap().into_inner();
        assert_eq!(st.task_id, "a/t/0");
        let stop = c
            .stop(api::StopRequest {
                signal: "SIGINT".into(),
                timeout_ms: 5,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stop.exit.unwrap().signal, 15);
        assert_eq!(script.stops.lock().unwrap()[0].signal, "SIGINT");
        shim.kill();
        assert!(c.status(api::StatusRequest {}).await.is_err());
    }
}
