//! Who the runtime runs as: no_new_privs, the bounding set, the task user with its own
//! supplementary groups, and the capability sets. One function, [`Credentials::apply`], used
//! by `sandbox-init` before it starts the runtime, and by `sandbox-exec` for every command run
//! inside the task (`nomad alloc exec`: docs/executor.md, "Entering a sandbox").
//!
//! Order matters: no_new_privs and the bounding set first (dropping from the bounding set
//! needs CAP_SETPCAP, which the effective set still has); for a non-root user the securebits
//! `NOROOT` (locked), so that uid 0 never brings capabilities back at an exec; then the user
//! switch, keeping the permitted set across `setuid` for a non-root user (PR_SET_KEEPCAPS);
//! then effective, inheritable and permitted; then, for a non-root user, the ambient set,
//! which is what survives its `execve` (for root, exec recomputes permitted from the bounding
//! set, which is why the bounding set is cut too).
//!
//! Root keeps `capabilities`; a user other than root keeps only `user_capabilities` (the
//! job's `cap_add`), so with the default set it has none at all: `setresuid(0, 0, 0)` needs
//! CAP_SETUID and fails, and `denied_host_uids` cannot be walked around. The syscall filter
//! (`seccomp`) is not applied here but by the caller, last, right before its exec.

use super::report::{Failure, Step};
use caps::{CapSet, Capability, CapsHashSet};
use common::sandbox::SandboxSpec;
use common::seccomp::SeccompSpec;
use serde::{Deserialize, Serialize};
use std::io;

/// A resolved user: numeric ids and the user's own supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Switch to this user; None keeps the current one.
    pub user: Option<User>,
    /// The bounding set, and what root keeps (kernel names); None leaves every set as it is.
    pub capabilities: Option<Vec<String>>,
    /// What a user other than root keeps (a subset of `capabilities`).
    #[serde(default)]
    pub user_capabilities: Vec<String>,
    pub no_new_privs: bool,
    /// The syscall filter the caller installs last ([`super::seccomp::install`]).
    #[serde(default)]
    pub seccomp: Option<SeccompSpec>,
}

fn os_err(step: Step, detail: impl Into<String>) -> Failure {
    Failure::new(step, detail, &io::Error::last_os_error())
}

/// The highest capability number the kernel knows (may exceed what the `caps` crate knows:
/// those are dropped from the bounding set by number).
fn last_cap() -> u8 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| caps::all().iter().map(|c| c.index()).max().unwrap_or(40))
}

fn name_of(i: u8) -> String {
    caps::all()
        .into_iter()
        .find(|c| c.index() == i)
        .map(|c| c.to_string())
        .unwrap_or_else(|| format!("capability {i}"))
}

fn cap_set(names: &[String]) -> Result<CapsHashSet, Failure> {
    Ok(common::capabilities::from_kernel_names(names)
        .map_err(|e| {
            Failure::new(
                Step::Capabilities,
                e.to_string(),
                &io::Error::from_raw_os_error(libc::EINVAL),
            )
        })?
        .into_iter()
        .collect())
}

impl Credentials {
    /// A task's credentials: without a sandbox only the user switch; with one, no_new_privs,
    /// its capabilities and its syscall filter. The same for the runtime and for every
    /// command exec'd into the task.
    pub fn for_task(sandbox: Option<&SandboxSpec>, user: Option<User>) -> Credentials {
        Credentials {
            user,
            capabilities: sandbox.map(|s| s.capabilities.clone()),
            user_capabilities: sandbox
                .map(|s| s.user_capabilities.clone())
                .unwrap_or_default(),
            no_new_privs: sandbox.is_some(),
            seccomp: sandbox.and_then(|s| s.seccomp.clone()),
        }
    }

    pub fn apply(&self) -> Result<(), Failure> {
        if self.no_new_privs {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
                return Err(os_err(Step::NoNewPrivs, ""));
            }
        }
        let bounding: Option<CapsHashSet> =
            self.capabilities.as_deref().map(cap_set).transpose()?;
        let non_root = self.user.as_ref().is_some_and(|u| u.uid != 0);
        if let Some(keep) = &bounding {
            let kept: Vec<u8> = keep.iter().map(Capability::index).collect();
            for i in 0..=last_cap() {
                if kept.contains(&i) {
                    continue;
                }
                // SAFETY: prctl with integer arguments.
                if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, i as libc::c_ulong, 0, 0, 0) } < 0 {
                    return Err(os_err(
                        Step::Capabilities,
                        format!("dropping {} from the bounding set", name_of(i)),
                    ));
                }
            }
        }
        // A non-root user keeps only its own set (of what the bounding set allows).
        let keep: Option<CapsHashSet> = match &bounding {
            Some(b) if non_root => Some(
                cap_set(&self.user_capabilities)?
                    .into_iter()
                    .filter(|c| b.contains(c))
                    .collect(),
            ),
            other => other.clone(),
        };
        if bounding.is_some() && non_root {
            // uid 0 (a setuid(0) with CAP_SETUID from cap_add, or a setuid-root file) never
            // brings the root set back at an exec; locked, so the task cannot undo it.
            let bits = libc::SECBIT_NOROOT | libc::SECBIT_NOROOT_LOCKED;
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits as libc::c_ulong, 0, 0, 0) } < 0 {
                return Err(os_err(
                    Step::Capabilities,
                    "prctl(PR_SET_SECUREBITS, NOROOT)",
                ));
            }
        }
        if let Some(u) = &self.user {
            if keep.is_some() && non_root {
                // SAFETY: prctl with integer arguments.
                if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } < 0 {
                    return Err(os_err(Step::User, "prctl(PR_SET_KEEPCAPS)"));
                }
            }
            // SAFETY: setgroups reads `groups.len()` gids from a live Vec.
            if unsafe { libc::setgroups(u.groups.len(), u.groups.as_ptr()) } < 0 {
                return Err(os_err(Step::User, format!("setgroups({:?})", u.groups)));
            }
            // SAFETY: plain syscalls with integer arguments.
            if unsafe { libc::setresgid(u.gid, u.gid, u.gid) } < 0 {
                return Err(os_err(Step::User, format!("setgid({})", u.gid)));
            }
            // SAFETY: as above.
            if unsafe { libc::setresuid(u.uid, u.uid, u.uid) } < 0 {
                return Err(os_err(Step::User, format!("setuid({})", u.uid)));
            }
        }
        if let Some(keep) = &keep {
            let set = |cset: CapSet, what: &str| {
                caps::set(None, cset, keep).map_err(|e| {
                    Failure::new(
                        Step::Capabilities,
                        format!("setting the {what} set: {e}"),
                        &io::Error::from_raw_os_error(libc::EPERM),
                    )
                })
            };
            // Effective first: the kernel wants effective ⊆ permitted at every step.
            set(CapSet::Effective, "effective")?;
            set(CapSet::Inheritable, "inheritable")?;
            set(CapSet::Permitted, "permitted")?;
            if caps::runtime::ambient_set_supported().is_ok() {
                caps::clear(None, CapSet::Ambient).map_err(|e| {
                    Failure::new(
                        Step::Capabilities,
                        format!("clearing the ambient set: {e}"),
                        &io::Error::from_raw_os_error(libc::EPERM),
                    )
                })?;
                if non_root {
                    for c in keep {
                        caps::raise(None, CapSet::Ambient, *c).map_err(|e| {
                            Failure::new(
                                Step::Capabilities,
                                format!("raising {c} in the ambient set: {e}"),
                                &io::Error::from_raw_os_error(libc::EPERM),
                            )
                        })?;
                    }
                }
            }
            if non_root {
                // SAFETY: prctl with integer arguments.
                unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
            }
        }
        Ok(())
    }
}
