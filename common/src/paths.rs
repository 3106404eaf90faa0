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

/// The alloc dir's entry that holds every shim's state dir.
pub const STATE_ROOT: &str = ".elide";

/// The task's private state directory: `<alloc_dir>/.elide/<key>/` (outside the task dir, so
/// the task cannot see it; removed with the alloc dir at GC).
pub fn state_dir(alloc_dir: &Path, task_id: &str) -> PathBuf {
    alloc_dir.join(STATE_ROOT).join(task_key(task_id))
}

/// Whether `dir` is a state dir of the plugin's layout, `<alloc_dir>/.elide/<key>`: then
/// `<alloc_dir>` is Nomad's (trusted) and `.elide` and `<key>` are the driver's own.
pub fn is_plugin_state_dir(dir: &Path) -> bool {
    let key = dir.file_name().and_then(|n| n.to_str());
    let root = dir.parent().and_then(Path::file_name);
    key.is_some_and(|k| k.len() == 16 && k.bytes().all(|b| b.is_ascii_hexdigit()))
        && root.is_some_and(|r| r == STATE_ROOT)
        && dir
            .parent()
            .and_then(Path::parent)
            .is_some_and(|a| !a.as_os_str().is_empty())
}

/// Task names the driver refuses: the task dir is `<alloc_dir>/<name>`, built by Nomad with
/// mode 0777, so a name that is not one plain new entry of the alloc dir would hand a task
/// (and every task of the allocation) a directory the driver or Nomad keeps for itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskNameError {
    #[error("task name is empty; give the task a name")]
    Empty,
    #[error("task name {0:?} is refused: its task dir would be the allocation dir itself (where the driver keeps every task's private state and the other tasks' dirs, secrets/ included); rename the task")]
    AllocDir(String),
    #[error("task name {0:?} is refused: its task dir would be the directory holding every allocation; rename the task")]
    Parent(String),
    #[error("task name {0:?} is refused: {STATE_ROOT} is where the driver keeps the private state of every task of the allocation; rename the task")]
    StateRoot(String),
    #[error("task name {0:?} is refused: alloc is the allocation's shared dir (alloc/logs, alloc/data); rename the task")]
    Shared(String),
    #[error("task name {0:?} is refused: a task name must be one plain file name (no '/', '\\' or NUL, at most 255 bytes); rename the task")]
    NotAName(String),
}

/// Checks a task name before anything is written in its task dir (StartTask): refused are
/// the empty name, `.`, `..`, [`STATE_ROOT`], `alloc`, and anything that is not a single
/// plain path component.
pub fn check_task_name(name: &str) -> Result<(), TaskNameError> {
    match name {
        "" => Err(TaskNameError::Empty),
        "." => Err(TaskNameError::AllocDir(name.into())),
        ".." => Err(TaskNameError::Parent(name.into())),
        STATE_ROOT => Err(TaskNameError::StateRoot(name.into())),
        "alloc" => Err(TaskNameError::Shared(name.into())),
        _ if name.len() > 255 || name.contains(['/', '\\', '\0']) => {
            Err(TaskNameError::NotAName(name.into()))
        }
        _ => Ok(()),
    }
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
    fn task_names_that_are_not_a_new_entry_of_the_alloc_dir_are_refused() {
        for ok in [
            "web", ".web", "..web", "elide", ".elide2", "alloc2", "a b", "é",
        ] {
            assert_eq!(check_task_name(ok), Ok(()), "{ok}");
        }
        let refused = [
            ("", "empty"),
            (".", "allocation dir itself"),
            ("..", "every allocation"),
            (".elide", "private state"),
            ("alloc", "shared dir"),
            ("a/b", "one plain file name"),
            ("a\\b", "one plain file name"),
            ("a\0b", "one plain file name"),
        ];
        for (name, why) in refused {
            let e = check_task_name(name).unwrap_err().to_string();
            assert!(e.contains(why), "{name:?}: {e}");
            if !name.is_empty() {
                assert!(e.contains("rename the task"), "{name:?}: {e}");
            }
        }
        assert!(check_task_name(&"x".repeat(256)).is_err());
        assert!(check_task_name(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn the_plugin_state_layout_is_recognised() {
        let d = state_dir(Path::new("/a/b"), "x/y/z");
        assert!(is_plugin_state_dir(&d));
        assert!(!is_plugin_state_dir(Path::new("/a/b/.elide")));
        assert!(!is_plugin_state_dir(Path::new("/a/other/0123456789abcdef")));
        assert!(!is_plugin_state_dir(Path::new("/a/.elide/0123")));
        assert!(!is_plugin_state_dir(Path::new(".elide/0123456789abcdef")));
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
