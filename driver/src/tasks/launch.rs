//! Starting a task's shim: spawn `elide-executor serve --spec - --ready-fd 3 --task <task id>`
//! detached from the plugin (own session, no inherited fds), hand it the spec on its stdin (a
//! pipe: the task's environment holds secrets and is never written to disk), wait for its
//! readiness line on another pipe.
//!
//! [`Launcher`] is the seam the lifecycle is tested through: the unit tests launch a fake
//! shim (a gRPC server on the spec's socket) instead of a process.

use common::paths::LOG_FILE;
use common::spec::TaskSpec;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// The fd number the shim writes its readiness line to.
pub const READY_FD: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot encode the task spec: {0}")]
    Spec(serde_json::Error),
    #[error("cannot start the shim {path}: {source}; check executor_binary in the plugin config")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the shim failed before it was ready: {0}")]
    Refused(String),
    #[error("the shim exited before it was ready; see {log}")]
    DiedEarly { log: PathBuf },
    #[error("the shim did not report ready within {0:?}; see {1}")]
    Timeout(Duration, PathBuf),
    #[error("cannot create a pipe for the shim: {0}")]
    Pipe(nix::Error),
}

impl LaunchError {
    /// Whether a retry could plausibly succeed.
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self,
            LaunchError::Timeout(..) | LaunchError::DiedEarly { .. } | LaunchError::Pipe(_)
        )
    }
}

pub struct Launched {
    pub shim_pid: i32,
}

/// Starts a shim for a task; returns once it serves the spec's socket.
#[tonic::async_trait]
pub trait Launcher: Send + Sync {
    async fn launch(
        &self,
        executor: &Path,
        spec: &TaskSpec,
        timeout: Duration,
    ) -> Result<Launched, LaunchError>;
}

/// The real thing: an `elide-executor serve` process.
pub struct ProcessLauncher;

#[tonic::async_trait]
impl Launcher for ProcessLauncher {
    async fn launch(
        &self,
        executor: &Path,
        spec: &TaskSpec,
        timeout: Duration,
    ) -> Result<Launched, LaunchError> {
        launch_shim(executor, spec, timeout).await
    }
}

/// Starts the shim and hands it the spec. Returns once the shim is serving its socket (it
/// said READY), or with the reason it gave up.
pub async fn launch_shim(
    executor: &Path,
    spec: &TaskSpec,
    timeout: Duration,
) -> Result<Launched, LaunchError> {
    let dir = spec
        .state_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let body = serde_json::to_vec(spec).map_err(LaunchError::Spec)?;
    let log = dir.join(LOG_FILE);

    let (read_end, write_end): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(LaunchError::Pipe)?;
    let write_raw = write_end.as_raw_fd();

    let mut cmd = tokio::process::Command::new(executor);
    cmd.arg("serve")
        .arg("--spec")
        .arg("-")
        .arg("--ready-fd")
        .arg(READY_FD.to_string())
        // For operators: `ps` shows which task each shim runs (the shim checks it against
        // the spec).
        .arg("--task")
        .arg(&spec.task_id)
        // Never the plugin's stdio: go-plugin waits for EOF on our stderr pipe to notice that
        // the plugin died, and a shim holding it would hide that forever. Stdin is a pipe of
        // its own for the spec (the shim swaps it for /dev/null once read).
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| super::command::DEFAULT_PATH.into()),
        )
        .current_dir("/")
        .kill_on_drop(false);
    // A coverage build (`scripts/test --coverage`, docs/testing.md) lets the shim write its
    // counters where the plugin writes its own.
    #[cfg(coverage)]
    if let Some(profile) = std::env::var_os("LLVM_PROFILE_FILE") {
        cmd.env("LLVM_PROFILE_FILE", profile);
    }
    // SAFETY: only async-signal-safe calls (setsid, dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Own session and process group: agent/plugin signals and terminal job control
            // never reach the shim, and it survives the plugin.
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if write_raw == READY_FD {
                let r = libc::fcntl(READY_FD, libc::F_SETFD, 0);
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(write_raw, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn {
        path: executor.to_path_buf(),
        source,
    })?;
    drop(write_end);
    let shim_pid = child.id().map(|p| p as i32).unwrap_or(-1);
    let stdin = child.stdin.take();
    // The shim is reaped whenever it exits, so it never lingers as our zombie: dropped
    // unwaited (kill_on_drop is off), the child goes to tokio's orphan queue, which reaps it
    // on SIGCHLD. Waiting on it instead would hold a pidfd and a task per shim for the
    // task's life (8 fds per task at 1,000 tasks, docs/performance.md).
    drop(child);

    let pipe = tokio::fs::File::from(std::fs::File::from(read_end));
    let mut reader = tokio::io::BufReader::new(pipe);
    let mut line = String::new();
    let handshake = async {
        // A shim that dies before reading it all makes the write fail (EPIPE): what it said
        // on the ready pipe, or its early death, is the error to report.
        if let Some(mut stdin) = stdin {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&body).await;
        }
        reader.read_line(&mut line).await
    };
    let read = tokio::time::timeout(timeout, handshake).await;
    let line = line.trim().to_owned();
    match read {
        Err(_) => {
            // Given up on: told to leave (a shim before Start removes itself on SIGTERM), not
            // left waiting out its start deadline. Still our unreaped child or its zombie,
            // so the pid is its own.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(shim_pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            Err(LaunchError::Timeout(timeout, log))
        }
        Ok(_) if line == "READY" => Ok(Launched { shim_pid }),
        Ok(_) if line.starts_with("ERROR") => Err(LaunchError::Refused(
            line.trim_start_matches("ERROR").trim().to_owned(),
        )),
        Ok(_) => Err(LaunchError::DiedEarly { log }),
    }
}
