//! Where a task's socket and state live. Both are functions of the task id, so a restarted
//! plugin finds them again from `driver_state` alone.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// `sun_path` is 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Default directory for shim sockets and the node-wide task index (tmpfs: gone at reboot,
/// which is exactly when the tasks are gone too).
pub const DEFAULT_RUNTIME_DIR: &str = "/run/nomad-driver-elide";

/// A short, filename-safe key for a task id (ids contain `/`).
pub fn task_key(task_id: &str) -> String {
    let digest = Sha256::digest(task_id.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("socket path {path} is {len} bytes, over the {MAX_SOCKET_PATH}-byte limit of Unix sockets; set the plugin's `runtime_dir` to a shorter directory (default {DEFAULT_RUNTIME_DIR})")]
    SocketTooLong { path: PathBuf, len: usize },
}

/// The control socket of the task's shim: `<runtime_dir>/<key>.sock`.
pub fn socket_path(runtime_dir: &Path, task_id: &str) -> Result<PathBuf, PathError> {
    let path = runtime_dir.join(format!("{}.sock", task_key(task_id)));
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(PathError::SocketTooLong { path, len });
    }
    Ok(path)
}

/// The node-wide index entry for a task: a symlink `<runtime_dir>/<key>.state` to its state
/// file, which `elide-executor status` enumerates.
pub fn index_link(runtime_dir: &Path, task_id: &str) -> PathBuf {
    runtime_dir.join(format!("{}.state", task_key(task_id)))
}

/// The files of a task's state dir: the shim's state file and its own log. (The spec is
/// not among them: the plugin hands it to the shim on a pipe, since its env holds secrets.)
pub const STATE_FILE: &str = "state.json";
pub const LOG_FILE: &str = "executor.log";

/// The task's private state directory: `<alloc_dir>/.elide/<key>/` (outside the task dir, so
/// the task cannot see it; removed with the alloc dir at GC).
pub fn state_dir(alloc_dir: &Path, task_id: &str) -> PathBuf {
    alloc_dir.join(".elide").join(task_key(task_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_stable_short_and_safe() {
        let k = task_key("6f3c/web/0a1b2c3d");
        assert_eq!(k.len(), 16);
        assert!(k.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(k, task_key("6f3c/web/0a1b2c3d"));
        assert_ne!(k, task_key("6f3c/web/0a1b2c3e"));
    }

    #[test]
    fn socket_path_stays_short_for_default_dir_and_rejects_long_dirs() {
        let p = socket_path(Path::new(DEFAULT_RUNTIME_DIR), "x/y/z").unwrap();
        assert!(p.as_os_str().len() < 60);
        let long = "/".to_string() + &"d".repeat(100);
        let err = socket_path(Path::new(&long), "x/y/z")
            .unwrap_err()
            .to_string();
        assert!(err.contains("runtime_dir"), "{err}");
    }
}
