//! The task spec: everything a shim needs to run one task, written by the plugin (or by an
//! operator for `elide-executor run --spec FILE`) as JSON. Documented in docs/executor.md.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Bumped when a field changes meaning; readers reject versions they do not know.
pub const TASK_SPEC_VERSION: u32 = 1;

/// `fifo_open_timeout_ms` when the spec leaves it out (the plugin's `fifo_open_timeout`
/// defaults to the same).
pub const DEFAULT_FIFO_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// `linger_after_exit_secs` when the spec leaves it out, and what the plugin asks for.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(300);
/// The stop signal when Nomad or an operator names none (Elide turns it into exit 143).
pub const DEFAULT_STOP_SIGNAL: &str = "SIGTERM";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub version: u32,
    /// Nomad's task id (`<alloc_id>/<task>/<8 hex>`), unique per (re)start.
    pub task_id: String,
    #[serde(default)]
    pub alloc_id: String,
    #[serde(default)]
    pub job_id: String,
    #[serde(default)]
    pub task_group: String,
    #[serde(default)]
    pub task_name: String,
    #[serde(default)]
    pub namespace: String,
    /// The full runtime command line; `argv[0]` is the absolute path of the Elide binary.
    pub argv: Vec<String>,
    /// The runtime's complete environment (nothing is inherited from the shim).
    pub env: BTreeMap<String, String>,
    /// Working directory of the runtime: the task dir.
    pub cwd: PathBuf,
    /// Where the runtime's stdout/stderr go: Nomad's log FIFOs, a plain file, or /dev/null.
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    /// How long to wait for a reader on each log FIFO before failing the start.
    #[serde(default = "default_fifo_timeout_ms")]
    pub fifo_open_timeout_ms: u64,
    /// Run the runtime as this user (name or numeric uid); empty = the shim's own user.
    #[serde(default)]
    pub user: String,
    /// The shim's control socket (must stay under 108 bytes).
    pub socket_path: PathBuf,
    /// The shim's state file (JSON, atomically replaced).
    pub state_path: PathBuf,
    /// Network namespace to enter before exec (Nomad group networking), if any.
    #[serde(default)]
    pub netns_path: Option<PathBuf>,
    #[serde(default)]
    pub resources: ResourceSpec,
    /// How long a shim stays up after the runtime exited when nobody asks it to shut down.
    /// The exit result stays on disk afterwards, so nothing is lost when it goes.
    #[serde(default = "default_linger_secs")]
    pub linger_after_exit_secs: u64,
}

/// Limits and cgroup placement for the runtime process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    /// Soft memory limit / reservation, MiB (Nomad `memory`).
    #[serde(default)]
    pub memory_mb: u64,
    /// Hard memory limit, MiB (Nomad `memory_max`, or `memory` when unset). 0 = none.
    #[serde(default)]
    pub memory_max_mb: u64,
    /// CPU shares (Nomad `cpu`, MHz).
    #[serde(default)]
    pub cpu_shares: u64,
    /// Reserved cores (`cores = N`) as a cpuset list, e.g. "0,1".
    #[serde(default)]
    pub cpuset_cpus: String,
    /// The cgroup Nomad made for the task, if any (`LinuxResources.cpuset_cgroup`).
    #[serde(default)]
    pub nomad_cgroup: String,
    /// Maximum number of processes/threads in the task's cgroup; 0 = unlimited.
    #[serde(default)]
    pub pids_limit: u64,
}

fn default_fifo_timeout_ms() -> u64 {
    DEFAULT_FIFO_OPEN_TIMEOUT.as_millis() as u64
}

fn default_linger_secs() -> u64 {
    DEFAULT_LINGER.as_secs()
}
