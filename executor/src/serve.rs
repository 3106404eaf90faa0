//! The shim process: read and check the spec, bind the control socket, persist the initial
//! state, report ready, then serve, reap, linger after the exit, and go.

use crate::error::ShimError;
use crate::service::Service;
use crate::shim::Shim;
use crate::signals::Signals;
use common::proto::executor::executor_server::ExecutorServer;
use common::spec::{TaskSpec, TASK_SPEC_VERSION};
use nix::sys::signal::Signal;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long the shim waits for Start before it assumes the plugin gave up on it (at least;
/// `linger_after_exit_secs` if that is longer).
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// Stop timeout used when the shim itself gets SIGTERM (or SIGINT in `run` mode).
pub const SELF_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long in-flight replies (e.g. Shutdown's) get to reach their callers at exit.
const DRAIN: Duration = Duration::from_secs(2);

/// Reads and checks a task spec: from a file, or from stdin when `path` is `-` (how the
/// plugin hands it over, so the task's environment is never written to disk). Stdin is
/// read to its end and then replaced by /dev/null.
pub fn read_spec(path: &Path) -> Result<TaskSpec, ShimError> {
    let body = if path == Path::new("-") {
        read_stdin_to_end()
    } else {
        std::fs::read(path)
    }
    .map_err(|source| ShimError::SpecRead {
        path: path.into(),
        source,
    })?;
    let spec: TaskSpec = serde_json::from_slice(&body).map_err(|e| ShimError::SpecInvalid {
        path: path.into(),
        message: e.to_string(),
    })?;
    check_spec(&spec).map_err(|message| ShimError::SpecInvalid {
        path: path.into(),
        message,
    })?;
    Ok(spec)
}

fn read_stdin_to_end() -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut body = Vec::new();
    // Fd 0 directly: `std::io::stdin()` would keep its 8 KiB buffer for the shim's life.
    // SAFETY: fd 0 stays open (replaced by /dev/null below); ManuallyDrop never closes it.
    let mut stdin = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
    stdin.read_to_end(&mut body)?;
    let null = std::fs::File::open("/dev/null")?;
    nix::unistd::dup2(null.as_raw_fd(), 0)?;
    Ok(body)
}

/// The checks `read_spec` makes beyond the JSON shape.
fn check_spec(spec: &TaskSpec) -> Result<(), String> {
    if spec.version != TASK_SPEC_VERSION {
        return Err(format!(
            "version {} is not supported (this elide-executor reads version {TASK_SPEC_VERSION}); use the elide-executor that ships with the plugin",
            spec.version
        ));
    }
    if spec.task_id.is_empty() {
        return Err("task_id is empty".into());
    }
    if spec.argv.first().is_none_or(|a| a.is_empty()) {
        return Err("argv is empty; argv[0] must be the runtime binary".into());
    }
    // Numbers in range, env names and sizes execve takes.
    spec.validate().map_err(|e| e.to_string())?;
    let mut paths = vec![
        ("socket_path", &spec.socket_path),
        ("state_path", &spec.state_path),
        ("cwd", &spec.cwd),
        ("stdout_path", &spec.stdout_path),
        ("stderr_path", &spec.stderr_path),
    ];
    if let Some(n) = &spec.netns_path {
        paths.push(("netns_path", n));
    }
    for (name, p) in paths {
        if !p.is_absolute() {
            return Err(format!(
                "{name} {:?} must be an absolute path",
                p.display().to_string()
            ));
        }
    }
    if spec.state_path.file_name().is_none() {
        return Err("state_path must name a file".into());
    }
    let len = spec.socket_path.as_os_str().len();
    if len > common::paths::MAX_SOCKET_PATH {
        return Err(format!(
            "socket_path is {len} bytes, over the {}-byte limit of Unix sockets; use a shorter directory (the plugin's runtime_dir)",
            common::paths::MAX_SOCKET_PATH
        ));
    }
    Ok(())
}

/// Creates `dir` (and parents) with mode 0700 for the ones it creates.
fn make_dir(dir: &Path) -> Result<(), ShimError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ShimError::Dir {
            path: dir.into(),
            source,
        })
}

/// Binds the control socket with mode 0600, replacing a stale socket file nobody answers on
/// (and nothing else: any other file there is refused, never deleted).
fn bind(path: &Path) -> Result<tokio::net::UnixListener, ShimError> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(dir) = path.parent() {
        make_dir(dir)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let t = meta.file_type();
        if !t.is_socket() {
            let kind = if t.is_symlink() {
                "symlink"
            } else if t.is_dir() {
                "directory"
            } else if t.is_file() {
                "regular file"
            } else {
                "special file"
            };
            return Err(ShimError::NotASocket {
                path: path.into(),
                kind,
            });
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ShimError::SocketBusy(path.into()));
        }
        let _ = std::fs::remove_file(path);
    }
    // Created 0600 from the start (no window with a wider mode); umask is per process and
    // nothing else runs yet.
    // SAFETY: umask has no preconditions.
    let old = unsafe { libc::umask(0o177) };
    let bound = tokio::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = bound.map_err(|source| ShimError::Bind {
        path: path.into(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        ShimError::Bind {
            path: path.into(),
            source,
        }
    })?;
    Ok(l)
}

/// Signals a shim must survive: SIGHUP (a closed terminal, `kill -HUP` of a process group),
/// SIGUSR1/SIGUSR2/SIGALRM (careless scripts) and SIGPIPE (a peer gone; errors, not death,
/// as in Nomad's own executor) all kill a process that does not handle them. `serve` also
/// ignores SIGINT (a Ctrl-C in the agent's terminal reaches its whole foreground group, as
/// go-plugin servers do); `run` handles SIGINT and SIGHUP as a stop instead (see `prepare`).
/// The runtime gets default dispositions back before exec (runtime.rs). Call first thing.
pub fn ignore_stray_signals(mode: &Mode) {
    let mut ignored = vec![libc::SIGUSR1, libc::SIGUSR2, libc::SIGALRM, libc::SIGPIPE];
    if matches!(mode, Mode::Serve { .. }) {
        ignored.extend([libc::SIGHUP, libc::SIGINT]);
    }
    for sig in ignored {
        // SAFETY: setting a disposition to SIG_IGN installs no handler.
        unsafe {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
}

/// Marks every inherited fd above 2 close-on-exec, so the runtime inherits nothing of the
/// plugin by accident (the plugin should have done this; this is the belt to its braces).
pub fn cloexec_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD/F_SETFD on an fd number only change its flag; a number that was
        // the read_dir's own (now closed) fd just fails with EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

pub enum Mode {
    /// Launched by the plugin: report readiness on this fd.
    Serve { ready_fd: Option<i32> },
    /// Standalone debugging: start the runtime ourselves, exit with its exit code.
    Run,
}

/// The readiness pipe: `READY` or `ERROR <message>`, one line, then closed.
pub struct Ready(Option<std::fs::File>);

impl Ready {
    /// Takes ownership of `fd` (the plugin passed it for exactly this) when it is an open
    /// pipe. Call it first thing in `main`, before the async runtime or anything else opens
    /// an fd: a `--ready-fd` that is not open would otherwise name the next fd opened (the
    /// runtime's epoll), which the shim would then write to and close. An fd that is open
    /// but not a pipe is not ours either: it is left alone.
    pub fn from_fd(fd: Option<i32>) -> Ready {
        Ready(
            fd.filter(|fd| *fd > 2)
                .filter(|fd| {
                    nix::sys::stat::fstat(*fd)
                        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO)
                })
                // SAFETY: the fd is an open pipe handed to us on the command line for our
                // exclusive use; nothing else in this process owns it.
                .map(|fd| std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) })),
        )
    }

    /// No readiness pipe (`run`).
    pub fn none() -> Ready {
        Ready(None)
    }

    pub fn raw_fd(&self) -> Option<i32> {
        self.0.as_ref().map(|f| f.as_raw_fd())
    }

    fn send(&mut self, line: &str) {
        if let Some(mut f) = self.0.take() {
            let one_line = line.replace(['\n', '\r'], " ");
            let _ = f.write_all(format!("{one_line}\n").as_bytes());
        }
    }

    pub fn ready(&mut self) {
        self.send("READY")
    }

    pub fn error(&mut self, e: &dyn std::fmt::Display) {
        self.send(&format!("ERROR {e}"))
    }
}

/// Everything up to (not including) READY: the socket is bound, the state file and the index
/// link exist, signal handlers are in place.
pub struct Prepared {
    pub shim: Arc<Shim>,
    listener: tokio::net::UnixListener,
    signals: Signals,
}

/// The signals `mode` handles (read from a signalfd: see [`crate::signals`]).
fn handled_signals(mode: &Mode) -> &'static [Signal] {
    match mode {
        Mode::Serve { .. } => &[Signal::SIGCHLD, Signal::SIGTERM],
        Mode::Run => &[
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ],
    }
}

/// Blocks the signals the shim reads from its signalfd. Call it in `main` before the async
/// runtime starts any thread.
pub fn block_handled_signals(mode: &Mode) {
    // A failure cannot happen for a valid set; `Signals::new` blocks again and reports one.
    let _ = crate::signals::block(handled_signals(mode));
}

pub fn prepare(spec: TaskSpec, mode: &Mode) -> Result<Prepared, ShimError> {
    // Everything the shim creates (state, lock, log, socket, dirs) is private to its user:
    // the state file holds the task's environment. The runtime gets the original umask back.
    // SAFETY: umask has no preconditions.
    let inherited = unsafe { libc::umask(0o077) };
    crate::runtime::set_task_umask(inherited);
    // Orphans of the runtime (double-forked daemons) are re-parented to us and reaped here.
    if let Err(e) = crate::reaper::become_subreaper() {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphans go to init");
    }
    // Before any child exists, so no exit is missed.
    let signals = Signals::new(handled_signals(mode)).map_err(ShimError::Signals)?;
    if let Some(dir) = spec.state_path.parent() {
        make_dir(dir)?;
    }
    let listener = bind(&spec.socket_path)?;
    let shim = Shim::new(spec);
    let undo = |shim: &Shim| shim.remove_socket();
    if let Err(e) = shim.persist() {
        undo(&shim);
        return Err(e.into());
    }
    if let Some(link) = shim.index_link() {
        let _ = std::fs::remove_file(&link);
        if let Err(source) = std::os::unix::fs::symlink(&shim.spec.state_path, &link) {
            undo(&shim);
            let _ = common::state::TaskState::remove(&shim.spec.state_path);
            return Err(ShimError::Index { path: link, source });
        }
    }
    Ok(Prepared {
        shim,
        listener,
        signals,
    })
}

/// How the serve loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown RPC: everything is removed.
    Shutdown,
    /// The runtime exited and nobody shut the shim down within the linger time (or the shim
    /// got SIGTERM after the exit): socket and link removed, state file kept.
    Lingered,
    /// `run` mode: the runtime exited.
    Exited,
    /// Nobody called Start in time: everything is removed.
    NeverStarted,
}

/// Serves until the shim should go; returns how it ended.
pub async fn serve(p: Prepared, mode: &Mode) -> Ended {
    let Prepared {
        shim,
        listener,
        mut signals,
    } = p;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let svc = Service { shim: shim.clone() };
    let mut server = tokio::spawn(async move {
        let incoming = crate::listener::bounded(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            crate::listener::max_connections(),
        );
        crate::listener::serve(ExecutorServer::new(svc), incoming, async {
            let _ = stop_rx.await;
        })
        .await;
    });

    let run_mode = matches!(mode, Mode::Run);
    if run_mode {
        match shim.start().await {
            Ok(r) => eprintln!("elide-executor: started pid {}", r.pid),
            Err(e) => eprintln!("elide-executor: cannot start the runtime: {e}"),
        }
    }

    let linger = Duration::from_secs(shim.spec.linger_after_exit_secs);
    let start_deadline = later(Instant::now(), linger.max(START_DEADLINE));
    let mut exited = shim.subscribe_exit();
    let mut exited_at: Option<Instant> = None;
    let ended = loop {
        // Whatever ran deeper since the last wake (the spec's parsing; Start's spawn, which
        // wakes this loop when done) left stack pages nothing needs while the shim waits for
        // its task: give them back once the runtime is idle (rare: this loop wakes for
        // Start, signals and deadlines only).
        crate::memory::release_dead_stack_when_idle();
        if run_mode && shim.runtime_pid().is_none() {
            // `run` could not start the runtime: nothing to serve.
            break Ended::NeverStarted;
        }
        let deadline = match (exited_at, shim.runtime_pid()) {
            (Some(t), _) => Some(later(t, linger)),
            (None, None) => Some(start_deadline),
            (None, Some(_)) => None,
        };
        tokio::select! {
            sig = signals.recv() => match sig {
                libc::SIGCHLD => shim.reap(),
                libc::SIGTERM => {
                    if exited_at.is_some() {
                        tracing::info!("SIGTERM after the exit: leaving now");
                        break Ended::Lingered;
                    }
                    if shim.runtime_pid().is_none() {
                        tracing::info!("SIGTERM before Start: removing the shim");
                        break Ended::NeverStarted;
                    }
                    tracing::info!("SIGTERM: stopping the runtime");
                    let s = shim.clone();
                    tokio::spawn(async move {
                        let _ = s.stop(Some(common::signals::TaskSignal::SIGTERM), SELF_STOP_TIMEOUT).await;
                    });
                }
                // SIGINT or SIGHUP: only `run` handles them.
                _ => {
                    eprintln!("elide-executor: interrupted: stopping the runtime (SIGINT, then SIGKILL after {SELF_STOP_TIMEOUT:?})");
                    let s = shim.clone();
                    tokio::spawn(async move {
                        let _ = s.stop(Some(common::signals::TaskSignal::SIGINT), SELF_STOP_TIMEOUT).await;
                    });
                }
            },
            _ = shim.shutdown_requested() => break Ended::Shutdown,
            // Only to wake the loop: the deadline and the stack (above) are looked at again.
            _ = shim.start_done() => {}
            r = exited.wait_for(|e| e.is_some()), if exited_at.is_none() => {
                if r.is_ok() {
                    exited_at = Some(Instant::now());
                    if run_mode {
                        break Ended::Exited;
                    }
                    tracing::info!(linger_secs = linger.as_secs(), "runtime exited; lingering for Shutdown");
                }
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                match at_deadline(exited_at.is_some(), shim.runtime_pid().is_some()) {
                    Some(Ended::Lingered) => {
                        tracing::info!("nobody shut the shim down within the linger time; the exit stays in the state file");
                        break Ended::Lingered;
                    }
                    Some(e) => {
                        tracing::warn!("no Start within {:?}: the plugin gave up on this shim; removing it", linger.max(START_DEADLINE));
                        break e;
                    }
                    // Started while this wait was armed (nothing else woke the loop since).
                    None => continue,
                }
            }
        }
    };
    if ended == Ended::Exited {
        if let Some(e) = shim.exit() {
            eprintln!(
                "elide-executor: the runtime exited with {}",
                common::state::ExitSummary::from(&e)
            );
        }
    }
    match ended {
        Ended::Shutdown => {}
        Ended::Lingered | Ended::Exited => shim.remove_socket(),
        Ended::NeverStarted => {
            if run_mode {
                shim.remove_socket();
            } else {
                shim.shutdown().await;
            }
        }
    }
    let _ = stop_tx.send(());
    if tokio::time::timeout(DRAIN, &mut server).await.is_err() {
        server.abort();
    }
    ended
}

/// What the shim does when the deadline it armed passes: the start deadline was computed
/// before Start, and a Start that nothing else followed (no signal, no exit) does not re-arm
/// it, so the runtime having started since means there is no deadline any more (before this
/// check, every idle task was removed as "never started" 5 minutes after its start).
fn at_deadline(exited: bool, started: bool) -> Option<Ended> {
    match (exited, started) {
        (true, _) => Some(Ended::Lingered),
        (false, false) => Some(Ended::NeverStarted),
        (false, true) => None,
    }
}

/// `t + d`, or a time about a century away when that does not fit the clock (`Instant + d`
/// panics on overflow; specs are range-checked, but a deadline must never be the crash).
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(100 * 365 * 24 * 3_600))
}

/// Runs one shim: prepare, report readiness, serve. Returns the runtime's exit code for
/// `run` (1 when it never ran) and 0 for `serve`.
pub async fn run(spec: TaskSpec, mode: Mode, mut ready: Ready) -> Result<i32, ShimError> {
    let prepared = match prepare(spec, &mode) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "shim setup failed");
            ready.error(&e);
            return Err(e);
        }
    };
    let shim = prepared.shim.clone();
    tracing::info!(socket = %shim.spec.socket_path.display(), pid = std::process::id(), "shim ready");
    ready.ready();
    let ended = serve(prepared, &mode).await;
    tracing::info!(?ended, "shim exiting");
    Ok(match mode {
        Mode::Serve { .. } => 0,
        Mode::Run => shim.exit().map(|e| e.exit_code).unwrap_or(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_started_after_the_start_deadline_was_armed_is_not_removed() {
        assert_eq!(at_deadline(false, true), None);
        assert_eq!(at_deadline(false, false), Some(Ended::NeverStarted));
        assert_eq!(at_deadline(true, false), Some(Ended::Lingered));
        assert_eq!(at_deadline(true, true), Some(Ended::Lingered));
    }

    #[test]
    fn deadlines_never_overflow_the_clock() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        // `now + Duration::from_secs(u64::MAX)` panics.
        let far = later(now, Duration::from_secs(u64::MAX));
        assert!(far > now + Duration::from_secs(50 * 365 * 24 * 3_600));
    }
}
