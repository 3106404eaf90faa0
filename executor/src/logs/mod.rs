//! Where the runtime's stdout and stderr go.
//!
//! - `log_files` in the spec (the plugin's `log_collection = "executor"`, the default): the
//!   runtime writes into two pipes and the shim writes Nomad's rotated log files itself
//!   ([`rotator`], [`pump`]); Nomad runs no `logmon` for the task.
//! - otherwise (`log_collection = "nomad"`, or a spec of an operator): the runtime writes
//!   straight into the paths of the spec, normally logmon's FIFOs (`crate::fifo`).
//!
//! [`open`] prepares the two fds the runtime gets; once it is spawned, [`Pending::start`]
//! turns what the shim keeps of them into the task's [`Output`].

mod pump;
pub mod push;
pub mod rotator;

pub use crate::events::Events;
pub use pump::Collector;

use crate::fifo::{self, FifoError};
use common::proto::executor as api;
use common::spec::TaskSpec;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The runtime's stdout and stderr, and what the shim keeps until the runtime is spawned.
pub struct Opened {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub pending: Pending,
}

pub enum Pending {
    /// The runtime writes to the spec's paths; for FIFOs the shim keeps a reader open
    /// (see `crate::fifo`).
    Paths {
        keepalive: Vec<OwnedFd>,
        collection: &'static str,
    },
    /// The shim reads these pipes into the log files of `dir`.
    Collect {
        dir: PathBuf,
        sources: [pump::Source; 2],
    },
}

/// What the task's output is while it runs.
pub struct Output {
    collection: &'static str,
    keepalive: Vec<OwnedFd>,
    collector: Option<Arc<Collector>>,
}

/// `collection` of the shim API's `LogStatus`.
pub const COLLECTION_EXECUTOR: &str = "executor";
pub const COLLECTION_FIFO: &str = "fifo";
pub const COLLECTION_NONE: &str = "none";

/// Opens the runtime's stdout and stderr: pipes to the shim for `log_files`, else the
/// spec's paths (a FIFO waits at most `fifo_open_timeout_ms` for its reader).
pub async fn open(spec: &TaskSpec) -> Result<Opened, FifoError> {
    let Some(files) = &spec.log_files else {
        let timeout = Duration::from_millis(spec.fifo_open_timeout_ms.max(1));
        let (out, err) = fifo::open_both(&spec.stdout_path, &spec.stderr_path, timeout).await?;
        let null = Path::new("/dev/null");
        let collection = if spec.stdout_path == null && spec.stderr_path == null {
            COLLECTION_NONE
        } else {
            COLLECTION_FIFO
        };
        return Ok(Opened {
            stdout: out.write,
            stderr: err.write,
            pending: Pending::Paths {
                keepalive: out.keepalive.into_iter().chain(err.keepalive).collect(),
                collection,
            },
        });
    };
    let size = common::spec::mib_to_bytes(files.max_file_size_mb).unwrap_or(u64::MAX);
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| FifoError::Pipe(e.into()));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    Ok(Opened {
        stdout: out_w,
        stderr: err_w,
        pending: Pending::Collect {
            dir: files.dir.clone(),
            sources: [
                pump::Source {
                    name: "stdout",
                    read: out_r,
                    rotator: rotator::Rotator::new(&files.stdout_name, files.max_files, size),
                },
                pump::Source {
                    name: "stderr",
                    read: err_r,
                    rotator: rotator::Rotator::new(&files.stderr_name, files.max_files, size),
                },
            ],
        },
    })
}

impl Pending {
    /// Starts collecting (file mode) once the runtime holds the write ends.
    pub fn start(self, events: &Events) -> Output {
        match self {
            Pending::Paths {
                keepalive,
                collection,
            } => Output {
                collection,
                keepalive,
                collector: None,
            },
            Pending::Collect { dir, sources } => Output {
                collection: COLLECTION_EXECUTOR,
                keepalive: Vec::new(),
                collector: Some(pump::start(dir, sources, events.clone())),
            },
        }
    }
}

impl Output {
    /// The copy loop, when the shim writes the log files (its `drained` says when
    /// everything the task wrote is in them).
    pub fn collector(&self) -> Option<Arc<Collector>> {
        self.collector.clone()
    }

    /// The runtime has exited: the FIFO keep-alive readers go (logmon then sees EOF).
    pub fn release(&mut self) {
        self.keepalive.clear();
    }

    /// The shim API's view.
    pub fn status(&self) -> api::LogStatus {
        match &self.collector {
            Some(c) => c.log_status(),
            None => api::LogStatus {
                collection: self.collection.to_owned(),
                ..Default::default()
            },
        }
    }
}
