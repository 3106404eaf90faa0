//! Dialling a shim's control socket: a tonic channel over a Unix socket, with errors that say
//! whether the shim is gone, hung, or out of reach for this user.

use crate::proto::executor::executor_client::ExecutorClient;
use hyper_util::rt::TokioIo;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long `connect` waits for the socket to accept and the HTTP/2 connection to come up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no shim socket at {0}: the shim is gone (or was never started)")]
    Missing(PathBuf),
    #[error("nothing listens on the shim socket {0} (connection refused): the shim is gone and left a stale socket file")]
    Refused(PathBuf),
    #[error("permission denied on the shim socket {0}: run this as the user the plugin runs as (usually root)")]
    PermissionDenied(PathBuf),
    #[error("the shim at {path} did not answer within {timeout:?}: it is hung or overloaded; its pid is in the task's state file")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("cannot connect to the shim at {path}: {message}")]
    Connect { path: PathBuf, message: String },
}

/// A gRPC client over the Unix socket at `socket`, connected eagerly (so a dead shim is an
/// error here, not on the first call), waiting at most [`CONNECT_TIMEOUT`]. A shim that
/// accepts but never answers is only noticed by the calls: put a deadline on those.
pub async fn connect(socket: &Path) -> Result<ExecutorClient<Channel>, ClientError> {
    connect_timeout(socket, CONNECT_TIMEOUT).await
}

/// Like [`connect`] with an explicit timeout.
pub async fn connect_timeout(
    socket: &Path,
    timeout: Duration,
) -> Result<ExecutorClient<Channel>, ClientError> {
    connect_channel(socket, timeout)
        .await
        .map(ExecutorClient::new)
}

/// The channel [`connect_timeout`] makes, for a client over another service stack (the
/// plugin times its calls for its metrics).
pub async fn connect_channel(socket: &Path, timeout: Duration) -> Result<Channel, ClientError> {
    let path = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector always dials the socket.
    let endpoint = Endpoint::from_static("http://elide-executor.invalid").connect_timeout(timeout);
    let dial = path.clone();
    let connecting = endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
        let p = dial.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(p).await?;
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    }));
    let channel = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(classify(&path, timeout, &e)),
        Err(_) => return Err(ClientError::Timeout { path, timeout }),
    };
    Ok(channel)
}

fn classify(
    path: &Path,
    timeout: Duration,
    err: &(dyn std::error::Error + 'static),
) -> ClientError {
    let mut messages = vec![err.to_string()];
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::NotFound => return ClientError::Missing(path.to_path_buf()),
                io::ErrorKind::ConnectionRefused => {
                    return ClientError::Refused(path.to_path_buf())
                }
                io::ErrorKind::PermissionDenied => {
                    return ClientError::PermissionDenied(path.to_path_buf())
                }
                io::ErrorKind::TimedOut => {
                    return ClientError::Timeout {
                        path: path.to_path_buf(),
                        timeout,
                    }
                }
                _ => {}
            }
        }
        if let Some(src) = e.source() {
            let m = src.to_string();
            if !messages.contains(&m) {
                messages.push(m);
            }
        }
        cur = e.source();
    }
    ClientError::Connect {
        path: path.to_path_buf(),
        message: messages.join(": "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::executor as api;
    use crate::testing::fake_shim::{FakeShim, Script};
    use std::sync::Arc;
    use tonic::Status;

    #[tokio::test]
    async fn missing_and_refused_sockets_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.sock");
        let e = connect(&missing).await.unwrap_err();
        assert!(matches!(e, ClientError::Missing(_)), "{e:?}");
        assert!(e.to_string().contains("no shim socket"), "{e}");
        // A socket file nobody listens on any more.
        let dead = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
        let e = connect(&dead).await.unwrap_err();
        assert!(matches!(e, ClientError::Refused(_)), "{e:?}");
        assert!(e.to_string().contains("stale socket"), "{e}");
    }

    #[tokio::test]
    async fn a_plain_file_is_not_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.sock");
        std::fs::write(&file, b"").unwrap();
        let e = connect(&file).await.unwrap_err();
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
    }

    /// Enough to prove the transport works end to end: an answer and an error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn talks_to_a_server_on_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ok.sock");
        let script = Arc::new(Script::default());
        *script.start_error.lock().unwrap() = Some(Status::unimplemented("fake"));
        let _shim = FakeShim::serve(&sock, "a/b/c", script);
        let mut c = connect(&sock).await.unwrap();
        let s = c.status(api::StatusRequest {}).await.unwrap().into_inner();
        assert_eq!(s.task_id, "a/b/c");
        let e = c.start(api::StartRequest {}).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);
    }
}
