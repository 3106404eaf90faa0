//! Dialling a shim's control socket.

use crate::proto::executor::executor_client::ExecutorClient;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no shim socket at {0}: the shim is gone")]
    Missing(PathBuf),
    #[error("cannot connect to the shim at {path}: {message}")]
    Connect { path: PathBuf, message: String },
}

/// A gRPC client over the Unix socket at `socket`.
pub async fn connect(socket: &Path) -> Result<ExecutorClient<Channel>, ClientError> {
    if !socket.exists() {
        return Err(ClientError::Missing(socket.to_path_buf()));
    }
    let path = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector always dials the socket.
    let endpoint = Endpoint::try_from("http://[::1]:1")
        .map_err(|e| ClientError::Connect {
            path: path.clone(),
            message: e.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT);
    let dial = path.clone();
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = dial.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(p).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| ClientError::Connect {
            path: path.clone(),
            message: format!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            ),
        })?;
    Ok(ExecutorClient::new(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_and_refused_sockets_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.sock");
        let e = connect(&missing).await.unwrap_err().to_string();
        assert!(e.contains("no shim socket"), "{e}");
        // A socket file nobody listens on.
        let dead = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
        let e = connect(&dead).await.unwrap_err().to_string();
        assert!(e.contains("cannot connect"), "{e}");
    }
}
