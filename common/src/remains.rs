//! What is left of a task whose shim is gone (`kill -9`, the OOM killer, a crash): the
//! runtime got PDEATHSIG, but PDEATHSIG reaches only the direct child — what the runtime
//! started lives on with parent 1, in the runtime's process group and the task's cgroup.
//! The plugin calls [`clean_up`] when it finds the shim dead (WaitTask, StopTask,
//! RecoverTask, DestroyTask): it kills the process group and everything in the task's
//! cgroups, removes the cgroups we created, and the socket and index link the shim could not
//! remove.
//!
//! Nothing here trusts a pid or a path just because a file names it: the process group is
//! the one of the runtime recorded in Nomad's `driver_state` (pid and start time, checked:
//! [`crate::proc::kill_group_if_ours`]), and the cgroups are the task's own by name, under
//! the cgroup root ([`TaskCgroup::leftovers`]). It works the same whatever the process tree
//! looked like (`pid_mode = "host"` or a private PID namespace).

use crate::cgroup::{TaskCgroup, TaskNames};
use crate::state::TaskState;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the cgroups get to empty after SIGKILL before their removal is attempted.
pub const CGROUP_EMPTY_WAIT: Duration = Duration::from_secs(2);

/// A task whose shim is gone, as the plugin knows it from `driver_state`.
#[derive(Debug, Clone, Copy)]
pub struct Remains<'a> {
    pub names: TaskNames<'a>,
    pub runtime_pid: i32,
    pub runtime_start_time: u64,
    pub state_path: &'a Path,
    pub socket_path: &'a Path,
}

/// What [`clean_up`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleaned {
    /// The runtime's process group was signalled.
    pub group_killed: bool,
    /// Pids that were still in the task's cgroups.
    pub cgroup_pids: Vec<i32>,
    /// Cgroups of ours that could not be removed (something survived SIGKILL).
    pub kept_cgroups: Vec<PathBuf>,
}

impl Cleaned {
    /// Whether any process of the task was found and killed.
    pub fn killed_anything(&self) -> bool {
        self.group_killed || !self.cgroup_pids.is_empty()
    }
}

/// Kills what is left of the task and removes its litter. Call it only once the shim is
/// known to be dead (its pid and start time no longer match): a live shim owns all of this.
pub fn clean_up(r: &Remains<'_>, cgroup_root: &Path) -> Cleaned {
    // The state file says which cgroups the runtime joined; only when it is this task's.
    let recorded = TaskState::read(r.state_path)
        .ok()
        .filter(|st| st.spec.task_id == r.names.task_id)
        .and_then(|st| st.cgroup);
    let mut cleaned = Cleaned {
        group_killed: crate::proc::kill_group_if_ours(r.runtime_pid, r.runtime_start_time),
        ..Default::default()
    };
    if let Some(cg) = TaskCgroup::leftovers(cgroup_root, r.names, recorded.as_deref()) {
        let (pids, kept) = cg.kill_and_remove(CGROUP_EMPTY_WAIT);
        cleaned.cgroup_pids = pids;
        cleaned.kept_cgroups = kept;
    }
    remove_litter(r.socket_path, r.names.task_id);
    cleaned
}

/// The socket (only if it is one) and the index link (only if it is one) of a dead shim.
fn remove_litter(socket: &Path, task_id: &str) {
    let is = |p: &Path, want: fn(&std::fs::FileType) -> bool| {
        std::fs::symlink_metadata(p).is_ok_and(|m| want(&m.file_type()))
    };
    if is(socket, |t| t.is_socket()) {
        let _ = std::fs::remove_file(socket);
    }
    if let Some(dir) = socket.parent() {
        let link = crate::paths::index_link(dir, task_id);
        if is(&link, |t| t.is_symlink()) {
            let _ = std::fs::remove_file(link);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    /// A "runtime" that started a child and exited: the child keeps the group.
    fn group_without_its_leader() -> (i32, u64, i32, u64) {
        let mut sh = Command::new("sh")
            .args(["-c", "sleep 600 & echo $!"])
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let leader = sh.id() as i32;
        let leader_start = crate::proc::start_time(leader).unwrap();
        let mut line = String::new();
        BufReader::new(sh.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let child: i32 = line.trim().parse().unwrap();
        let child_start = crate::proc::start_time(child).unwrap();
        sh.wait().unwrap();
        (leader, leader_start, child, child_start)
    }

    fn gone_soon(pid: i32, start: u64) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while crate::proc::is_same_process(pid, start) {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn remains<'a>(pid: i32, start: u64, dir: &'a Path, socket: &'a Path) -> Remains<'a> {
        Remains {
            names: TaskNames {
                task_id: "a1/web/0a1b2c3d",
                alloc_id: "a1",
                task_name: "web",
            },
            runtime_pid: pid,
            runtime_start_time: start,
            state_path: dir,
            socket_path: socket,
        }
    }

    #[test]
    fn the_group_of_a_dead_runtime_is_killed_and_the_litter_removed() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("k.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let link = crate::paths::index_link(dir.path(), "a1/web/0a1b2c3d");
        std::os::unix::fs::symlink("/nowhere", &link).unwrap();
        let (leader, leader_start, child, child_start) = group_without_its_leader();
        let no_cgroups = dir.path().join("no-cgroup-root");
        let state = dir.path().join("state.json");
        let c = clean_up(&remains(leader, leader_start, &state, &socket), &no_cgroups);
        assert!(c.group_killed && c.killed_anything(), "{c:?}");
        assert!(
            gone_soon(child, child_start),
            "the runtime's child outlived it"
        );
        assert!(!socket.exists() && std::fs::symlink_metadata(&link).is_err());
    }

    #[test]
    fn a_group_whose_leader_pid_was_reused_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut stranger = Command::new("sleep")
            .arg("600")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = stranger.id() as i32;
        let start = crate::proc::start_time(pid).unwrap();
        // A regular file where the socket was is not ours to delete either.
        let socket = dir.path().join("k.sock");
        std::fs::write(&socket, "x").unwrap();
        let c = clean_up(
            &remains(pid, start + 1, &dir.path().join("s.json"), &socket),
            dir.path(),
        );
        assert!(!c.killed_anything(), "{c:?}");
        assert!(
            stranger.try_wait().unwrap().is_none(),
            "a stranger was killed"
        );
        assert!(socket.exists());
        stranger.kill().unwrap();
        stranger.wait().unwrap();
    }
}
