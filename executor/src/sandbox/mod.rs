//! The task sandbox: what happens between the shim's fork and the runtime's exec.
//!
//! The shim is a tokio process (it may have helper threads), so its forked child may only make
//! async-signal-safe calls: it joins the task cgroup, arranges the fds below and execs
//! `elide-executor sandbox-init` (this binary, hidden mode). That fresh, single-threaded
//! process reads the [`Plan`] and does the real work:
//!
//! ```text
//! shim ──clone(CLONE_NEWNS [|CLONE_NEWPID] [|CLONE_NEWIPC])──► child: setsid, cgroup,
//!      PDEATHSIG, fds ──exec──► sandbox-init: plan → setns(net) → mounts → credentials
//!      (no_new_privs, bounding set, user, caps) → PDEATHSIG again → cwd → seccomp →
//!        pid_mode "host":    exec the runtime (same pid)
//!        pid_mode "private": stay as PID 1 of the namespace: fork+exec the runtime, forward
//!                            every signal to it, reap every zombie, and when the runtime
//!                            exits hand its raw wait status to the shim and exit
//! ```
//!
//! Fds of `sandbox-init` (all marked close-on-exec at once): [`PLAN_FD`] (a memfd with the
//! plan as JSON: the environment never touches the disk), [`ERROR_FD`] (a failed step, see
//! [`report`]; EOF = the runtime was exec'd), [`ALIVE_FD`] (read end of a pipe whose write end
//! only the shim holds: POLLHUP means the shim died before PDEATHSIG was armed),
//! [`STATUS_FD`] (PID 1 mode: the runtime's wait status), [`NETNS_FD`] (the group network
//! namespace).
//!
//! Entering the sandbox later (`nomad alloc exec`, issue 9) takes the same pieces: the
//! namespaces of the recorded init/runtime pid (`TaskState.sandbox`), the task cgroup, then
//! [`creds::Credentials::apply`] with the spec's user and capabilities — see
//! docs/executor.md, "Entering a sandbox".

pub mod creds;
pub mod init;
pub mod mounts;
pub mod report;
pub mod seccomp;

use common::spec::TaskSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The hidden subcommand (not for operators).
pub const INIT_COMMAND: &str = "sandbox-init";

pub const PLAN_FD: i32 = 3;
pub const ERROR_FD: i32 = 4;
pub const ALIVE_FD: i32 = 5;
pub const STATUS_FD: i32 = 6;
pub const NETNS_FD: i32 = 7;

/// The process a sandbox runs, as the task's runtime (`sandbox-init`) or as a command inside
/// a running task (`sandbox-exec`, [`crate::exec::Plan`]): what it execs, where, as whom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub umask: u32,
    pub credentials: creds::Credentials,
}

/// Everything `sandbox-init` needs, computed by the shim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub process: Process,
    /// [`NETNS_FD`] is open: join it.
    pub netns: bool,
    pub mounts: Option<mounts::MountPlan>,
    /// Stay as PID 1 of a new PID namespace ([`STATUS_FD`] is open).
    pub pid_init: bool,
}

/// The plan for a spec, with the task user already resolved (by the shim, before the fork:
/// the user database is read on the host, and an unknown user fails Start synchronously).
pub fn plan_for(spec: &TaskSpec, user: Option<creds::User>, umask: u32) -> Plan {
    let sandbox = spec.sandbox.as_ref();
    let shim_dirs: Vec<PathBuf> = [spec.socket_path.parent(), spec.state_path.parent()]
        .into_iter()
        .flatten()
        .map(PathBuf::from)
        .collect();
    Plan {
        process: Process {
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            umask,
            credentials: creds::Credentials::for_task(sandbox, user),
        },
        netns: spec.netns_path.is_some(),
        mounts: sandbox.map(|s| mounts::plan(s, &spec.cwd, &shim_dirs)),
        pid_init: sandbox.is_some_and(|s| s.pid_mode.is_private()),
    }
}

/// The namespaces the forked child gets (none without a sandbox).
pub fn clone_flags(spec: &TaskSpec) -> libc::c_int {
    let Some(s) = &spec.sandbox else { return 0 };
    let mut flags = libc::CLONE_NEWNS;
    if s.pid_mode.is_private() {
        flags |= libc::CLONE_NEWPID;
    }
    if s.ipc_mode.is_private() {
        flags |= libc::CLONE_NEWIPC;
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::sandbox::{NamespaceMode, SandboxSpec};
    use std::path::Path;

    fn spec(sandbox: Option<SandboxSpec>) -> TaskSpec {
        let mut s: TaskSpec = serde_json::from_value(serde_json::json!({
            "version": 1, "task_id": "a/t/0", "argv": ["/bin/true"], "env": {"A": "1"},
            "cwd": "/data/alloc/a/t", "stdout_path": "/dev/null", "stderr_path": "/dev/null",
            "socket_path": "/run/nde/k.sock", "state_path": "/data/alloc/a/.elide/k/state.json",
            "netns_path": "/var/run/netns/x"
        }))
        .unwrap();
        s.sandbox = sandbox;
        s
    }

    #[test]
    fn without_a_sandbox_nothing_changes_but_the_user() {
        let s = spec(None);
        assert_eq!(clone_flags(&s), 0);
        let p = plan_for(&s, None, 0o022);
        assert_eq!(p.process.credentials, creds::Credentials::default());
        assert!(p.mounts.is_none() && !p.pid_init && p.netns);
        assert_eq!(p.process.env["A"], "1");
    }

    #[test]
    fn the_default_sandbox_is_private_and_its_new_root_leaves_the_shims_own_dirs_out() {
        let s = spec(Some(SandboxSpec {
            writable_paths: vec!["/data/alloc/a/t".into()],
            ..Default::default()
        }));
        assert_eq!(
            clone_flags(&s),
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC
        );
        let p = plan_for(&s, None, 0o022);
        assert!(p.pid_init && p.process.credentials.no_new_privs);
        assert_eq!(
            p.process.credentials.capabilities.as_ref().unwrap().len(),
            12
        );
        let m = p.mounts.unwrap();
        assert!(m.new_root);
        // The new root shows only its binds: the shim's dirs are simply not in it.
        let binds: Vec<_> = m
            .overlays
            .iter()
            .filter_map(|o| match o {
                mounts::Overlay::Bind { path, .. } => Some(path.clone()),
                mounts::Overlay::Hide { .. } => None,
            })
            .collect();
        assert_eq!(binds.last(), Some(&PathBuf::from("/data/alloc/a/t")));
        assert!(binds.contains(&PathBuf::from("/usr")) && binds.contains(&PathBuf::from("/etc")));
        for shim_dir in ["/run/nde", "/data/alloc/a/.elide/k"] {
            assert!(
                !binds.iter().any(|b| Path::new(shim_dir).starts_with(b)),
                "{shim_dir}"
            );
        }
        let host = spec(Some(SandboxSpec {
            pid_mode: NamespaceMode::Host,
            ipc_mode: NamespaceMode::Host,
            ..Default::default()
        }));
        assert_eq!(clone_flags(&host), libc::CLONE_NEWNS);
        assert!(!plan_for(&host, None, 0).pid_init);
    }
}
