//! The shim process: bind the control socket, persist state, report ready, serve, reap,
//! linger after the exit, and go.

use crate::error::ShimError;
use crate::shim::{Service, Shim};
use common::proto::executor::executor_server::ExecutorServer;
use common::spec::{TaskSpec, TASK_SPEC_VERSION};
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

pub fn read_spec(path: &Path) -> Result<TaskSpec, ShimError> {
    let body = std::fs::read(path).map_err(|source| ShimError::SpecRead {
        path: path.into(),
        source,
    })?;
    let spec: TaskSpec = serde_json::from_slice(&body).map_err(|e| ShimError::SpecInvalid {
        path: path.into(),
        message: e.to_string(),
    })?;
    let bad = |message: String| ShimError::SpecInvalid {
        path: path.into(),
        message,
    };
    if spec.version != TASK_SPEC_VERSION {
        return Err(bad(format!(
            "version {} is not supported (this build reads {TASK_SPEC_VERSION})",
            spec.version
        )));
    }
    if spec.argv.is_empty() {
        return Err(bad("argv is empty".into()));
    }
    for (name, p) in [
        ("socket_path", &spec.socket_path),
        ("state_path", &spec.state_path),
        ("cwd", &spec.cwd),
    ] {
        if !p.is_absolute() {
            return Err(bad(format!("{name} {} must be absolute", p.display())));
        }
    }
    let len = spec.socket_path.as_os_str().len();
    if len > common::paths::MAX_SOCKET_PATH {
        return Err(bad(format!(
            "socket_path is {len} bytes, over the {}-byte Unix socket limit; use a shorter directory",
            common::paths::MAX_SOCKET_PATH
        )));
    }
    Ok(spec)
}

/// Binds the socket (0600), replacing a stale socket file nobody answers on.
fn bind(path: &Path) -> Result<tokio::net::UnixListener, ShimError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ShimError::SocketBusy(path.into()));
        }
        let _ = std::fs::remove_file(path);
    }
    let l = tokio::net::UnixListener::bind(path).map_err(|source| ShimError::Bind {
        path: path.into(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub enum Mode {
    /// Launched by the plugin: report readiness on this fd.
    Serve { ready_fd: Option<i32> },
    /// Standalone debugging: start the runtime ourselves, exit with its code.
    Run,
}

fn report(ready: &mut Option<std::fs::File>, line: &str) {
    if let Some(f) = ready.as_mut() {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
    *ready = None;
}

/// Runs one shim until it is shut down or has lingered after the exit. Returns the runtime's
/// exit code (for `run`).
pub async fn run(spec_path: &Path, mode: Mode) -> Result<i32, ShimError> {
    let mut ready = match &mode {
        // SAFETY: the plugin passed this fd to us for exactly this purpose; we own it now.
        Mode::Serve { ready_fd: Some(fd) } => {
            Some(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(*fd) }))
        }
        _ => None,
    };
    let result = setup(spec_path).await;
    let (shim, listener) = match result {
        Ok(v) => v,
        Err(e) => {
            report(&mut ready, &format!("ERROR {e}"));
            return Err(e);
        }
    };
    // Register for SIGCHLD before any child exists, so no exit is missed.
    let mut sigchld = signal(SignalKind::child())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    report(&mut ready, "READY");
    tracing::info!(socket = %shim.spec.socket_path.display(), "shim ready");

    let svc = Service { shim: shim.clone() };
    let server_shim = shim.clone();
    let server = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(ExecutorServer::new(svc))
            .serve_with_incoming(incoming)
            .await;
        drop(server_shim);
    });

    if matches!(mode, Mode::Run) {
        if let Err(s) = shim.start().await {
            eprintln!("elide-executor: cannot start the runtime: {}", s.message());
            shim.teardown().await;
            return Ok(1);
        }
    }

    let linger = Duration::from_secs(shim.spec.linger_after_exit_secs);
    let mut exited = shim.subscribe_exit();
    let mut lingering = false;
    loop {
        tokio::select! {
            _ = sigchld.recv() => shim.reap(),
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: stopping the runtime");
                let s = shim.clone();
                tokio::spawn(async move { let _ = s.stop(Some(nix::sys::signal::Signal::SIGTERM), Duration::from_secs(5)).await; });
            }
            _ = shim.shutdown.notified() => {
                // Give the Shutdown reply a moment to reach the caller.
                tokio::time::sleep(Duration::from_millis(20)).await;
                break;
            }
            r = exited.wait_for(|e| e.is_some()), if !lingering => {
                let _ = r;
                lingering = true;
                if matches!(mode, Mode::Run) {
                    break;
                }
            }
            _ = tokio::time::sleep(linger), if lingering => {
                tracing::info!("nobody collected the exit within the linger time; leaving it in the state file");
                shim.remove_socket();
                break;
            }
        }
    }
    server.abort();
    let code = shim.exit().map(|e| e.exit_code).unwrap_or(1);
    if matches!(mode, Mode::Run) {
        if let Some(e) = shim.exit() {
            eprintln!(
                "elide-executor: runtime exited with code {}{}{}",
                e.exit_code,
                if e.signal != 0 {
                    format!(" (signal {})", e.signal)
                } else {
                    String::new()
                },
                if e.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", e.message)
                }
            );
        }
        shim.remove_socket();
    }
    Ok(code)
}

async fn setup(spec_path: &Path) -> Result<(Arc<Shim>, tokio::net::UnixListener), ShimError> {
    let spec = read_spec(spec_path)?;
    // Orphans of the runtime (double-forked daemons) are reparented to us and reaped here.
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
    }
    if let Some(dir) = spec.state_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = bind(&spec.socket_path)?;
    let shim = Shim::new(spec);
    if let Err(e) = shim.persist() {
        let _ = std::fs::remove_file(&shim.spec.socket_path);
        return Err(e.into());
    }
    if let Some(link) = shim.index_link() {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&shim.spec.state_path, &link)?;
    }
    Ok((shim, listener))
}
