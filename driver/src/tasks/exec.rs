//! ExecTaskStreaming (`nomad alloc exec`) and ExecTask (template change scripts, script
//! checks). The task's shim runs the command inside the task's sandbox (its `Exec` RPC,
//! docs/executor.md); the plugin only checks that the shim speaks it and relays.
//!
//! - Streaming: Nomad's first message is `setup`; then `stdin{data}`, `stdin{close}`,
//!   `tty_size`, or an empty heartbeat (ignored). Out go `stdout`/`stderr` chunks, their
//!   `close`, and finally one message with `exited` and a `result` (never nil: a nil result
//!   panics the agent). A command that fails to start is the RPC's error.
//! - ExecTask: stdin closed at once; stdout and stderr combined in the order they came, the
//!   last [`CHECK_BUF_SIZE`] bytes kept (as Nomad's executors do: script checks and change
//!   scripts read `stdout` only); `timeout` 0 = none, else the command is killed when it runs
//!   out and the call fails with DEADLINE_EXCEEDED.
//!
//! Nomad going away (the stream breaks, or nobody reads the replies) drops the shim call,
//! which makes the shim kill the command.

use super::{TaskError, Tasks};
use crate::shim_compat;
use common::proto::drivers::{
    exec_task_streaming_request, ExecTaskRequest, ExecTaskResponse, ExecTaskStreamingIoOperation,
    ExecTaskStreamingRequest, ExecTaskStreamingResponse, ExitResult,
};
use common::proto::executor as shim;
use common::shim_api;
use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Status};

/// Nomad's `CheckBufSize`: how much of a script's output ExecTask returns (the end of it).
pub const CHECK_BUF_SIZE: usize = 4096;

pub type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<ExecTaskStreamingResponse, Status>> + Send + 'static>>;

type ShimReplies = tonic::Streaming<shim::ExecResponse>;

/// Why an exec did not start.
enum NotStarted {
    /// The shim refused the command itself (missing, not executable, empty…).
    Command(Status),
    /// The task's shim is too old for exec (the task event says so in full).
    OldShim(Status),
    /// Anything else: the task is unknown or gone, the shim unreachable.
    Other(Status),
}

impl NotStarted {
    fn status(self) -> Status {
        match self {
            NotStarted::Command(s) | NotStarted::OldShim(s) | NotStarted::Other(s) => s,
        }
    }
}

/// The longest message an ExecTaskStreaming error may carry to reach `nomad alloc exec`: the
/// agent closes the CLI's websocket with `rpc error: code = <Code> desc = <message>` as the
/// close reason, and a WebSocket close frame holds at most 123 bytes of reason (a longer one
/// is not sent at all, and the CLI only says "unexpected EOF").
const CLI_ERROR_BUDGET: usize = 123 - "rpc error: code = FailedPrecondition desc = ".len();

/// A streaming error the CLI can show: the message cut to [`CLI_ERROR_BUDGET`] bytes.
fn for_cli(s: Status) -> Status {
    let msg = s.message();
    if msg.len() <= CLI_ERROR_BUDGET {
        return s;
    }
    let mut cut = CLI_ERROR_BUDGET - "…".len();
    while !msg.is_char_boundary(cut) {
        cut -= 1;
    }
    Status::new(s.code(), format!("{}…", &msg[..cut]))
}

/// Shown by `nomad alloc exec` for a task on a shim older than exec (the task event has the
/// whole explanation).
const OLD_SHIM_CLI: &str = "the task's elide-executor predates exec: see the task's events";

impl Tasks {
    /// Opens the shim's Exec for `task_id` with `setup` as its first message; returns the
    /// sender for the next messages and the replies after the first (the command's pid).
    async fn open_exec(
        &self,
        task_id: &str,
        setup: shim::ExecSetup,
    ) -> Result<(mpsc::Sender<shim::ExecRequest>, ShimReplies), NotStarted> {
        let begun = std::time::Instant::now();
        let entry = self
            .store
            .get(task_id)
            .ok_or_else(|| NotStarted::Other(TaskError::not_found(task_id).into()))?;
        shim_compat::require(&self.plugin, &entry.state, shim_api::EXEC)
            .map_err(NotStarted::OldShim)?;
        let mut client = entry.client().await.map_err(|e| {
            NotStarted::Other(Status::failed_precondition(format!(
                "cannot reach the task's elide-executor: {e}"
            )))
        })?;
        let (tx, rx) = mpsc::channel(16);
        let command = setup.command.clone();
        let _ = tx
            .send(shim::ExecRequest {
                setup: Some(setup),
                ..Default::default()
            })
            .await;
        let refused = |s: Status| {
            tracing::info!(task_id, ?command, error = %s.message(), "exec refused");
            match s.code() {
                Code::Unimplemented => NotStarted::OldShim(shim_compat::unimplemented(
                    &self.plugin,
                    &entry.state,
                    shim_api::EXEC,
                    s,
                )),
                Code::InvalidArgument | Code::NotFound | Code::PermissionDenied => {
                    NotStarted::Command(s)
                }
                _ => NotStarted::Other(relayed(s)),
            }
        };
        let mut replies = client
            .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(refused)?
            .into_inner();
        match replies.message().await {
            Ok(Some(first)) => {
                // The shim's log splits `started_us` further (prepare_us, enter_us).
                tracing::debug!(
                    task_id,
                    pid = first.pid,
                    ?command,
                    started_us = begun.elapsed().as_micros() as u64,
                    "exec started"
                );
                Ok((tx, replies))
            }
            Ok(None) => Err(NotStarted::Other(Status::internal(
                "the task's elide-executor ended the exec before the command started",
            ))),
            Err(s) => Err(refused(s)),
        }
    }

    /// ExecTaskStreaming: `inbound` is Nomad's side of the stream.
    pub async fn exec_streaming<S>(&self, mut inbound: S) -> Result<ResponseStream, Status>
    where
        S: Stream<Item = Result<ExecTaskStreamingRequest, Status>> + Unpin + Send + 'static,
    {
        let setup = match inbound.next().await {
            Some(Ok(m)) => m.setup.ok_or_else(|| {
                Status::invalid_argument("the first ExecTaskStreaming message must be its setup")
            })?,
            Some(Err(s)) => return Err(s),
            None => {
                return Err(Status::invalid_argument(
                    "ExecTaskStreaming without a setup",
                ))
            }
        };
        let opened = self
            .open_exec(
                &setup.task_id,
                shim::ExecSetup {
                    command: setup.command,
                    tty: setup.tty,
                    tty_size: None,
                },
            )
            .await;
        let (shim_tx, replies) = match opened {
            Ok(o) => o,
            // A command that cannot run is told on its stderr, with a shell's exit code:
            // the whole explanation reaches the user (see CLI_ERROR_BUDGET).
            Err(NotStarted::Command(s)) if s.code() != Code::InvalidArgument => {
                return Ok(Box::pin(tokio_stream::iter(cannot_run(&s, setup.tty))))
            }
            Err(NotStarted::OldShim(_)) => {
                return Err(Status::failed_precondition(OLD_SHIM_CLI));
            }
            Err(other) => return Err(for_cli(other.status())),
        };
        Ok(relay_streaming(
            setup.task_id,
            inbound,
            shim_tx,
            replies,
            HEARTBEATS_LOST,
        ))
    }
}

/// After Nomad's first heartbeat, how long without any message from it means its client is
/// gone. `nomad alloc exec` (Nomad's api package) sends an empty message every 10 s; Nomad
/// (1.6 at least) does not cancel the exec when the CLI's connection drops, it only stops
/// forwarding them. Callers that send no heartbeats are never timed out.
const HEARTBEATS_LOST: Duration = Duration::from_secs(35);

/// Relays between Nomad's stream and the shim's once the command runs.
fn relay_streaming<S>(
    task_id: String,
    mut inbound: S,
    shim_tx: mpsc::Sender<shim::ExecRequest>,
    mut replies: ShimReplies,
    heartbeats_lost: Duration,
) -> ResponseStream
where
    S: Stream<Item = Result<ExecTaskStreamingRequest, Status>> + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<ExecTaskStreamingResponse, Status>>(16);
    // Nomad → shim. A broken stream, or heartbeats that stop, end the whole call (the
    // output side drops the shim's replies, which cancels the shim call); an ended one
    // only ends the input.
    let gone = std::sync::Arc::new(tokio::sync::Notify::new());
    let gone_tx = gone.clone();
    let feeder_task = task_id.clone();
    let feeder = tokio::spawn(async move {
        let mut heartbeats = false;
        loop {
            let next = if heartbeats {
                match tokio::time::timeout(heartbeats_lost, inbound.next()).await {
                    Ok(m) => m,
                    Err(_) => {
                        tracing::info!(task_id = feeder_task, lost_after = ?heartbeats_lost, "exec: Nomad's heartbeats stopped (its client is gone); killing the command");
                        gone_tx.notify_one();
                        return;
                    }
                }
            } else {
                inbound.next().await
            };
            let Some(m) = next else { return };
            let Ok(m) = m else {
                gone_tx.notify_one();
                return;
            };
            let Some(req) = to_shim(m) else {
                heartbeats = true;
                continue;
            };
            if shim_tx.send(req).await.is_err() {
                return;
            }
        }
    });
    // Shim → Nomad. Whichever way this ends, the input side goes too: the shim's call is
    // only cancelled once both its request stream and its replies are dropped.
    tokio::spawn(async move {
        let _session = crate::metrics::exec_session("streaming");
        let _feeder = AbortOnDrop(feeder);
        let mut exited = false;
        loop {
            let reply = tokio::select! {
                r = replies.message() => r,
                _ = tx.closed() => return,
                _ = gone.notified() => return,
            };
            let out = match reply {
                Ok(Some(m)) => from_shim(m),
                Ok(None) => break,
                Err(s) => vec![Err(relayed(s))],
            };
            for m in out {
                exited |= matches!(&m, Ok(r) if r.exited);
                if tx.send(m).await.is_err() {
                    return;
                }
            }
        }
        if !exited {
            tracing::warn!(task_id, "the shim ended an exec without the command's exit");
            let _ = tx
                .send(Err(Status::internal(
                    "the task's elide-executor ended the exec without the command's exit",
                )))
                .await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

impl Tasks {
    /// ExecTask: runs the command to its end (or its timeout) with no input.
    pub async fn exec_once(&self, req: ExecTaskRequest) -> Result<ExecTaskResponse, Status> {
        if req.command.first().is_none_or(|c| c.is_empty()) {
            return Err(Status::invalid_argument(
                "ExecTask without a command: name the program to run inside the task",
            ));
        }
        let timeout = req
            .timeout
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero());
        let command = req.command.clone();
        let run = async {
            let _session = crate::metrics::exec_session("oneshot");
            let (tx, mut replies) = self
                .open_exec(
                    &req.task_id,
                    shim::ExecSetup {
                        command: req.command,
                        tty: false,
                        tty_size: None,
                    },
                )
                .await
                .map_err(NotStarted::status)?;
            let _ = tx
                .send(shim::ExecRequest {
                    stdin_close: true,
                    ..Default::default()
                })
                .await;
            let mut output = Tail::new(CHECK_BUF_SIZE);
            while let Some(m) = replies.message().await.map_err(relayed)? {
                output.push(&m.stdout);
                output.push(&m.stderr);
                if let Some(e) = m.exit {
                    return Ok(ExecTaskResponse {
                        stdout: output.into_bytes(),
                        stderr: Vec::new(),
                        result: Some(result_of(&e)),
                    });
                }
            }
            Err(Status::internal(
                "the task's elide-executor ended the exec without the command's exit",
            ))
        };
        match timeout {
            None => run.await,
            // Dropping the call on the deadline makes the shim kill the command.
            Some(t) => tokio::time::timeout(t, run).await.unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "{command:?} did not finish within {} and was killed",
                    common::duration::format(t)
                )))
            }),
        }
    }
}

/// A shim status for Nomad: the shim's own refusals pass as they are; a broken connection to
/// the shim is not `Unavailable`, which Nomad's plugin client would take for the plugin
/// itself shutting down.
fn relayed(s: Status) -> Status {
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled => {
            Status::failed_precondition(format!(
                "lost the connection to the task's elide-executor: {}",
                s.message()
            ))
        }
        _ => s,
    }
}

/// The messages for a command the shim could not run: its explanation on stderr (on the
/// terminal with a tty) and the exit code a shell gives: 127 not found, 126 not runnable.
fn cannot_run(s: &Status, tty: bool) -> Vec<Result<ExecTaskStreamingResponse, Status>> {
    let code = if s.code() == Code::NotFound { 127 } else { 126 };
    let eol = if tty { "\r\n" } else { "\n" };
    let text = format!("elide: {}{eol}", s.message()).into_bytes();
    from_shim(shim::ExecResponse {
        stdout: if tty { text.clone() } else { Vec::new() },
        stderr: if tty { Vec::new() } else { text },
        stdout_closed: true,
        stderr_closed: true,
        exit: Some(shim::ExitStatus {
            exit_code: code,
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn result_of(e: &shim::ExitStatus) -> ExitResult {
    ExitResult {
        exit_code: e.exit_code,
        signal: e.signal,
        oom_killed: e.oom_killed,
    }
}

/// One of Nomad's messages for the shim; None for a heartbeat (an empty message) or a second
/// setup.
fn to_shim(m: ExecTaskStreamingRequest) -> Option<shim::ExecRequest> {
    let mut out = shim::ExecRequest::default();
    if let Some(io) = m.stdin {
        out.stdin = io.data;
        out.stdin_close = io.close;
    }
    if let Some(exec_task_streaming_request::TerminalSize { height, width }) = m.tty_size {
        out.tty_size = Some(shim::TerminalSize {
            rows: height.max(0) as u32,
            cols: width.max(0) as u32,
        });
    }
    let empty = out.stdin.is_empty() && !out.stdin_close && out.tty_size.is_none();
    (!empty).then_some(out)
}

/// Nomad's messages for one reply of the shim.
fn from_shim(m: shim::ExecResponse) -> Vec<Result<ExecTaskStreamingResponse, Status>> {
    let io = |data: Vec<u8>, close: bool| Some(ExecTaskStreamingIoOperation { data, close });
    let mut out = Vec::new();
    if !m.stdout.is_empty() {
        out.push(ExecTaskStreamingResponse {
            stdout: io(m.stdout, false),
            ..Default::default()
        });
    }
    if !m.stderr.is_empty() {
        out.push(ExecTaskStreamingResponse {
            stderr: io(m.stderr, false),
            ..Default::default()
        });
    }
    if m.stdout_closed {
        out.push(ExecTaskStreamingResponse {
            stdout: io(Vec::new(), true),
            ..Default::default()
        });
    }
    if m.stderr_closed {
        out.push(ExecTaskStreamingResponse {
            stderr: io(Vec::new(), true),
            ..Default::default()
        });
    }
    if let Some(e) = m.exit {
        out.push(ExecTaskStreamingResponse {
            exited: true,
            result: Some(result_of(&e)),
            ..Default::default()
        });
    }
    out.into_iter().map(Ok).collect()
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The last `cap` bytes of what was pushed.
struct Tail {
    cap: usize,
    bytes: VecDeque<u8>,
}

impl Tail {
    fn new(cap: usize) -> Tail {
        Tail {
            cap,
            bytes: VecDeque::with_capacity(cap),
        }
    }

    fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(self.cap)..];
        let over = (self.bytes.len() + data.len()).saturating_sub(self.cap);
        self.bytes.drain(..over);
        self.bytes.extend(data);
    }

    fn into_bytes(self) -> Vec<u8> {
        self.bytes.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::handle::DriverState;
    use crate::tasks::testing::Harness;
    use common::proto::drivers::{exec_task_streaming_request::Setup, RecoverTaskRequest};

    type Nomad = mpsc::Sender<Result<ExecTaskStreamingRequest, Status>>;

    fn setup(task_id: &str, command: &[&str], tty: bool) -> ExecTaskStreamingRequest {
        ExecTaskStreamingRequest {
            setup: Some(Setup {
                task_id: task_id.to_owned(),
                command: command.iter().map(|s| s.to_string()).collect(),
                tty,
            }),
            ..Default::default()
        }
    }

    fn stdin(data: &[u8], close: bool) -> ExecTaskStreamingRequest {
        ExecTaskStreamingRequest {
            stdin: Some(ExecTaskStreamingIoOperation {
                data: data.to_vec(),
                close,
            }),
            ..Default::default()
        }
    }

    /// Opens ExecTaskStreaming as Nomad does: the setup first, the rest through the sender.
    async fn open(
        h: &Harness,
        first: ExecTaskStreamingRequest,
    ) -> (Nomad, Result<ResponseStream, Status>) {
        let (tx, rx) = mpsc::channel(16);
        tx.send(Ok(first)).await.unwrap();
        let r = h
            .tasks
            .exec_streaming(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        (tx, r)
    }

    async fn collect(mut s: ResponseStream) -> Vec<Result<ExecTaskStreamingResponse, Status>> {
        let mut out = Vec::new();
        while let Some(m) = tokio::time::timeout(Duration::from_secs(30), s.next())
            .await
            .expect("the exec stream to end")
        {
            out.push(m);
        }
        out
    }

    async fn started(h: &Harness) -> String {
        let task = h.task("web");
        let id = task.id.clone();
        h.start(task).await.unwrap();
        id
    }

    async fn abandoned(h: &Harness, n: u32) {
        let mut rx = h.script().exec_abandoned.subscribe();
        tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|c| *c >= n))
            .await
            .expect("the shim to see its caller go")
            .unwrap();
    }

    #[tokio::test]
    async fn streaming_relays_both_streams_their_close_and_the_exit_with_a_result() {
        let h = Harness::new();
        let id = started(&h).await;
        let (_tx, r) = open(&h, setup(&id, &["echo", "hello", "world"], false)).await;
        let out: Vec<_> = collect(r.unwrap())
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let io = |d: &[u8], close| {
            Some(ExecTaskStreamingIoOperation {
                data: d.to_vec(),
                close,
            })
        };
        assert_eq!(
            out,
            vec![
                ExecTaskStreamingResponse {
                    stdout: io(b"hello world\n", false),
                    ..Default::default()
                },
                ExecTaskStreamingResponse {
                    stderr: io(b"err\n", false),
                    ..Default::default()
                },
                ExecTaskStreamingResponse {
                    stdout: io(b"", true),
                    ..Default::default()
                },
                ExecTaskStreamingResponse {
                    stderr: io(b"", true),
                    ..Default::default()
                },
                ExecTaskStreamingResponse {
                    exited: true,
                    result: Some(ExitResult {
                        exit_code: 3,
                        signal: 0,
                        oom_killed: false
                    }),
                    ..Default::default()
                },
            ]
        );
        let first = h.script().exec_requests.lock().unwrap()[0].clone();
        let s = first.setup.unwrap();
        assert_eq!((s.command.len(), s.tty), (3, false));
        // Nomad's side ending (no more input) is not its going away: the rest still comes.
        let (tx, r) = open(&h, setup(&id, &["echo", "again"], false)).await;
        drop(tx);
        let out = collect(r.unwrap()).await;
        let last = out.last().unwrap().as_ref().unwrap();
        assert_eq!(
            last.result.as_ref().map(|r| r.exit_code),
            Some(3),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn stdin_terminal_sizes_reach_the_shim_and_heartbeats_do_not() {
        let h = Harness::new();
        let id = started(&h).await;
        let (tx, r) = open(&h, setup(&id, &["cat"], true)).await;
        let stream = r.unwrap();
        for m in [
            ExecTaskStreamingRequest::default(),
            ExecTaskStreamingRequest {
                tty_size: Some(exec_task_streaming_request::TerminalSize {
                    height: 50,
                    width: 40,
                }),
                ..Default::default()
            },
            ExecTaskStreamingRequest::default(),
            stdin(b"abc", false),
            stdin(b"", true),
        ] {
            tx.send(Ok(m)).await.unwrap();
        }
        let out = collect(stream).await;
        let stdout: Vec<u8> = out
            .iter()
            .filter_map(|m| m.as_ref().unwrap().stdout.as_ref())
            .flat_map(|io| io.data.clone())
            .collect();
        assert_eq!(String::from_utf8(stdout).unwrap(), "[50 x 40]abc");
        let last = out.last().unwrap().as_ref().unwrap();
        assert!(last.exited && last.result.is_some(), "{last:?}");
        // Setup, size, data, close: the heartbeats never reached the shim.
        let reqs = h.script().exec_requests.lock().unwrap().clone();
        assert_eq!(reqs.len(), 4, "{reqs:?}");
        assert!(reqs[0].setup.as_ref().unwrap().tty);
    }

    #[tokio::test]
    async fn a_command_that_cannot_run_is_told_on_stderr_and_bad_requests_are_named() {
        let h = Harness::new();
        let id = started(&h).await;
        let (_tx, r) = open(&h, setup(&id, &["nope"], false)).await;
        let out: Vec<_> = collect(r.unwrap())
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let stderr = out[0].stderr.as_ref().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&stderr.data),
            "elide: \"nope\" was not found inside the task\n"
        );
        let last = out.last().unwrap();
        assert!(last.exited, "{out:?}");
        assert_eq!(last.result.as_ref().unwrap().exit_code, 127);
        // On a terminal, the terminal gets it.
        let (_tx, r) = open(&h, setup(&id, &["nope"], true)).await;
        let out = collect(r.unwrap()).await;
        let first = out[0].as_ref().unwrap();
        assert!(
            first.stdout.as_ref().unwrap().data.ends_with(b"task\r\n"),
            "{out:?}"
        );
        let (_tx, r) = open(&h, stdin(b"x", false)).await;
        assert_eq!(r.err().unwrap().code(), Code::InvalidArgument);
        let (_tx, r) = open(&h, setup("no/such/task", &["echo"], false)).await;
        assert_eq!(r.err().unwrap().code(), Code::NotFound);
        // A stream the shim ends without an exit is an error, never a nil result.
        let (_tx, r) = open(&h, setup(&id, &["noexit"], false)).await;
        let out = collect(r.unwrap()).await;
        let e = out.last().unwrap().as_ref().unwrap_err();
        assert!(e.message().contains("without the command's exit"), "{e:?}");
    }

    #[tokio::test]
    async fn nomad_going_away_cancels_the_shims_call() {
        let h = Harness::new();
        let id = started(&h).await;
        // The request stream breaks (the client's context was cancelled).
        let (tx, r) = open(&h, setup(&id, &["sleep"], false)).await;
        let _stream = r.unwrap();
        tx.send(Err(Status::cancelled("client gone")))
            .await
            .unwrap();
        abandoned(&h, 1).await;
        // Nobody reads the replies any more.
        let (_tx, r) = open(&h, setup(&id, &["sleep"], false)).await;
        drop(r.unwrap());
        abandoned(&h, 2).await;
    }

    #[tokio::test]
    async fn a_client_whose_heartbeats_stop_is_gone_and_one_that_sends_none_is_not() {
        let h = Harness::new();
        let id = started(&h).await;
        let lost = Duration::from_millis(300);
        let relay = |beat: bool| {
            let (h, id) = (&h, id.clone());
            async move {
                let sleep = shim::ExecSetup {
                    command: vec!["sleep".into()],
                    ..Default::default()
                };
                let (shim_tx, replies) = h.tasks.open_exec(&id, sleep).await.ok().unwrap();
                let (tx, rx) = mpsc::channel(4);
                if beat {
                    tx.send(Ok(ExecTaskStreamingRequest::default()))
                        .await
                        .unwrap();
                }
                let stream = relay_streaming(
                    id,
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                    shim_tx,
                    replies,
                    lost,
                );
                (tx, stream)
            }
        };
        // No heartbeat ever: a caller that does not send them is not timed out.
        let (_quiet_tx, _quiet) = relay(false).await;
        // One heartbeat, then silence: the command is killed.
        let (_tx, _stream) = relay(true).await;
        abandoned(&h, 1).await;
        tokio::time::sleep(lost * 3).await;
        assert_eq!(*h.script().exec_abandoned.borrow(), 1);
    }

    #[tokio::test]
    async fn exec_task_combines_the_output_keeps_its_tail_and_reports_the_exit() {
        let h = Harness::new();
        let id = started(&h).await;
        let req = |command: &[&str], timeout_ms: u64| ExecTaskRequest {
            task_id: id.clone(),
            command: command.iter().map(|s| s.to_string()).collect(),
            timeout: Some(prost_types::Duration {
                seconds: 0,
                nanos: (timeout_ms * 1_000_000) as i32,
            }),
        };
        let r = h.tasks.exec_once(req(&["echo", "a"], 0)).await.unwrap();
        assert_eq!(r.stdout, b"a\nerr\n");
        assert_eq!(r.result.unwrap().exit_code, 3);
        // Stdin is closed at once.
        let reqs = h.script().exec_requests.lock().unwrap().clone();
        assert!(reqs.iter().any(|r| r.stdin_close) || reqs.len() == 1);
        let r = h.tasks.exec_once(req(&["flood"], 0)).await.unwrap();
        assert_eq!(r.stdout.len(), CHECK_BUF_SIZE);
        assert!(r.stdout.ends_with(b"oooEND"));
        let r = h.tasks.exec_once(req(&["killed"], 0)).await.unwrap();
        let res = r.result.unwrap();
        assert_eq!((res.exit_code, res.signal), (137, 9));
        // The timeout kills the command and says so.
        let e = h.tasks.exec_once(req(&["sleep"], 200)).await.unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded);
        assert!(e.message().contains("did not finish within"), "{e:?}");
        abandoned(&h, 1).await;
        let e = h.tasks.exec_once(req(&[], 0)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = h.tasks.exec_once(req(&["nope"], 0)).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    }

    #[tokio::test]
    async fn a_task_on_an_older_shim_gets_a_clear_refusal_and_one_event() {
        let mut h = Harness::new();
        let task = h.task("old");
        let mut handle = h.start(task.clone()).await.unwrap();
        let mut state = DriverState::decode(&handle.driver_state).unwrap();
        state.shim_api_level = 1;
        state.executor_version = "0.1.0".into();
        handle.driver_state = state.encode();
        // A plugin process that learns the task from its handle (an agent restart).
        let fresh = h.restarted_plugin();
        fresh
            .recover(RecoverTaskRequest {
                task_id: task.id.clone(),
                handle: Some(handle),
            })
            .await
            .unwrap();
        h.event_messages();
        for _ in 0..2 {
            let (tx, rx) = mpsc::channel(1);
            tx.send(Ok(setup(&task.id, &["echo"], false)))
                .await
                .unwrap();
            let e = fresh
                .exec_streaming(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .err()
                .unwrap();
            // Short enough for the CLI; the task event explains.
            assert_eq!(
                (e.code(), e.message()),
                (Code::FailedPrecondition, OLD_SHIM_CLI)
            );
        }
        // ExecTask (a change script, a script check) gets the whole explanation.
        let e = fresh
            .exec_once(ExecTaskRequest {
                task_id: task.id.clone(),
                command: vec!["echo".into()],
                timeout: None,
            })
            .await
            .unwrap_err();
        assert!(
            e.message().contains("exec into the task")
                && e.message()
                    .contains(&format!("level {}", shim_api::EXEC.level))
                && e.message().contains("0.1.0"),
            "{e:?}"
        );
        let events = h.event_messages();
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(
            events[0].contains("nomad alloc restart")
                && events[0].contains(&format!("level {}", shim_api::EXEC.level)),
            "{events:?}"
        );
        // The shim was never asked.
        assert!(h.script().exec_requests.lock().unwrap().is_empty());
    }

    #[test]
    fn errors_for_the_cli_fit_a_websocket_close_frame() {
        assert!(OLD_SHIM_CLI.len() <= CLI_ERROR_BUDGET);
        let short = for_cli(Status::not_found("gone"));
        assert_eq!((short.code(), short.message()), (Code::NotFound, "gone"));
        let long = for_cli(Status::internal("é".repeat(200)));
        assert!(
            long.message().len() <= CLI_ERROR_BUDGET,
            "{}",
            long.message()
        );
        assert!(long.message().ends_with("é…"));
        let close_reason = format!("rpc error: code = FailedPrecondition desc = {OLD_SHIM_CLI}");
        assert!(close_reason.len() <= 123);
    }

    #[test]
    fn the_tail_keeps_the_last_bytes() {
        let mut t = Tail::new(4);
        t.push(b"ab");
        t.push(b"");
        t.push(b"cde");
        assert_eq!(t.into_bytes(), b"bcde");
        let mut t = Tail::new(3);
        t.push(b"123456");
        assert_eq!(t.into_bytes(), b"456");
    }
}
