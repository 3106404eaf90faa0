//! Typed errors of the shim library. Each message says what was wrong and what to do; the
//! ones raised before the shim is ready travel to the plugin as `ERROR <message>`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("cannot read the task spec {path}: {source}; the plugin passes it on stdin (`--spec -`); for `run`, pass an existing file")]
    SpecRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("task spec {path} is invalid: {message} (the format is in docs/executor.md)")]
    SpecInvalid { path: PathBuf, message: String },
    #[error("another elide-executor already serves {0}; stop it first (elide-executor stop TASK) or use another socket_path")]
    SocketBusy(PathBuf),
    #[error("{path} exists and is not a socket (it is a {kind}); the shim only replaces a stale socket there: move the file away or use another runtime_dir")]
    NotASocket { path: PathBuf, kind: &'static str },
    #[error("cannot bind the control socket {path}: {source}; check that its directory is writable by this user")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create directory {path}: {source}; check the plugin's runtime_dir and the alloc dir permissions")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the task index link {path}: {source}; check that the socket directory is writable")]
    Index {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install the shim's signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    State(#[from] common::state::StateError),
}

/// Why Start failed (its gRPC code is chosen in `service.rs`).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the runtime was already started by this shim (pid {0})")]
    AlreadyStarted(i32),
    #[error("a Start call is already in progress")]
    InProgress,
    #[error("the shim is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Fifo(#[from] crate::fifo::FifoError),
    #[error(transparent)]
    Spawn(#[from] crate::runtime::SpawnError),
    #[error("the task's resource limits cannot be enforced: {0}; the task was not started. Fix the node's cgroups (see docs/operator-guide.md), or let tasks run without limits with allow_no_cgroup = true in the plugin config")]
    Cgroup(String),
    #[error("cannot record the started runtime (pid {pid}) in the state file: {source}; the runtime was killed")]
    Record {
        pid: i32,
        #[source]
        source: common::state::StateError,
    },
}

/// Why Wait, Stop or Signal could not do what was asked (its gRPC code is chosen in
/// `service.rs`).
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("the runtime was never started; {0}")]
    NeverStarted(&'static str),
    #[error("the task is not running: {0}")]
    NotRunning(String),
    #[error("the shim is shutting down")]
    ShuttingDown,
    #[error("runtime pid {pid} survived SIGKILL for {waited:?}; it may be stuck in the kernel (D state), check /proc/{pid}/stack")]
    SurvivedKill {
        pid: i32,
        waited: std::time::Duration,
    },
    #[error("cannot signal runtime pid {pid}: {source}")]
    Signal { pid: i32, source: nix::Error },
}

/// Why a command could not be run inside the task (its gRPC code is chosen in `service.rs`).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("the first Exec message must carry the setup (the command to run)")]
    NoSetup,
    #[error("no command given: name the program to run inside the task, e.g. /bin/sh")]
    EmptyCommand,
    #[error("the command's {0} has a NUL byte; remove it")]
    Nul(String),
    #[error("the task is not running: {0}")]
    NotRunning(String),
    #[error("{program:?} was not found inside the task (its PATH there is {path:?}); check the program's name, or give its full path as the task sees it")]
    NotFound { program: String, path: String },
    #[error("{program:?} cannot be run inside the task: permission denied (it is not executable by the task's user {user}, or its file system is mounted noexec)")]
    NotExecutable { program: String, user: String },
    #[error("{program:?} cannot be run inside the task: {source}")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the task's user is not allowed here: {0}")]
    User(#[source] crate::runtime::SpawnError),
    #[error("cannot run a command inside the task: {what} failed: {source}")]
    Setup {
        what: String,
        #[source]
        source: std::io::Error,
    },
}
