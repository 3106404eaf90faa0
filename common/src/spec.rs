//! The task spec: everything a shim needs to run one task, written by the plugin (or by an
//! operator for `elide-executor run --spec FILE`) as JSON. Documented in docs/executor.md.

use crate::error::FieldError;
use crate::sandbox::SandboxSpec;
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
    /// Unused when `log_files` is set (the shim then writes the log files itself).
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    /// The shim collects the runtime's output itself and writes Nomad's rotated log files
    /// (the plugin's `log_collection = "executor"`); `None`: output goes to `stdout_path` and
    /// `stderr_path`.
    #[serde(default)]
    pub log_files: Option<LogFilesSpec>,
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
    /// How the runtime is confined (capabilities, namespaces, file system view, volumes).
    /// The plugin always sets it; absent (a hand-written `run` spec) means no sandbox: the
    /// runtime gets the shim's privileges and namespaces.
    #[serde(default)]
    pub sandbox: Option<SandboxSpec>,
}

/// The task's log files as Nomad's logmon writes them: `<dir>/<stdout_name>.<N>` and
/// `<dir>/<stderr_name>.<N>`, N growing, a new file at `max_file_size_mb`, at most
/// `max_files` of each kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFilesSpec {
    /// Nomad's `<alloc dir>/alloc/logs`. Opened without following a symlink in its last
    /// component, which the task can replace.
    pub dir: PathBuf,
    /// `<task>.stdout` and `<task>.stderr`: plain file names.
    pub stdout_name: String,
    pub stderr_name: String,
    #[serde(default = "default_log_max_files")]
    pub max_files: u32,
    #[serde(default = "default_log_max_file_size_mb")]
    pub max_file_size_mb: u64,
}

/// Nomad's `logs { max_files }` default.
pub const DEFAULT_LOG_MAX_FILES: u32 = 10;
/// Nomad's `logs { max_file_size }` default, MiB.
pub const DEFAULT_LOG_MAX_FILE_SIZE_MB: u64 = 10;
/// The most log files of one stream a task may keep.
pub const MAX_LOG_MAX_FILES: u32 = 100_000;
/// The largest log file, MiB (1 TiB).
pub const MAX_LOG_MAX_FILE_SIZE_MB: u64 = 1 << 20;

fn default_log_max_files() -> u32 {
    DEFAULT_LOG_MAX_FILES
}

fn default_log_max_file_size_mb() -> u64 {
    DEFAULT_LOG_MAX_FILE_SIZE_MB
}

impl LogFilesSpec {
    /// Sizes in range, and names that stay inside `dir`.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !(1..=MAX_LOG_MAX_FILES).contains(&self.max_files) {
            return Err(spec_err(
                "log_files.max_files",
                format!(
                    "{} is not between 1 and {MAX_LOG_MAX_FILES}; fix log_max_files",
                    self.max_files
                ),
            ));
        }
        if !(1..=MAX_LOG_MAX_FILE_SIZE_MB).contains(&self.max_file_size_mb) {
            return Err(spec_err(
                "log_files.max_file_size_mb",
                format!(
                    "{} is not between 1 and {MAX_LOG_MAX_FILE_SIZE_MB} MiB; fix log_max_file_size",
                    self.max_file_size_mb
                ),
            ));
        }
        for (field, name) in [
            ("log_files.stdout_name", &self.stdout_name),
            ("log_files.stderr_name", &self.stderr_name),
        ] {
            if name.is_empty()
                || name == "."
                || name == ".."
                || name.contains('/')
                || name.contains('\0')
            {
                return Err(spec_err(
                    field,
                    format!("{name:?} must be a plain file name (the task name + \".stdout\")"),
                ));
            }
        }
        if self.stdout_name == self.stderr_name {
            return Err(spec_err(
                "log_files.stderr_name",
                "must differ from stdout_name",
            ));
        }
        if !self.dir.is_absolute() || self.dir.file_name().is_none() {
            return Err(spec_err(
                "log_files.dir",
                format!(
                    "{} must be an absolute path to a directory",
                    self.dir.display()
                ),
            ));
        }
        Ok(())
    }
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
    /// The plugin's `allow_no_cgroup`: run the task even when its cgroup or a limit cannot
    /// be set up. False (the default): such a task fails to start.
    #[serde(default)]
    pub allow_no_cgroup: bool,
}

/// The largest memory size (MiB) a spec may carry: 1 PiB, far above any host, and small enough
/// that bytes (`MiB × 2^20`) and heap percentages never overflow.
pub const MAX_MEMORY_MB: u64 = 1 << 30;
/// The largest `cpu_shares` (Nomad's `cpu`, MHz): far above any node.
pub const MAX_CPU_SHARES: u64 = 1 << 32;
/// The kernel's `PID_MAX_LIMIT`: no pids limit above it means anything.
pub const MAX_PIDS_LIMIT: u64 = 1 << 22;
/// The longest wait for a log FIFO reader (1 hour).
pub const MAX_FIFO_OPEN_TIMEOUT_MS: u64 = 3_600 * 1_000;
/// The longest a shim lingers after the exit (7 days).
pub const MAX_LINGER_SECS: u64 = 7 * 24 * 3_600;

fn spec_err(field: &str, message: impl Into<String>) -> FieldError {
    FieldError::new(field, message)
}

fn at_most(field: &str, value: u64, max: u64, what: &str) -> Result<(), FieldError> {
    if value > max {
        return Err(spec_err(
            field,
            format!("{value} is more than the {max} {what} this driver accepts"),
        ));
    }
    Ok(())
}

/// Bytes of `mb` MiB, or None when that does not fit a u64.
pub fn mib_to_bytes(mb: u64) -> Option<u64> {
    mb.checked_mul(1 << 20)
}

impl ResourceSpec {
    /// Refuses values no host can mean, so that every later conversion (MiB → bytes, shares →
    /// weight, heap percentages) stays in range.
    pub fn validate(&self) -> Result<(), FieldError> {
        let memory_fix = "check the task's memory and memory_max";
        at_most(
            "resources.memory_mb",
            self.memory_mb,
            MAX_MEMORY_MB,
            &format!("MiB (1 PiB); {memory_fix}"),
        )?;
        at_most(
            "resources.memory_max_mb",
            self.memory_max_mb,
            MAX_MEMORY_MB,
            &format!("MiB (1 PiB); {memory_fix}"),
        )?;
        at_most(
            "resources.cpu_shares",
            self.cpu_shares,
            MAX_CPU_SHARES,
            "MHz; check the task's cpu",
        )?;
        at_most(
            "resources.pids_limit",
            self.pids_limit,
            MAX_PIDS_LIMIT,
            "processes (the kernel's PID_MAX_LIMIT); lower pids_limit",
        )?;
        Ok(())
    }
}

impl TaskSpec {
    /// Everything the shim needs to hold before it acts on the spec: resources in range,
    /// timeouts it can add to a clock, and an argv and environment `execve` will take (valid
    /// names, no NUL, within this node's exec limit). The plugin checks a spec before it
    /// writes it; the shim checks every spec it reads.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.resources.validate()?;
        at_most(
            "fifo_open_timeout_ms",
            self.fifo_open_timeout_ms,
            MAX_FIFO_OPEN_TIMEOUT_MS,
            "ms (1 hour); lower fifo_open_timeout",
        )?;
        at_most(
            "linger_after_exit_secs",
            self.linger_after_exit_secs,
            MAX_LINGER_SECS,
            "seconds (7 days)",
        )?;
        if let Some(s) = &self.sandbox {
            s.validate()?;
        }
        if let Some(l) = &self.log_files {
            l.validate()?;
        }
        crate::env::check_exec(&self.argv, &self.env, crate::env::arg_max()).map_err(|e| {
            let field = match e {
                crate::env::EnvError::NulArg { .. } => "argv",
                crate::env::EnvError::TooLong { .. } | crate::env::EnvError::TooBig { .. } => {
                    "argv/env"
                }
                _ => "env",
            };
            spec_err(field, e.to_string())
        })
    }
}

fn default_fifo_timeout_ms() -> u64 {
    crate::duration::millis(DEFAULT_FIFO_OPEN_TIMEOUT)
}

fn default_linger_secs() -> u64 {
    DEFAULT_LINGER.as_secs()
}
