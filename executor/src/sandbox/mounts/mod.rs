//! The task's file system view, set up by `sandbox-init` in the task's own mount namespace.
//!
//! [`plan`] (pure) turns the spec's sandbox into a [`MountPlan`]; [`apply`] carries it out with
//! the fd-based mount API ([`sys`]): every bind is a detached copy of a tree
//! (`open_tree(OPEN_TREE_CLONE)`), its access mode is set on that copy (`mount_setattr` on the
//! fd) and it is attached (`move_mount`) onto an fd of its mount point that was resolved
//! without following any symlink (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, one
//! component at a time where mount points are created). No step after an fd is obtained looks
//! a path up again, so a task that swaps a directory of a volume for a symlink meanwhile
//! cannot redirect a mount or an attribute change (issue #18, item 1).
//!
//! With `fs_isolation = "readonly"` the task gets a **new root**, built from an allow-list:
//! 1. every mount becomes private (nothing propagates to or from the host);
//! 2. while the host view is complete: detached copies of the allow-listed host paths
//!    (`/bin`, `/sbin`, `/lib*`, `/usr`, `/etc`… plus Elide's install dir, the resolv.conf
//!    target, an allowed script dir and the operator's `extra_host_paths`: read-only, nosuid,
//!    nodev), of the task dir and the alloc's `alloc/` (writable, nosuid, nodev), of the
//!    volumes, devices and `/sys` (read-only); the entries of `/etc` no one but root may read
//!    are listed (`shadow`, `ssl/private`, SSH host keys, `sudoers`…);
//! 3. a fresh tmpfs becomes the new root (attached over `/tmp` while it is built); a
//!    top-level allow-listed symlink (`/lib -> usr/lib`) is recreated as a symlink, every
//!    other path is attached at its host path (tasks rely on absolute task-dir paths);
//!    mount points are created only in our own tmpfs mounts (`EROFS` in a read-only bind);
//! 4. private `/tmp` (tmpfs), `/dev` (tmpfs with null, zero, full, random, urandom, tty, a
//!    private devpts, `/dev/shm`, `/dev/mqueue` and the task's devices, then read-only);
//! 5. hidden paths that the view still shows (the task's `private/`, `/etc/shadow`,
//!    `/etc/nomad.d`…, the listed root-only `/etc` entries, the operator's `hidden_paths`)
//!    become empty read-only dirs or `/dev/null`;
//! 6. volumes beneath the task dir, mount points created component by component;
//! 7. a fresh `/proc` (the task's PID namespace) with runc's masked and read-only paths,
//!    `/sys` with `firmware` masked;
//! 8. the task's resolv.conf (Nomad's `dns {}`) and, in group network mode, its `/etc/hosts`,
//!    written into the new root's tmpfs, bound read-only over where the task's
//!    `/etc/resolv.conf`/`/etc/hosts` lead, and unlinked again;
//! 9. the new root and the hiding dirs turn read-only, then `pivot_root` into the new root
//!    and a lazy unmount of the old one: nothing of the host that is not in the allow-list is
//!    reachable, and `/proc/self/mountinfo` lists only the task's own mounts (no other
//!    allocation's paths, issue #18 item 12).
//!
//! With `"none"` only volumes, a fresh `/proc` for a private PID namespace and a private
//! `/dev/shm` for a private IPC namespace are set up (the host's root, no pivot).

//!
//! The code: [`plan`] (pure: the [`MountPlan`]), [`sys`] (the syscall wrappers), `fd`
//! (lookups and mount points beneath an fd, detached host trees), `masks` (hiding),
//! `steps` (one function per step above) and `files` (step 8).

mod fd;
mod files;
mod masks;
pub mod plan;
mod steps;
pub mod sys;

use super::report;
use report::{Failure, Step};
use std::io;
use std::path::Path;

pub use plan::{plan, Device, MountPlan, Overlay, Volume, SCRUBBED};
pub use steps::STANDARD_DEVICES;

fn fail(detail: impl Into<String>, e: io::Error) -> Failure {
    Failure::new(Step::Mounts, detail, &e)
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// Carries out the plan (as root, in a new mount namespace).
pub fn apply(p: &MountPlan) -> Result<(), Failure> {
    steps::make_private()?;
    if p.new_root {
        new_root(p)
    } else {
        steps::host_root(p)
    }
}

/// `fs_isolation = "readonly"`: the new root, steps 2 to 9 of the module docs.
fn new_root(p: &MountPlan) -> Result<(), Failure> {
    let mut sources = steps::host_sources(p)?;
    let root = steps::root_fs()?;
    let dev = steps::private_tmp_and_dev(p, &root)?;
    steps::binds_and_hides(p, &root, &mut sources)?;
    steps::task_volumes(p, &root, &mut sources)?;
    if let Some(dev) = &dev {
        steps::fill_dev(p, dev, &mut sources)?;
    }
    steps::proc_and_sys(p, &root, &mut sources)?;
    files::task_files(p, &root)?;
    steps::seal_and_pivot(&root, &sources.masks)
}
