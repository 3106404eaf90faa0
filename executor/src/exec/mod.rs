//! Running a command inside the running task: `nomad alloc exec` (ExecTaskStreaming), template
//! change scripts and script checks (ExecTask), `elide-executor exec` — the `Exec` RPC.
//!
//! ```text
//! caller ──Exec: setup, stdin, tty_size…──► shim ──fork: own session, task cgroup, PDEATHSIG──►
//!        ◄──pid, stdout, stderr…, exit────      elide-executor sandbox-exec   (single-threaded)
//!                                                 check + join the runtime's ipc/net/mnt/pid
//!                                                 namespaces, open the pty, fork ──► the command
//!                                                 (setsid, controlling tty, user, caps,
//!                                                  no_new_privs, env, cwd = task dir, exec)
//! ```
//!
//! The shim is a tokio process whose forked child may only make async-signal-safe calls, and
//! `setns` into a mount namespace refuses a multi-threaded caller; so, like `sandbox-init`, the
//! entering is done by a fresh single-threaded `elide-executor sandbox-exec` ([`helper`]). It
//! joins the task cgroup before anything else runs (the command's memory counts against the
//! task), verifies that each namespace of the recorded runtime pid is still the one recorded at
//! Start (a reused pid fails), joins them, and forks: `CLONE_NEWPID` only applies to children.
//! It stays the command's parent, kills it (and its process group) when the shim asks with
//! SIGTERM, and ends the way the command ended (the same exit code, or the same signal), so the
//! shim's reaper ([`crate::reaper::Children`]) hands the command's exit to the session.
//!
//! Fds of `sandbox-exec`: 0–2 the command's stdio (pipes; `/dev/null` with a tty, whose pty
//! is opened inside the task's mount namespace, from its own devpts), [`PLAN_FD`] the plan
//! (JSON in a memfd: the environment never touches the disk), [`ERROR_FD`] a failed step (the
//! frames of `sandbox::report`; EOF = the command runs), [`CONTROL_FD`] a socket on which it
//! sends `S<pid>` — with the pty's master attached — once the command runs, [`NETNS_FD`] the
//! group network namespace when there is no sandbox to take it from.
//!
//! [`session`] is the shim's side: the checks, the spawn, and the relay between the RPC
//! stream and the command's pipes or terminal.

pub mod helper;
mod session;

pub use session::{relay, start, Started};

use common::error::FieldError;
use common::state::SandboxState;
use serde::{Deserialize, Serialize};

/// The hidden subcommand (not for operators).
pub const EXEC_COMMAND: &str = "sandbox-exec";

pub use crate::sandbox::{ERROR_FD, NETNS_FD, PLAN_FD};
/// The helper's end of the control socket (`SOCK_SEQPACKET`).
pub const CONTROL_FD: i32 = 5;

/// What the helper sends on [`CONTROL_FD`] once the command runs: this byte, then the
/// command's pid (i32, little endian); with a tty, the pty's master as `SCM_RIGHTS`.
pub const STARTED: u8 = b'S';

/// The order namespaces are joined in: `mnt` after `net` (its fd is opened first anyway, but
/// joining the mount namespace changes the root), `pid` last (it applies to children only).
pub const JOIN_ORDER: [&str; 4] = ["ipc", "net", "mnt", "pid"];

/// A terminal size (rows × columns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

impl WindowSize {
    /// The size a terminal starts with when the caller sent none: the VT100's.
    pub const DEFAULT: WindowSize = WindowSize { rows: 24, cols: 80 };

    /// From the API's message; 0 (unknown) falls back to [`WindowSize::DEFAULT`], and sizes
    /// beyond what a terminal can hold are clamped.
    pub fn from_api(rows: u32, cols: u32) -> WindowSize {
        let fit = |v: u32, default: u16| {
            if v == 0 {
                default
            } else {
                v.min(u16::MAX as u32) as u16
            }
        };
        WindowSize {
            rows: fit(rows, Self::DEFAULT.rows),
            cols: fit(cols, Self::DEFAULT.cols),
        }
    }

    pub fn winsize(&self) -> libc::winsize {
        libc::winsize {
            ws_row: self.rows,
            ws_col: self.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }
    }
}

/// A namespace to join, by kind (`mnt`) and the inode that identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub kind: String,
    pub inode: u64,
}

/// Everything `sandbox-exec` needs, computed by the shim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The command: its argv, the task's env, cwd, umask and credentials.
    pub process: crate::sandbox::Process,
    /// The process whose namespaces are joined: the runtime (or the init of its PID
    /// namespace).
    pub target_pid: i32,
    /// The namespaces to join, in [`JOIN_ORDER`], each checked against its recorded inode.
    pub namespaces: Vec<Namespace>,
    /// [`NETNS_FD`] is open: join it (a task without a sandbox in a group network).
    pub netns: bool,
    /// Run the command on a new pty of this size.
    pub tty: Option<WindowSize>,
}

/// The namespaces a command joins, from what Start recorded (`mnt` → `mnt:[4026532871]`), in
/// [`JOIN_ORDER`]; the others (`uts`, `cgroup`, `user`: the sandbox makes none of its own)
/// stay the shim's. Err names an entry that is not a namespace link.
pub fn namespaces_to_join(sandbox: &SandboxState) -> Result<Vec<Namespace>, FieldError> {
    JOIN_ORDER
        .iter()
        .filter_map(|kind| sandbox.namespaces.get(*kind).map(|link| (*kind, link)))
        .map(|(kind, link)| {
            let inode = link
                .strip_prefix(kind)
                .and_then(|rest| rest.strip_prefix(":["))
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    FieldError::new(
                        format!("sandbox.namespaces.{kind}"),
                        format!("the recorded {kind} namespace {link:?} is not a namespace link"),
                    )
                })?;
            Ok(Namespace {
                kind: kind.to_string(),
                inode,
            })
        })
        .collect()
}

/// The `setns` flag of a namespace kind.
pub fn clone_flag(kind: &str) -> Option<libc::c_int> {
    Some(match kind {
        "ipc" => libc::CLONE_NEWIPC,
        "net" => libc::CLONE_NEWNET,
        "mnt" => libc::CLONE_NEWNS,
        "pid" => libc::CLONE_NEWPID,
        "uts" => libc::CLONE_NEWUTS,
        "cgroup" => libc::CLONE_NEWCGROUP,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn namespaces_are_joined_in_order_and_only_the_sandboxs_own() {
        let s = SandboxState {
            pid_init: true,
            namespaces: [
                ("cgroup", "cgroup:[4026531835]"),
                ("pid", "pid:[4026532873]"),
                ("mnt", "mnt:[4026532871]"),
                ("net", "net:[4026531840]"),
                ("ipc", "ipc:[4026532872]"),
                ("uts", "uts:[4026531838]"),
                ("user", "user:[4026531837]"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        };
        let got = namespaces_to_join(&s).unwrap();
        let kinds: Vec<&str> = got.iter().map(|n| n.kind.as_str()).collect();
        assert_eq!(kinds, ["ipc", "net", "mnt", "pid"]);
        assert_eq!(got[2].inode, 4026532871);
        for n in &got {
            assert!(clone_flag(&n.kind).is_some());
        }
        let bad = SandboxState {
            pid_init: false,
            namespaces: [("mnt".to_owned(), "net:[1]".to_owned())].into(),
        };
        let e = namespaces_to_join(&bad).unwrap_err();
        assert_eq!(e.field, "sandbox.namespaces.mnt");
        assert!(e.message.contains("mnt"), "{e}");
        let none = SandboxState {
            pid_init: false,
            namespaces: BTreeMap::new(),
        };
        assert!(namespaces_to_join(&none).unwrap().is_empty());
    }

    #[test]
    fn window_sizes_default_and_clamp() {
        assert_eq!(WindowSize::from_api(0, 0), WindowSize::DEFAULT);
        assert_eq!(
            WindowSize::from_api(50, 0),
            WindowSize { rows: 50, cols: 80 }
        );
        assert_eq!(WindowSize::from_api(1 << 20, 7).rows, u16::MAX);
        assert_eq!(WindowSize::from_api(100, 40).winsize().ws_col, 40);
    }
}
