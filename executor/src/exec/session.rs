//! The shim's side of one Exec: [`start`] checks the request against the task, starts
//! `sandbox-exec` and waits until the command runs (or names why it cannot); [`relay`] then
//! moves bytes between the RPC stream and the command's pipes or terminal until the command
//! exits, and kills it if the caller goes away first.
//!
//! Everything runs on the shim's single thread; no call here blocks it: the pipes and the
//! pty master are non-blocking behind tokio's `AsyncFd`, and stdin is written by its own task
//! so a command that does not read its input never stops its output from flowing.

use super::{
    namespaces_to_join, Plan, WindowSize, CONTROL_FD, ERROR_FD, EXEC_COMMAND, NETNS_FD, PLAN_FD,
    STARTED,
};
use crate::error::ExecError;
use crate::reaper::Reaped;
use crate::runtime::{self, ChildFds};
use crate::sandbox::creds::Credentials;
use crate::sandbox::report::{Failure, Step};
use crate::sandbox::Process;
use crate::shim::Shim;
use common::proto::executor as api;
use common::state::ExitSummary;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};

/// How long entering the task may take before the exec is given up (a hung `/proc`, a frozen
/// cgroup).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// After asking `sandbox-exec` to kill its command, how long to wait for it before SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// After the command exited, how long its output may still be collected: a pty hands the last
/// bytes over asynchronously (until EOF, i.e. every holder of the terminal gone); a pipe has
/// them all at once and is only read for as long as more keep coming (a background process
/// that inherited it may write on forever).
const TTY_DRAIN: Duration = Duration::from_secs(2);
const PIPE_DRAIN: Duration = Duration::from_secs(1);
/// Bytes per read, and so at most per output message.
const CHUNK: usize = 32 * 1024;
/// The terminal's end-of-file character when its settings cannot be read (^D).
const DEFAULT_VEOF: u8 = 4;

/// A command that runs inside the task, ready for [`relay`].
pub struct Started {
    /// The command's pid, as the shim sees it.
    pub pid: i32,
    /// The `sandbox-exec` process (the command's parent, the shim's child).
    helper: i32,
    /// Its exit, which is the command's (see the module above).
    exited: oneshot::Receiver<Reaped>,
    io: Io,
}

enum Io {
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Tty {
        master: OwnedFd,
    },
}

fn setup_err(what: &str) -> impl FnOnce(io::Error) -> ExecError {
    let what = what.to_owned();
    move |source| ExecError::Setup { what, source }
}

fn nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL only change the flags of an fd we hold.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `fd` made non-blocking and registered with the shim's reactor.
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    nonblocking(&fd)?;
    // SAFETY: the AsyncFd owns the OwnedFd, which keeps the same open fd until it is dropped.
    Ok(unsafe { AsyncFd::register_with_interest(fd, interest) }?)
}

/// Checks the request against the task, starts `sandbox-exec` and returns once the command
/// runs. Must run on the shim's main thread (the fork; see `runtime`).
pub async fn start(shim: &Shim, setup: &api::ExecSetup) -> Result<Started, ExecError> {
    let begun = std::time::Instant::now();
    let argv = &setup.command;
    if argv.first().is_none_or(|p| p.is_empty()) {
        return Err(ExecError::EmptyCommand);
    }
    if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
        return Err(ExecError::Nul(if i == 0 {
            "program".into()
        } else {
            format!("argument {i}")
        }));
    }
    let Some(target_pid) = shim.runtime_pid() else {
        return Err(ExecError::NotRunning("it was never started".into()));
    };
    if let Some(e) = shim.exit() {
        return Err(ExecError::NotRunning(format!(
            "it exited with {}",
            ExitSummary::from(&e)
        )));
    }
    let spec = &shim.spec;
    let state = shim.snapshot();
    let namespaces = match &state.sandbox {
        Some(s) => namespaces_to_join(s).map_err(|m| ExecError::Setup {
            what: "reading the task's namespaces from its state".into(),
            source: io::Error::new(io::ErrorKind::InvalidData, m),
        })?,
        None => Vec::new(),
    };
    let user = runtime::resolve_user(&spec.user).map_err(ExecError::User)?;
    if let Some(s) = &spec.sandbox {
        runtime::check_denied(&s.denied_uids, &s.denied_gids, user.as_ref())
            .map_err(ExecError::User)?;
    }
    let user_name = if spec.user.is_empty() {
        "(the agent's user)".to_owned()
    } else {
        spec.user.clone()
    };
    // A task without a sandbox has no namespaces recorded: it only joined the group network.
    let netns: Option<OwnedFd> = match (&state.sandbox, &spec.netns_path) {
        (None, Some(p)) => Some(
            std::fs::File::open(p)
                .map_err(setup_err(&format!(
                    "opening the network namespace {}",
                    p.display()
                )))?
                .into(),
        ),
        _ => None,
    };
    let tty = setup.tty.then(|| {
        let s = setup.tty_size.unwrap_or_default();
        WindowSize::from_api(s.rows, s.cols)
    });
    let plan = Plan {
        process: Process {
            argv: argv.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            umask: runtime::task_umask(),
            credentials: Credentials::for_task(spec.sandbox.as_ref(), user),
        },
        target_pid,
        namespaces,
        netns: netns.is_some(),
        tty,
    };

    let plan_fd = runtime::plan_memfd(&plan).map_err(setup_err("writing the exec plan"))?;
    let pipe = || runtime::pipe(nix::fcntl::OFlag::empty());
    let (report_r, report_w) = pipe().map_err(setup_err("creating the setup pipe"))?;
    let (control, control_child) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| setup_err("creating the control socket")(e.into()))?;
    // (the shim's ends, the child's stdio)
    let (io, child_stdio): (Io, [OwnedFd; 3]) = if tty.is_some() {
        let null = || -> io::Result<OwnedFd> { Ok(std::fs::File::open("/dev/null")?.into()) };
        let open = || -> io::Result<[OwnedFd; 3]> { Ok([null()?, null()?, null()?]) };
        // The shim's pty end arrives from the helper; placeholders until then.
        (
            Io::Tty {
                master: null().map_err(setup_err("opening /dev/null"))?,
            },
            open().map_err(setup_err("opening /dev/null"))?,
        )
    } else {
        let (in_r, in_w) = pipe().map_err(setup_err("creating the stdin pipe"))?;
        let (out_r, out_w) = pipe().map_err(setup_err("creating the stdout pipe"))?;
        let (err_r, err_w) = pipe().map_err(setup_err("creating the stderr pipe"))?;
        (
            Io::Pipes {
                stdin: in_w,
                stdout: out_r,
                stderr: err_r,
            },
            [in_r, out_w, err_w],
        )
    };
    let mut fds = ChildFds::default();
    let arranged = (|| -> io::Result<()> {
        for (target, fd) in child_stdio.iter().enumerate() {
            fds.add(fd, target as RawFd)?;
        }
        fds.add(&plan_fd, PLAN_FD)?;
        fds.add(&report_w, ERROR_FD)?;
        fds.add(&control_child, CONTROL_FD)?;
        if let Some(n) = &netns {
            fds.add(n, NETNS_FD)?;
        }
        Ok(())
    })();
    arranged.map_err(setup_err("arranging the fds of sandbox-exec"))?;
    let cgroup = shim.cgroup_procs();
    let forking = std::time::Instant::now();
    let helper = runtime::fork_helper(EXEC_COMMAND, 0, &fds.moves(), &cgroup)
        .map_err(setup_err("starting elide-executor sandbox-exec"))?;
    // Registered before the next await: the reaping loop cannot have run since the fork.
    let mut exited = shim.children.expect(helper);
    // The child has its copies; ours must go, or the pipes never reach EOF.
    drop((fds, child_stdio, plan_fd, report_w, control_child, netns));

    let entered = read_report(report_r, SETUP_TIMEOUT).await;
    match entered {
        Ok(None) => {}
        Ok(Some(f)) => return Err(failure_error(f, &plan, user_name)),
        Err(e) => {
            kill_helper(helper, &mut exited, libc::SIGKILL);
            return Err(ExecError::Setup {
                what: format!(
                    "entering the task (it did not finish within {}s)",
                    SETUP_TIMEOUT.as_secs()
                ),
                source: e,
            });
        }
    }
    let (pid, master) = match recv_started(control).await {
        Ok(s) => s,
        Err(e) => {
            kill_helper(helper, &mut exited, libc::SIGKILL);
            return Err(setup_err("hearing from sandbox-exec")(e));
        }
    };
    let io = match (io, master) {
        (Io::Tty { .. }, Some(master)) => Io::Tty { master },
        (Io::Tty { .. }, None) => {
            kill_helper(helper, &mut exited, libc::SIGKILL);
            return Err(setup_err("receiving the terminal from sandbox-exec")(
                io::Error::from(io::ErrorKind::InvalidData),
            ));
        }
        (pipes, _) => pipes,
    };
    // Where the time goes (docs/performance.md, `nomad alloc exec`): the checks and the plan
    // before the fork, then sandbox-exec joining the cgroups and namespaces up to the command's
    // exec (on cgroup v1 most of it is the kernel's wait in the cgroup attach).
    tracing::info!(
        pid,
        helper,
        command = ?argv,
        tty = tty.is_some(),
        prepare_us = forking.duration_since(begun).as_micros() as u64,
        enter_us = forking.elapsed().as_micros() as u64,
        "exec: command started in the task"
    );
    Ok(Started {
        pid,
        helper,
        exited,
        io,
    })
}

/// What a failed step means for the caller.
fn failure_error(f: Failure, plan: &Plan, user: String) -> ExecError {
    let program = plan.process.argv.first().cloned().unwrap_or_default();
    match (f.step, f.errno) {
        (Step::Exec, libc::ENOENT) => ExecError::NotFound {
            program,
            path: plan.process.env.get("PATH").cloned().unwrap_or_default(),
        },
        (Step::Exec, libc::EACCES | libc::EPERM) => ExecError::NotExecutable { program, user },
        (Step::Exec, _) => ExecError::Exec {
            program,
            source: f.error(),
        },
        (step, _) => ExecError::Setup {
            what: if f.detail.is_empty() {
                step.describe().to_owned()
            } else {
                format!("{} ({})", step.describe(), f.detail)
            },
            source: f.error(),
        },
    }
}

/// Sends `sig` to `sandbox-exec` unless it was already reaped (single thread: nothing can
/// reap it between this check and the kill, so the pid is still ours).
fn kill_helper(helper: i32, exited: &mut oneshot::Receiver<Reaped>, sig: libc::c_int) {
    if let Err(oneshot::error::TryRecvError::Empty) = exited.try_recv() {
        // SAFETY: kill with integer arguments, on our unreaped child.
        unsafe { libc::kill(helper, sig) };
    }
}

/// Reads the setup pipe to EOF (the command runs) or a failure frame, within `timeout`.
async fn read_report(r: OwnedFd, timeout: Duration) -> io::Result<Option<Failure>> {
    let fd = register(r, Interest::READABLE)?;
    let read_all = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            match read_ready(&fd, &mut chunk).await? {
                0 => return Ok(Failure::decode(&buf)),
                n => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(timeout, read_all)
        .await
        .unwrap_or_else(|_| Err(io::Error::from(io::ErrorKind::TimedOut)))
}

/// `S<pid>` from `sandbox-exec`, with the pty master when there is one.
async fn recv_started(sock: OwnedFd) -> io::Result<(i32, Option<OwnedFd>)> {
    let fd = register(sock, Interest::READABLE)?;
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|s| recv_started_now(s.as_raw_fd())) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

fn recv_started_now(fd: RawFd) -> io::Result<(i32, Option<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 16];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let (bytes, received) = {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fds: Vec<RawFd> = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(r) = c {
                fds.extend(r);
            }
        }
        (msg.bytes, fds)
    };
    // SAFETY: fds passed to us with SCM_RIGHTS are new and ours.
    let mut owned = received
        .into_iter()
        .map(|f| unsafe { OwnedFd::from_raw_fd(f) });
    let master = owned.next();
    drop(owned);
    if bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "sandbox-exec exited without starting the command",
        ));
    }
    if bytes != 5 || buf[0] != STARTED {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected message from sandbox-exec",
        ));
    }
    let pid = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
    Ok((pid, master))
}

/// One read of whatever is available, waiting until something is. A pty master reads EIO
/// once every holder of its terminal is gone: that is its end of file.
async fn read_ready(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|f| read_now(f.as_raw_fd(), buf)) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

fn read_now(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: read into a live buffer of its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n >= 0 {
        return Ok(n as usize);
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EIO) => Ok(0),
        e => Err(e),
    }
}

async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        let written = guard.try_io(|f| {
            // SAFETY: write from a live buffer of its length.
            let n = unsafe { libc::write(f.as_raw_fd(), data.as_ptr().cast(), data.len()) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match written {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Which output stream a pump forwards.
#[derive(Clone, Copy)]
enum Out {
    Stdout,
    Stderr,
}

impl Out {
    fn data(self, bytes: &[u8]) -> api::ExecResponse {
        match self {
            Out::Stdout => api::ExecResponse {
                stdout: bytes.to_vec(),
                ..Default::default()
            },
            Out::Stderr => api::ExecResponse {
                stderr: bytes.to_vec(),
                ..Default::default()
            },
        }
    }

    fn closed(self) -> api::ExecResponse {
        api::ExecResponse {
            stdout_closed: matches!(self, Out::Stdout),
            stderr_closed: matches!(self, Out::Stderr),
            ..Default::default()
        }
    }
}

type Reply = mpsc::Sender<Result<api::ExecResponse, tonic::Status>>;

/// Forwards one output of the command until its end; once the command exited (`done`), only
/// what is left (see [`TTY_DRAIN`]). Ends with the stream's `*_closed` message.
async fn pump(
    fd: Arc<AsyncFd<OwnedFd>>,
    out: Out,
    tx: Reply,
    mut done: watch::Receiver<bool>,
    tty: bool,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let read = tokio::select! {
            biased;
            r = read_ready(&fd, &mut buf) => Some(r),
            _ = done.wait_for(|d| *d) => None,
        };
        match read {
            Some(Ok(0)) | Some(Err(_)) => break,
            Some(Ok(n)) => {
                if tx.send(Ok(out.data(&buf[..n]))).await.is_err() {
                    return;
                }
            }
            None => {
                if !drain(&fd, out, &tx, tty, &mut buf).await {
                    return;
                }
                break;
            }
        }
    }
    let _ = tx.send(Ok(out.closed())).await;
}

/// The rest of an output after the command exited; false when the caller is gone.
async fn drain(fd: &AsyncFd<OwnedFd>, out: Out, tx: &Reply, tty: bool, buf: &mut [u8]) -> bool {
    let deadline = Instant::now() + if tty { TTY_DRAIN } else { PIPE_DRAIN };
    loop {
        let read = if tty {
            match tokio::time::timeout_at(deadline, read_ready(fd, buf)).await {
                Ok(r) => r,
                Err(_) => return true,
            }
        } else if Instant::now() >= deadline {
            return true;
        } else {
            read_now(fd.as_raw_fd(), buf)
        };
        match read {
            Ok(0) | Err(_) => return true,
            Ok(n) => {
                if tx.send(Ok(out.data(&buf[..n]))).await.is_err() {
                    return false;
                }
            }
        }
    }
}

/// How the caller's side ended.
enum InputEnd {
    /// The caller went away (the stream broke): the command is killed.
    Gone,
    /// The caller will send nothing more (it closed its side).
    Ended,
}

/// Feeds the caller's messages to the command: stdin bytes, stdin's end, terminal sizes.
async fn input<S>(mut inbound: S, writer: Arc<AsyncFd<OwnedFd>>, tty: bool) -> InputEnd
where
    S: Stream<Item = Result<api::ExecRequest, tonic::Status>> + Unpin,
{
    let mut writer = Some(writer);
    while let Some(m) = inbound.next().await {
        let Ok(m) = m else { return InputEnd::Gone };
        let Some(w) = writer.as_ref() else { continue };
        if let (Some(size), true) = (m.tty_size, tty) {
            let ws = WindowSize::from_api(size.rows, size.cols).winsize();
            // SAFETY: TIOCSWINSZ reads a winsize from a live struct; the kernel signals
            // SIGWINCH to the terminal's foreground group.
            unsafe { libc::ioctl(w.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        }
        if !m.stdin.is_empty() && write_all(w, &m.stdin).await.is_err() && !tty {
            // The command closed its stdin (EPIPE): nothing more can go in.
            writer = None;
            continue;
        }
        if m.stdin_close {
            if tty {
                // A terminal has no "close": type its end-of-file character, as a user would.
                let eof = nix::sys::termios::tcgetattr(w.get_ref())
                    .map(|t| {
                        t.control_chars[nix::sys::termios::SpecialCharacterIndices::VEOF as usize]
                    })
                    .unwrap_or(DEFAULT_VEOF);
                let _ = write_all(w, &[eof]).await;
            } else {
                writer = None;
            }
        }
    }
    InputEnd::Ended
}

/// Relays between the caller and a started command until it exits: its pid first, then its
/// output, then its exit. If the caller goes away first (the stream breaks, or nobody reads
/// the replies any more), the command and its process group are killed.
pub async fn relay<S>(started: Started, inbound: S, tx: Reply)
where
    S: Stream<Item = Result<api::ExecRequest, tonic::Status>> + Unpin + Send + 'static,
{
    let Started {
        pid,
        helper,
        mut exited,
        io,
    } = started;
    let hello = api::ExecResponse {
        pid,
        ..Default::default()
    };
    let (done_tx, done_rx) = watch::channel(false);
    let tty = matches!(io, Io::Tty { .. });
    let wrap = |fd: OwnedFd, interest: Interest| register(fd, interest).map(Arc::new);
    let streams = match io {
        Io::Pipes {
            stdin,
            stdout,
            stderr,
        } => wrap(stdin, Interest::WRITABLE).and_then(|w| {
            Ok((
                w,
                vec![
                    (wrap(stdout, Interest::READABLE)?, Out::Stdout),
                    (wrap(stderr, Interest::READABLE)?, Out::Stderr),
                ],
            ))
        }),
        Io::Tty { master } => wrap(master, Interest::READABLE | Interest::WRITABLE)
            .map(|m| (m.clone(), vec![(m, Out::Stdout)])),
    };
    let (writer, outputs) = match streams {
        Ok(s) if tx.send(Ok(hello)).await.is_ok() => s,
        other => {
            if let Err(e) = other {
                let _ = tx
                    .send(Err(tonic::Status::internal(format!(
                        "cannot relay the command's input and output: {e}"
                    ))))
                    .await;
            }
            stop(pid, helper, &mut exited).await;
            return;
        }
    };
    let pumps: Vec<_> = outputs
        .into_iter()
        .map(|(fd, out)| tokio::spawn(pump(fd, out, tx.clone(), done_rx.clone(), tty)))
        .collect();
    let mut feeder = tokio::spawn(input(inbound, writer, tty));
    let mut feeding = true;
    let ended = loop {
        tokio::select! {
            r = &mut exited => break Some(r.ok()),
            _ = tx.closed() => break None,
            r = &mut feeder, if feeding => {
                feeding = false;
                if matches!(r, Ok(InputEnd::Gone) | Err(_)) {
                    break None;
                }
            }
        }
    };
    let Some(reaped) = ended else {
        tracing::info!(pid, "exec: the caller went away; killing the command");
        stop(pid, helper, &mut exited).await;
        feeder.abort();
        for p in pumps {
            p.abort();
        }
        return;
    };
    let _ = done_tx.send(true);
    for p in pumps {
        let _ = p.await;
    }
    feeder.abort();
    let r = reaped.unwrap_or(Reaped {
        pid: helper,
        exit_code: -1,
        signal: 0,
    });
    tracing::info!(
        pid,
        exit_code = r.exit_code,
        signal = r.signal,
        "exec: command exited"
    );
    let _ = tx
        .send(Ok(api::ExecResponse {
            exit: Some(api::ExitStatus {
                exit_code: r.exit_code,
                signal: r.signal,
                oom_killed: false,
                message: String::new(),
                exited_at_unix_ms: common::state::now_ms(),
            }),
            ..Default::default()
        }))
        .await;
}

/// Kills the command (through `sandbox-exec`, which is its parent) and waits for it to go.
async fn stop(pid: i32, helper: i32, exited: &mut oneshot::Receiver<Reaped>) {
    kill_helper(helper, exited, libc::SIGTERM);
    if tokio::time::timeout(KILL_WAIT, &mut *exited).await.is_err() {
        tracing::warn!(pid, helper, "sandbox-exec did not end its command; SIGKILL");
        kill_helper(helper, exited, libc::SIGKILL);
        let _ = tokio::time::timeout(KILL_WAIT, &mut *exited).await;
    }
}
