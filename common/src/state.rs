//! The shim's state file: the spec it runs, its own and the runtime's pids with their `/proc`
//! start times (the PID-reuse guard), and — as soon as the runtime is reaped — the exit result.
//!
//! Written as temp file → fsync → rename → fsync(dir), so a reader never sees a torn file,
//! under an exclusive `fs2` lock on a sibling `.lock` file, so two writers never interleave.
//! Readers take no lock and create nothing: the rename makes every read whole, and a reader
//! (the operator's `status`, the plugin) must not leave files behind where it looks.
//!
//! The state dir sits in the alloc dir, next to task dirs Nomad makes world-writable, and
//! the shim and the plugin run as root: every file operation goes through a vetted dir fd
//! ([`StateDir`]) and never follows a symlink, trusts a file it did not make, or writes
//! through a hard link.

use crate::proto::executor as api;
use crate::spec::TaskSpec;
use fs2::FileExt;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
#[cfg(test)]
use std::fs;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Something in the state dir's place that the driver did not make: never followed,
    /// written or trusted.
    #[error("refusing to use {path} for task state: {why}. The driver keeps a task's state only in directories and files of its own user (uid {uid}) that no one else can write; a task named \".elide\" or \".\" in this allocation (or another process) made or changed it: stop the allocation and rename such a task")]
    Unsafe {
        path: PathBuf,
        why: String,
        uid: u32,
    },
}

impl StateError {
    /// The state file (or its dir) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StateError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn unsafe_err(path: &Path, why: impl Into<String>) -> StateError {
    StateError::Unsafe {
        path: path.to_path_buf(),
        why: why.into(),
        uid: nix::unistd::geteuid().as_raw(),
    }
}

fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: a fresh fd from the kernel, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A task's state dir, opened and vetted once: the state file, its lock and the shim's log
/// are opened, created, renamed and removed relative to this fd only, never through a path
/// that something else could turn into a symlink in between.
///
/// In the plugin's layout (`<alloc_dir>/.elide/<key>`) `<alloc_dir>` is Nomad's and opened as
/// it is; `.elide` and `<key>` are opened (made, with `create`) without following a symlink
/// and must be directories of the current user that neither group nor others can write.
/// Any other dir (an operator's `run` spec) is vetted the same way in its last component.
#[derive(Debug)]
pub struct StateDir {
    fd: OwnedFd,
    path: PathBuf,
    /// The vetted dir holding this one, and this one's name in it (to remove it).
    parent: Option<(OwnedFd, std::ffi::OsString)>,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

/// How every file in a state dir is opened: never through a symlink, never blocking on a
/// FIFO, never becoming a controlling terminal.
const FILE_FLAGS: OFlag = OFlag::O_NOFOLLOW
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY)
    .union(OFlag::O_CLOEXEC);

impl StateDir {
    /// Opens `dir` (making the missing driver-owned components when `create`), or says
    /// which component is not the driver's.
    pub fn open(dir: &Path, create: bool) -> Result<StateDir, StateError> {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let (base, parts): (&Path, Vec<&OsStr>) = if crate::paths::is_plugin_state_dir(dir) {
            let root = dir.parent().unwrap_or(dir);
            let parts = [root.file_name(), dir.file_name()];
            (
                root.parent().unwrap_or(root),
                parts.into_iter().flatten().collect(),
            )
        } else {
            match (dir.parent(), dir.file_name()) {
                (Some(p), Some(n)) if !p.as_os_str().is_empty() => (p, vec![n]),
                (Some(_), Some(n)) => (Path::new("."), vec![n]),
                _ => (dir, vec![]),
            }
        };
        if create && !crate::paths::is_plugin_state_dir(dir) {
            // An operator's own dir (a `run` spec): its parents are the operator's to trust.
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(base)
                .map_err(io_err("create the dir of", dir))?;
        }
        let mut fd = nix::fcntl::open(base, DIR_FLAGS, Mode::empty())
            .map(owned)
            .map_err(|e| io_err("open the dir of", dir)(e.into()))?;
        let mut at = base.to_path_buf();
        if parts.is_empty() {
            vet_dir(&fd, &at)?;
        }
        let mut parent = None;
        for part in parts {
            at.push(part);
            if create {
                match nix::sys::stat::mkdirat(
                    Some(fd.as_raw_fd()),
                    part,
                    Mode::from_bits_truncate(0o700),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io_err("create the dir of", &at)(e.into())),
                }
            }
            let next = nix::fcntl::openat(
                Some(fd.as_raw_fd()),
                part,
                DIR_FLAGS | OFlag::O_NOFOLLOW,
                Mode::empty(),
            )
            .map(owned)
            .map_err(|e| match e {
                Errno::ELOOP | Errno::ENOTDIR => {
                    unsafe_err(&at, "it is a symlink or not a directory")
                }
                e => io_err("open the dir of", &at)(e.into()),
            })?;
            vet_dir(&next, &at)?;
            parent = Some((std::mem::replace(&mut fd, next), part.to_os_string()));
        }
        Ok(StateDir {
            fd,
            path: dir.to_path_buf(),
            parent,
        })
    }

    /// The dir's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_file(&self, name: &str, flags: OFlag, mode: u32) -> Result<File, (PathBuf, Errno)> {
        nix::fcntl::openat(
            Some(self.fd.as_raw_fd()),
            name,
            flags | FILE_FLAGS,
            Mode::from_bits_truncate(mode),
        )
        .map(|fd| File::from(owned(fd)))
        .map_err(|e| (self.path.join(name), e))
    }

    /// `name` opened for appending (made, mode 0600, if missing): only a regular file of
    /// ours with one link is ever written (the shim's `executor.log`).
    pub fn append_file(&self, name: &str) -> Result<File, StateError> {
        let flags = OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT;
        let f = self.open_file(name, flags, 0o600).map_err(open_error)?;
        vet_file(&f, &self.path.join(name))?;
        Ok(f)
    }

    /// The whole of `name`, if it is a regular file of ours with one link.
    pub fn read_file(&self, name: &str) -> Result<Vec<u8>, StateError> {
        let mut f = self
            .open_file(name, OFlag::O_RDONLY, 0)
            .map_err(open_error)?;
        let path = self.path.join(name);
        vet_file(&f, &path)?;
        let mut body = Vec::new();
        f.read_to_end(&mut body).map_err(io_err("read", &path))?;
        Ok(body)
    }

    /// Replaces `name` with `body`: a fresh temp file (`O_EXCL`, a name no one else can
    /// have made for us), fsynced, renamed over `name` within the dir, then the dir fsynced.
    pub fn replace_file(&self, name: &str, body: &[u8]) -> Result<(), StateError> {
        let path = self.path.join(name);
        let (tmp, mut f) = self.create_temp(name)?;
        let result = (|| {
            f.write_all(body).map_err(io_err("write", &path))?;
            f.sync_all().map_err(io_err("fsync", &path))?;
            nix::fcntl::renameat(
                Some(self.fd.as_raw_fd()),
                tmp.as_str(),
                Some(self.fd.as_raw_fd()),
                name,
            )
            .map_err(|e| io_err("rename into", &path)(e.into()))?;
            let _ = nix::unistd::fsync(self.fd.as_raw_fd());
            Ok(())
        })();
        if result.is_err() {
            let _ = self.unlink(&tmp);
        }
        result
    }

    fn create_temp(&self, name: &str) -> Result<(String, File), StateError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
        let mut last = Errno::EEXIST;
        for _ in 0..16 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let tmp = format!("{name}.tmp{}.{seq}.{nanos:x}", std::process::id());
            match self.open_file(&tmp, flags, 0o600) {
                Ok(f) => return Ok((tmp, f)),
                // Taken (planted, or ours from a crash): another name.
                Err((_, Errno::EEXIST)) => last = Errno::EEXIST,
                Err(e) => return Err(open_error(e)),
            }
        }
        Err(io_err("create a temp file for", &self.path.join(name))(
            last.into(),
        ))
    }

    /// The exclusive lock of `name` (`<name>.lock`, made if missing).
    fn lock(&self, name: &str) -> Result<File, StateError> {
        let lock_name = format!("{name}.lock");
        let f = self
            .open_file(&lock_name, OFlag::O_RDWR | OFlag::O_CREAT, 0o600)
            .map_err(open_error)?;
        let path = self.path.join(&lock_name);
        vet_file(&f, &path)?;
        f.lock_exclusive().map_err(io_err("lock", &path))?;
        Ok(f)
    }

    /// Removes the state dir `dir` and the files in it (the state dir holds files only; a
    /// subdirectory, which only someone else can have made, makes it stay), by fd: nothing
    /// is followed. A missing dir is fine.
    pub fn remove_dir(dir: &Path) -> Result<(), StateError> {
        let d = match StateDir::open(dir, false) {
            Ok(d) => d,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        let list = nix::dir::Dir::openat(Some(d.fd.as_raw_fd()), ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| io_err("list", dir)(e.into()))?;
        let names: Vec<String> = list
            .into_iter()
            .flatten()
            .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
            .filter(|n| n != "." && n != "..")
            .collect();
        for n in names {
            d.unlink(&n)?;
        }
        if let Some((parent, name)) = &d.parent {
            match nix::unistd::unlinkat(
                Some(parent.as_raw_fd()),
                name.as_os_str(),
                nix::unistd::UnlinkatFlags::RemoveDir,
            ) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(io_err("remove", dir)(e.into())),
            }
        }
        Ok(())
    }

    /// Removes `name` (never what it may point to); a missing file is fine.
    pub fn unlink(&self, name: &str) -> Result<(), StateError> {
        match nix::unistd::unlinkat(
            Some(self.fd.as_raw_fd()),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io_err("remove", &self.path.join(name))(e.into())),
        }
    }
}

/// A file open error in words: a symlink (or anything not to be written) in the file's
/// place is the unsafe case.
fn open_error((path, errno): (PathBuf, Errno)) -> StateError {
    match errno {
        Errno::ELOOP => unsafe_err(&path, "it is a symlink"),
        Errno::ENXIO | Errno::EISDIR => unsafe_err(&path, "it is not a regular file"),
        e => io_err("open", &path)(e.into()),
    }
}

fn vet_dir(fd: &OwnedFd, path: &Path) -> Result<(), StateError> {
    let st =
        nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| io_err("inspect", path)(e.into()))?;
    let me = nix::unistd::geteuid().as_raw();
    if st.st_uid != me {
        return Err(unsafe_err(
            path,
            format!("the directory is owned by uid {}", st.st_uid),
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(unsafe_err(
            path,
            format!(
                "the directory has mode {:04o}, writable by others",
                st.st_mode & 0o7777
            ),
        ));
    }
    Ok(())
}

fn vet_file(f: &File, path: &Path) -> Result<(), StateError> {
    let st = nix::sys::stat::fstat(f.as_raw_fd()).map_err(|e| io_err("inspect", path)(e.into()))?;
    let me = nix::unistd::geteuid().as_raw();
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(unsafe_err(path, "it is not a regular file"));
    }
    if st.st_nlink != 1 {
        return Err(unsafe_err(
            path,
            format!("it has {} hard links (a link to another file)", st.st_nlink),
        ));
    }
    if st.st_uid != me {
        return Err(unsafe_err(
            path,
            format!("the file is owned by uid {}", st.st_uid),
        ));
    }
    Ok(())
}

/// The state dir of a state file and the file's name in it.
fn split(path: &Path) -> Result<(&Path, &str), StateError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| unsafe_err(path, "it does not name a file"))?;
    Ok((path.parent().unwrap_or(Path::new(".")), name))
}

impl TaskState {
    /// Atomically replaces the state file with `self` (see [`StateDir::replace_file`]),
    /// under the exclusive lock of its `.lock` sibling.
    pub fn write(&self, path: &Path) -> Result<(), StateError> {
        let (dir, name) = split(path)?;
        let dir = StateDir::open(dir, false)?;
        let lock = dir.lock(name)?;
        let mut on_disk = self.clone();
        on_disk.spec.env.clear();
        let result = serde_json::to_vec_pretty(&on_disk)
            .map_err(|e| StateError::Corrupt {
                path: path.to_path_buf(),
                source: e,
            })
            .and_then(|body| dir.replace_file(name, &body));
        let _ = FileExt::unlock(&lock);
        result
    }

    /// Reads the state file (whole, thanks to the writer's rename; no lock, no file created),
    /// from a vetted state dir, and only if it is a regular file of ours.
    pub fn read(path: &Path) -> Result<TaskState, StateError> {
        let (dir, name) = split(path)?;
        let body = StateDir::open(dir, false)
            .and_then(|d| d.read_file(name))
            .map_err(|e| match e {
                StateError::Io { source, .. } => io_err("read", path)(source),
                e => e,
            })?;
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

    /// Removes the state file and its lock; missing files (or a missing dir) are fine.
    pub fn remove(path: &Path) -> Result<(), StateError> {
        let (dir, name) = split(path)?;
        let dir = match StateDir::open(dir, false) {
            Ok(d) => d,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        dir.unlink(name)?;
        dir.unlink(&format!("{name}.lock"))
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

    /// An alloc dir with the plugin's layout: `<alloc>/.elide/<key>/state.json`.
    fn plugin_layout() -> (tempfile::TempDir, PathBuf) {
        let alloc = tempfile::tempdir().unwrap();
        let dir = crate::paths::state_dir(alloc.path(), "a/b/c");
        StateDir::open(&dir, true).unwrap();
        (alloc, dir.join("state.json"))
    }

    /// Issue #18 (2): a task that could write in the state dir planted
    /// `state.json.tmp<shim pid>` as a symlink to a host file; the next write clobbered it.
    #[test]
    fn planted_symlinks_and_hard_links_are_never_written_through() {
        let (alloc, path) = plugin_layout();
        let dir = path.parent().unwrap();
        let victim = alloc.path().join("host-file");
        fs::write(&victim, "precious\n").unwrap();
        let tmp = format!("state.json.tmp{}", std::process::id());
        std::os::unix::fs::symlink(&victim, dir.join(&tmp)).unwrap();
        let s = sample(dir);
        s.write(&path).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        assert_eq!(TaskState::read(&path).unwrap(), s);
        // The planted name stays what it was; no temp file of ours is left.
        assert!(fs::symlink_metadata(dir.join(&tmp)).unwrap().is_symlink());
        let left: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".tmp") && *n != tmp)
            .collect();
        assert!(left.is_empty(), "{left:?}");

        // A symlinked lock file is refused, not followed (and not created at its target).
        fs::remove_file(dir.join("state.json.lock")).unwrap();
        let target = alloc.path().join("lock-target");
        std::os::unix::fs::symlink(&target, dir.join("state.json.lock")).unwrap();
        let e = s.write(&path).unwrap_err().to_string();
        assert!(e.contains("refusing") && e.contains("symlink"), "{e}");
        assert!(!target.exists());
        fs::remove_file(dir.join("state.json.lock")).unwrap();

        // A state file swapped for a symlink or a hard link to a host file is not read.
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let e = TaskState::read(&path).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        fs::remove_file(&path).unwrap();
        fs::hard_link(&victim, &path).unwrap();
        let e = TaskState::read(&path).unwrap_err().to_string();
        assert!(e.contains("hard links"), "{e}");
        // Writing replaces the link itself; the host file keeps its content.
        s.write(&path).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");

        // The shim's log: appended only to a plain file of its own.
        let d = StateDir::open(dir, false).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("executor.log")).unwrap();
        let e = d.append_file("executor.log").unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        fs::remove_file(dir.join("executor.log")).unwrap();
        fs::hard_link(&victim, dir.join("executor.log")).unwrap();
        let e = d.append_file("executor.log").unwrap_err().to_string();
        assert!(e.contains("hard links"), "{e}");
        fs::remove_file(dir.join("executor.log")).unwrap();
        let mut f = d.append_file("executor.log").unwrap();
        f.write_all(b"line\n").unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("executor.log")).unwrap(),
            "line\n"
        );
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    }

    /// Issue #18 (2): `.elide` or `.elide/<key>` made by someone else (a task dir Nomad built
    /// for a task named `.elide`: owned by nobody, mode 0777), or a symlink in their place,
    /// is never used: not to create in, not to read from.
    #[test]
    fn a_state_dir_the_driver_did_not_make_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let alloc = tempfile::tempdir().unwrap();
        let dir = crate::paths::state_dir(alloc.path(), "a/b/c");
        let root = dir.parent().unwrap();
        // A symlink as `.elide`: not followed, nothing made at its target.
        let elsewhere = alloc.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root).unwrap();
        let e = StateDir::open(&dir, true).unwrap_err().to_string();
        assert!(e.contains("symlink") && e.contains(".elide"), "{e}");
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
        fs::remove_file(root).unwrap();
        // World-writable `.elide` (what Nomad makes a task dir).
        fs::create_dir(root).unwrap();
        fs::set_permissions(root, fs::Permissions::from_mode(0o777)).unwrap();
        let e = StateDir::open(&dir, true).unwrap_err().to_string();
        assert!(
            e.contains("mode 0777") && e.contains("rename such a task"),
            "{e}"
        );
        assert!(!dir.exists(), "nothing made inside it");
        // Owned by someone else.
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(root, Some(65534), Some(65534)).unwrap();
            let e = StateDir::open(&dir, true).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
            std::os::unix::fs::chown(root, Some(0), Some(0)).unwrap();
        }
        // The key dir as a symlink (to a dir of ours): refused too, for writers and readers.
        std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
        let e = StateDir::open(&dir, true).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        let s = sample(&dir);
        fs::write(
            elsewhere.join("state.json"),
            serde_json::to_vec(&s).unwrap(),
        )
        .unwrap();
        let e = TaskState::read(&dir.join("state.json")).unwrap_err();
        assert!(matches!(e, StateError::Unsafe { .. }), "{e}");
        assert!(s.write(&dir.join("state.json")).is_err());
        fs::remove_file(&dir).unwrap();
        // Made by the driver: fine, mode 0700.
        let d = StateDir::open(&dir, true).unwrap();
        assert_eq!(d.path(), dir);
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Removed by fd: files go, then the dir; a symlink in it goes, not its target.
        let victim = alloc.path().join("victim");
        fs::write(&victim, "v").unwrap();
        s.write(&dir.join("state.json")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("link")).unwrap();
        StateDir::remove_dir(&dir).unwrap();
        assert!(!dir.exists() && root.exists());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "v");
        StateDir::remove_dir(&dir).unwrap();
        // A symlink as the key dir: refused, its target kept.
        fs::write(elsewhere.join("keep"), "k").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
        assert!(StateDir::remove_dir(&dir).is_err());
        assert!(elsewhere.join("keep").exists());
        fs::remove_file(&dir).unwrap();
        // A missing state dir reads as "not found" and creates nothing.
        let gone = crate::paths::state_dir(alloc.path(), "x/y/z");
        let e = TaskState::read(&gone.join("state.json")).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(!gone.exists());
        TaskState::remove(&gone.join("state.json")).unwrap();
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
