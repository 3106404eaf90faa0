//! The shim's state file: the spec it runs, its own and the runtime's pids with their `/proc`
//! start times (the PID-reuse guard), and — as soon as the runtime is reaped — the exit result.
//!
//! Written as temp file → fsync → rename → fsync(dir), so a reader never sees a torn file,
//! under an exclusive `fs2` lock on a sibling `.lock` file, so two writers never interleave.
//! Readers take no lock and create nothing: the rename makes every read whole, and a reader
//! (the operator's `status`, the plugin) must not leave files behind where it looks.

use crate::proto::executor as api;
use crate::spec::TaskSpec;
use fs2::FileExt;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskState {
    pub version: u32,
    /// The spec the shim runs, without its `env` (the task's environment holds secrets such
    /// as NOMAD_TOKEN and VAULT_TOKEN; it stays in the shim's memory, never on disk:
    /// [`TaskState::write`] always writes an empty `env`).
    pub spec: TaskSpec,
    pub shim_pid: i32,
    /// `/proc/<pid>/stat` field 22 (clock ticks since boot) of the shim.
    pub shim_start_time: u64,
    /// Boot id (`/proc/sys/kernel/random/boot_id`) when the state was written: pids from
    /// another boot are never adopted.
    #[serde(default)]
    pub boot_id: String,
    #[serde(default)]
    pub runtime_pid: Option<i32>,
    #[serde(default)]
    pub runtime_start_time: Option<u64>,
    #[serde(default)]
    pub started_at_unix_ms: Option<i64>,
    /// The cgroup(s) the runtime was placed in, if any.
    #[serde(default)]
    pub cgroup: Option<String>,
    #[serde(default)]
    pub exit: Option<ExitRecord>,
    /// The runtime's sandbox while it runs (absent without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxState>,
}

/// Where a running task's sandbox is, for whatever must later run inside it (`nomad alloc
/// exec`): join the namespaces of `runtime_pid` after checking they are still these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxState {
    /// `runtime_pid` is the init of the task's PID namespace (it forwards signals to the
    /// runtime), not the runtime itself.
    pub pid_init: bool,
    /// `ns` name → the link text of `/proc/<runtime_pid>/ns/<name>` (e.g. `mnt:[4026532871]`).
    pub namespaces: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit_code: i32,
    pub signal: i32,
    #[serde(default)]
    pub oom_killed: bool,
    /// Set when the code alone does not explain the exit (e.g. "killed after stop timeout").
    #[serde(default)]
    pub message: String,
    pub exited_at_unix_ms: i64,
}

impl ExitRecord {
    /// How the exit reads to a human (see [`ExitSummary`]).
    pub fn summary(&self) -> ExitSummary<'_> {
        ExitSummary {
            exit_code: self.exit_code,
            signal: self.signal,
            oom_killed: self.oom_killed,
            message: &self.message,
        }
    }
}

/// The shim API's form of the record (the same fields).
impl From<&ExitRecord> for api::ExitStatus {
    fn from(r: &ExitRecord) -> Self {
        api::ExitStatus {
            exit_code: r.exit_code,
            signal: r.signal,
            oom_killed: r.oom_killed,
            message: r.message.clone(),
            exited_at_unix_ms: r.exited_at_unix_ms,
        }
    }
}

/// The one way an exit is written for people, from an [`ExitRecord`] or the shim API's
/// `ExitStatus`. `Display`: `code 137 (signal SIGKILL, OOM killed): <message>`;
/// [`ExitSummary::compact`]: `137 (SIGKILL) OOM`, for table columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitSummary<'a> {
    pub exit_code: i32,
    pub signal: i32,
    pub oom_killed: bool,
    pub message: &'a str,
}

impl<'a> From<&'a api::ExitStatus> for ExitSummary<'a> {
    fn from(e: &'a api::ExitStatus) -> Self {
        ExitSummary {
            exit_code: e.exit_code,
            signal: e.signal,
            oom_killed: e.oom_killed,
            message: &e.message,
        }
    }
}

impl ExitSummary<'_> {
    /// `137 (SIGKILL) OOM`: code, signal name and OOM mark only.
    pub fn compact(&self) -> String {
        let mut s = self.exit_code.to_string();
        if self.signal != 0 {
            s.push_str(&format!(" ({})", crate::signals::name(self.signal)));
        }
        if self.oom_killed {
            s.push_str(" OOM");
        }
        s
    }
}

impl std::fmt::Display for ExitSummary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "code {}", self.exit_code)?;
        let mut notes = Vec::new();
        if self.signal != 0 {
            notes.push(format!("signal {}", crate::signals::name(self.signal)));
        }
        if self.oom_killed {
            notes.push("OOM killed".to_owned());
        }
        if !notes.is_empty() {
            write!(f, " ({})", notes.join(", "))?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// Wall-clock milliseconds since the Unix epoch (start and exit times in the state file and
/// the shim API).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {action} state file {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state file {path} is not valid JSON ({source}); remove it if the task is gone")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state file {path} has version {found}, this build reads version {STATE_VERSION}; use a matching elide-executor")]
    Version { path: PathBuf, found: u32 },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

fn open_lock(path: &Path) -> Result<File, StateError> {
    let lp = lock_path(path);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .open(&lp)
        .map_err(io_err("open the lock of", path))
}

impl TaskState {
    /// Atomically replaces the state file with `self`.
    pub fn write(&self, path: &Path) -> Result<(), StateError> {
        let lock = open_lock(path)?;
        lock.lock_exclusive().map_err(io_err("lock", path))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = {
            let mut t = path.as_os_str().to_owned();
            t.push(format!(".tmp{}", std::process::id()));
            PathBuf::from(t)
        };
        let result = (|| {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&tmp)
                .map_err(io_err("create", &tmp))?;
            let mut on_disk = self.clone();
            on_disk.spec.env.clear();
            let body = serde_json::to_vec_pretty(&on_disk).map_err(|e| StateError::Corrupt {
                path: path.to_path_buf(),
                source: e,
            })?;
            f.write_all(&body).map_err(io_err("write", &tmp))?;
            f.sync_all().map_err(io_err("fsync", &tmp))?;
            fs::rename(&tmp, path).map_err(io_err("rename into", path))?;
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        let _ = FileExt::unlock(&lock);
        result
    }

    /// Reads the state file (whole, thanks to the writer's rename; no lock, no file created).
    pub fn read(path: &Path) -> Result<TaskState, StateError> {
        let body = fs::read(path).map_err(io_err("read", path))?;
        let state: TaskState = serde_json::from_slice(&body).map_err(|e| StateError::Corrupt {
            path: path.to_path_buf(),
            source: e,
        })?;
        if state.version != STATE_VERSION {
            return Err(StateError::Version {
                path: path.to_path_buf(),
                found: state.version,
            });
        }
        Ok(state)
    }

    /// Removes the state file and its lock; missing files are fine.
    pub fn remove(path: &Path) -> Result<(), StateError> {
        for p in [path.to_path_buf(), lock_path(path)] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &p)(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ResourceSpec, TASK_SPEC_VERSION};
    use std::collections::BTreeMap;

    fn sample(dir: &Path) -> TaskState {
        TaskState {
            version: STATE_VERSION,
            spec: TaskSpec {
                version: TASK_SPEC_VERSION,
                task_id: "a/b/c".into(),
                alloc_id: "a".into(),
                job_id: "j".into(),
                task_group: "g".into(),
                task_name: "b".into(),
                namespace: "default".into(),
                argv: vec!["/bin/elide".into(), "run".into()],
                env: BTreeMap::new(),
                cwd: dir.to_path_buf(),
                stdout_path: "/dev/null".into(),
                stderr_path: "/dev/null".into(),
                log_files: None,
                fifo_open_timeout_ms: 1000,
                user: String::new(),
                socket_path: dir.join("s.sock"),
                state_path: dir.join("state.json"),
                netns_path: None,
                resources: ResourceSpec::default(),
                linger_after_exit_secs: 1,
                sandbox: None,
            },
            shim_pid: 1,
            shim_start_time: 2,
            boot_id: "boot".into(),
            runtime_pid: Some(3),
            runtime_start_time: Some(4),
            started_at_unix_ms: Some(5),
            cgroup: None,
            exit: None,
            sandbox: None,
        }
    }

    #[test]
    fn the_env_never_reaches_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut s = sample(dir.path());
        s.spec
            .env
            .insert("NOMAD_TOKEN".into(), "s3cr3t-value".into());
        s.write(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("s3cr3t-value"), "{text}");
        assert!(TaskState::read(&path).unwrap().spec.env.is_empty());
    }

    #[test]
    fn write_then_read_round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut s = sample(dir.path());
        s.write(&path).unwrap();
        assert_eq!(TaskState::read(&path).unwrap(), s);
        s.exit = Some(ExitRecord {
            exit_code: 3,
            signal: 0,
            oom_killed: false,
            message: String::new(),
            exited_at_unix_ms: 9,
        });
        s.write(&path).unwrap();
        assert_eq!(TaskState::read(&path).unwrap().exit.unwrap().exit_code, 3);
        // No temp file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
        TaskState::remove(&path).unwrap();
        assert!(!path.exists());
        TaskState::remove(&path).unwrap();
        // Reading a missing state file creates nothing (no lock file either).
        assert!(TaskState::read(&path).is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn exits_read_the_same_everywhere() {
        let mut r = ExitRecord {
            exit_code: 5,
            signal: 0,
            oom_killed: false,
            message: String::new(),
            exited_at_unix_ms: 1,
        };
        assert_eq!(r.summary().to_string(), "code 5");
        assert_eq!(r.summary().compact(), "5");
        r.exit_code = 137;
        r.signal = 9;
        r.oom_killed = true;
        r.message = "OOM killed: over 64 MiB".into();
        assert_eq!(
            r.summary().to_string(),
            "code 137 (signal SIGKILL, OOM killed): OOM killed: over 64 MiB"
        );
        assert_eq!(r.summary().compact(), "137 (SIGKILL) OOM");
        let api = api::ExitStatus::from(&r);
        assert_eq!(ExitSummary::from(&api), r.summary());
        assert_eq!(api.exited_at_unix_ms, 1);
        assert!(now_ms() > 1_700_000_000_000);
    }

    #[test]
    fn corrupt_and_future_versions_are_errors_that_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, b"{not json").unwrap();
        let e = TaskState::read(&path).unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        let mut s = sample(dir.path());
        s.version = 99;
        s.write(&path).unwrap();
        let e = TaskState::read(&path).unwrap_err().to_string();
        assert!(e.contains("version 99"), "{e}");
    }
}
