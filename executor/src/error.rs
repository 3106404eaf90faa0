//! Typed errors of the shim library.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("cannot read the task spec {path}: {source}")]
    SpecRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("task spec {path} is invalid: {message}")]
    SpecInvalid { path: PathBuf, message: String },
    #[error("another elide-executor already serves {0}; stop it first (elide-executor stop)")]
    SocketBusy(PathBuf),
    #[error("cannot bind the control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] common::state::StateError),
    #[error(transparent)]
    Path(#[from] common::paths::PathError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
