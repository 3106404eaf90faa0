//! The steps of [`super::apply`], in the order of the module docs' list: each takes the fds
//! the steps before it made and leaves the view one step further.

use super::fd::{existing_beneath, host_tree, make_beneath, rel};
use super::masks::{root_only_entries, Masks};
use super::plan::depth;
use super::report::Failure;
use super::sys::{self as m, MOUNT_ATTR_INERT, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC};
use super::sys::{MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
use super::{display, fail, MountPlan, Overlay};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Devices every task gets in its private `/dev` (bound from the host's).
pub const STANDARD_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// `/proc` entries replaced by an empty file or dir (runc's default masked paths).
const PROC_MASKED: &[&str] = &[
    "acpi",
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "scsi",
];
/// `/proc` entries bound read-only (runc's default read-only paths).
const PROC_READONLY: &[&str] = &["asound", "bus", "fs", "irq", "sys", "sysrq-trigger"];
/// `/sys` entries replaced by an empty dir.
const SYS_MASKED: &[&str] = &["firmware", "devices/virtual/powercap"];
/// The attributes of a device node's bind (a device, so not nodev).
pub(super) const DEVICE: u64 = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC;
/// Size of the task's `/dev/shm` (Nomad exec's 64 MiB).
const SHM_SIZE: &str = "65536k";

/// A detached tree or a symlink to recreate, for a bind of the plan.
enum Source {
    Tree(OwnedFd),
    Symlink(PathBuf),
}

/// Step 1: nothing we do may reach the host.
pub(super) fn make_private() -> Result<(), Failure> {
    m::make_rprivate().map_err(|e| fail("making every mount private (mount --make-rprivate /)", e))
}

/// `fs_isolation = "none"`: the host's view, with volumes, `/proc` and `/dev/shm` of the
/// task's own.
pub(super) fn host_root(p: &MountPlan) -> Result<(), Failure> {
    let volumes = volume_trees(p)?;
    let task = m::open_path(&p.task_dir, libc::O_DIRECTORY | libc::O_NOFOLLOW).map_err(|e| {
        fail(
            format!("opening the task dir {}", display(&p.task_dir)),
            m::needs_kernel(e),
        )
    })?;
    attach_volumes(p, &task, volumes)?;
    if p.private_shm {
        if let Ok(shm) = m::open_path(Path::new("/dev/shm"), libc::O_DIRECTORY | libc::O_NOFOLLOW) {
            let fs = shm_fs().map_err(|e| fail("mounting a private /dev/shm", e))?;
            m::attach(&fs, &shm).map_err(|e| fail("mounting a private /dev/shm", e))?;
        }
    }
    if p.fresh_proc {
        let at = m::open_path(Path::new("/proc"), libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .map_err(|e| fail("opening /proc", e))?;
        let mut masks = Masks {
            null: m::open_path(Path::new("/dev/null"), 0)
                .map_err(|e| fail("opening /dev/null", e))?,
            dirs: Vec::new(),
        };
        fresh_proc(&at, &mut masks)?;
        masks.seal()?;
    }
    Ok(())
}

/// What step 2 takes from the host while its view is complete: a source per overlay of the
/// plan (None: a hide, or an optional path that is missing), the root-only entries to hide,
/// detached copies of the volumes, the devices, the standard devices and `/sys`.
pub(super) struct HostSources {
    overlays: Vec<Option<Source>>,
    scrub: Vec<PathBuf>,
    volumes: Vec<OwnedFd>,
    devices: Vec<OwnedFd>,
    standard: Vec<(&'static str, OwnedFd)>,
    sys: OwnedFd,
    pub(super) masks: Masks,
}

/// Step 2: sources, while the host view is complete.
pub(super) fn host_sources(p: &MountPlan) -> Result<HostSources, Failure> {
    let rw = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    let ro = rw | MOUNT_ATTR_RDONLY;
    let mut sources: Vec<Option<Source>> = Vec::new();
    for o in &p.overlays {
        sources.push(match o {
            Overlay::Hide { .. } => None,
            Overlay::Bind {
                path,
                writable,
                required,
            } => {
                let attrs = if *writable { rw } else { ro };
                let link = std::fs::symlink_metadata(path)
                    .ok()
                    .filter(|m| m.file_type().is_symlink() && depth(path) == 2);
                if let (Some(_), false) = (link, *required) {
                    match std::fs::read_link(path) {
                        Ok(to) => Some(Source::Symlink(to)),
                        Err(_) => None,
                    }
                } else {
                    match host_tree(path, *required, true, attrs) {
                        Ok(t) => Some(Source::Tree(t)),
                        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) || *required => {
                            return Err(fail(
                                format!("opening {} to bind it", display(path)),
                                m::needs_kernel(e),
                            ))
                        }
                        Err(_) => None,
                    }
                }
            }
        });
    }
    let scrub: Vec<PathBuf> = p
        .scrubbed
        .iter()
        .flat_map(|d| root_only_entries(d).into_iter().map(move |e| d.join(e)))
        .collect();
    let volumes = volume_trees(p)?;
    let devices = p
        .devices
        .iter()
        .map(|d| {
            let attrs = DEVICE | if d.writable { 0 } else { MOUNT_ATTR_RDONLY };
            host_tree(&d.source, false, false, attrs)
                .map_err(|e| fail(format!("opening the device {}", display(&d.source)), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let standard: Vec<(&str, OwnedFd)> = STANDARD_DEVICES
        .iter()
        .filter_map(|d| {
            let tree = host_tree(&Path::new("/dev").join(d), false, false, DEVICE).ok()?;
            Some((*d, tree))
        })
        .collect();
    let sys = host_tree(Path::new("/sys"), false, true, ro | MOUNT_ATTR_NOEXEC)
        .map_err(|e| fail("opening /sys", e))?;
    let masks = Masks {
        null: m::open_path(Path::new("/dev/null"), 0).map_err(|e| fail("opening /dev/null", e))?,
        dirs: Vec::new(),
    };
    Ok(HostSources {
        overlays: sources,
        scrub,
        volumes,
        devices,
        standard,
        sys,
        masks,
    })
}

/// Step 3: the new root, a tmpfs, attached over /tmp (of this namespace only) while it is
/// built.
pub(super) fn root_fs() -> Result<OwnedFd, Failure> {
    let root = m::new_fs(
        "tmpfs",
        &[("mode", Some("755")), ("size", Some("1m"))],
        MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )
    .map_err(|e| fail("creating the task's new root (a tmpfs)", m::needs_kernel(e)))?;
    m::open_path(Path::new("/tmp"), libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .and_then(|at| m::attach(&root, &at))
        .map_err(|e| {
            fail(
                "attaching the task's new root over /tmp while it is built",
                e,
            )
        })?;
    Ok(root)
}

/// A top-level dir of the new root, made in our own tmpfs.
fn dir_in_root(root: &OwnedFd, name: &str) -> Result<OwnedFd, Failure> {
    make_beneath(root, Path::new(name), false)
        .map_err(|e| fail(format!("creating /{name} in the task's root"), e))
}

/// Step 4: private /tmp and /dev (before the binds: one may go below /tmp). Returns `/dev`'s
/// tmpfs, filled in by [`fill_dev`] once the binds are there.
pub(super) fn private_tmp_and_dev(
    p: &MountPlan,
    root: &OwnedFd,
) -> Result<Option<OwnedFd>, Failure> {
    if p.private_tmp {
        // Executable: Elide extracts its native libraries to /tmp.
        let at = dir_in_root(root, "tmp")?;
        m::new_fs(
            "tmpfs",
            &[("mode", Some("1777"))],
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        )
        .and_then(|fs| m::attach(&fs, &at))
        .map_err(|e| fail("mounting a private /tmp", e))?;
    }
    let dev = if p.private_dev {
        let at = dir_in_root(root, "dev")?;
        let fs = m::new_fs(
            "tmpfs",
            &[("mode", Some("755")), ("size", Some("64k"))],
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
        )
        .and_then(|fs| m::attach(&fs, &at).map(|_| fs))
        .map_err(|e| fail("mounting a private /dev", e))?;
        Some(fs)
    } else {
        None
    };
    Ok(dev)
}

/// Steps 3 (cont.) and 5: binds and hides, outer first; then the root-only entries of the
/// scrubbed dirs are hidden.
pub(super) fn binds_and_hides(
    p: &MountPlan,
    root: &OwnedFd,
    src: &mut HostSources,
) -> Result<(), Failure> {
    let masks = &mut src.masks;
    for (o, source) in p.overlays.iter().zip(std::mem::take(&mut src.overlays)) {
        match o {
            Overlay::Hide { path } => {
                let at = existing_beneath(root, rel(path))
                    .map_err(|e| fail(format!("opening {} to hide it", display(path)), e))?;
                if let Some(at) = at {
                    masks
                        .hide(&at)
                        .map_err(|e| fail(format!("hiding {}", display(path)), e))?;
                }
            }
            Overlay::Bind { path, .. } => match source {
                None => {}
                Some(Source::Symlink(to)) => {
                    let r = rel(path);
                    let name = r.file_name().unwrap_or(r.as_os_str());
                    m::symlink_at(&to, root, name)
                        .map_err(|e| fail(format!("creating the symlink {}", display(path)), e))?;
                }
                Some(Source::Tree(tree)) => {
                    let file = m::file_type(&tree).is_ok_and(|t| t != libc::S_IFDIR);
                    let at = make_beneath(root, rel(path), file).map_err(|e| {
                        fail(format!("creating the mount point {}", display(path)), e)
                    })?;
                    m::attach(&tree, &at)
                        .map_err(|e| fail(format!("binding {}", display(path)), e))?;
                }
            },
        }
    }
    for path in &src.scrub {
        if let Some(at) = existing_beneath(root, rel(path))
            .map_err(|e| fail(format!("opening {} to hide it", display(path)), e))?
        {
            masks.hide(&at).map_err(|e| {
                fail(
                    format!("hiding {} (only root may read it)", display(path)),
                    e,
                )
            })?;
        }
    }
    Ok(())
}

/// Step 6: volumes beneath the task dir.
pub(super) fn task_volumes(
    p: &MountPlan,
    root: &OwnedFd,
    src: &mut HostSources,
) -> Result<(), Failure> {
    if !p.volumes.is_empty() {
        let task = m::open_beneath(root, rel(&p.task_dir), libc::O_DIRECTORY).map_err(|e| {
            fail(
                format!(
                    "opening the task dir {} in the new root",
                    display(&p.task_dir)
                ),
                e,
            )
        })?;
        attach_volumes(p, &task, std::mem::take(&mut src.volumes))?;
    }
    Ok(())
}

/// Step 4 (cont.): `/dev`: the standard and the task's devices, the `/proc/self/fd` links, a
/// private devpts, `/dev/shm` and `/dev/mqueue`; then read-only.
pub(super) fn fill_dev(p: &MountPlan, dev: &OwnedFd, src: &mut HostSources) -> Result<(), Failure> {
    for (name, tree) in std::mem::take(&mut src.standard) {
        device_attach(dev, Path::new(name), tree)?;
    }
    for (d, tree) in p.devices.iter().zip(std::mem::take(&mut src.devices)) {
        device_attach(dev, &d.dest, tree)?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        m::symlink_at(Path::new(target), dev, OsStr::new(link))
            .map_err(|e| fail(format!("creating /dev/{link}"), e))?;
    }
    let pts =
        make_beneath(dev, Path::new("pts"), false).map_err(|e| fail("creating /dev/pts", e))?;
    m::new_fs(
        "devpts",
        &[
            ("newinstance", None),
            ("ptmxmode", Some("0666")),
            ("mode", Some("0620")),
        ],
        MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
    )
    .and_then(|fs| m::attach(&fs, &pts))
    .map_err(|e| fail("mounting a private /dev/pts", e))?;
    let shm =
        make_beneath(dev, Path::new("shm"), false).map_err(|e| fail("creating /dev/shm", e))?;
    if p.private_shm {
        shm_fs()
            .and_then(|fs| m::attach(&fs, &shm))
            .map_err(|e| fail("mounting a private /dev/shm", e))?;
    }
    if p.mqueue {
        let mq = make_beneath(dev, Path::new("mqueue"), false)
            .map_err(|e| fail("creating /dev/mqueue", e))?;
        m::new_fs("mqueue", &[], MOUNT_ATTR_INERT)
            .and_then(|fs| m::attach(&fs, &mq))
            .map_err(|e| fail("mounting /dev/mqueue", e))?;
    }
    m::set_attr(dev, false, MOUNT_ATTR_RDONLY, 0).map_err(|e| fail("making /dev read-only", e))
}

/// Step 7: /proc of the task's PID namespace, /sys read-only with the firmware masked.
pub(super) fn proc_and_sys(
    p: &MountPlan,
    root: &OwnedFd,
    src: &mut HostSources,
) -> Result<(), Failure> {
    if p.fresh_proc {
        let at = dir_in_root(root, "proc")?;
        fresh_proc(&at, &mut src.masks)?;
    }
    let at = dir_in_root(root, "sys")?;
    m::attach(&src.sys, &at).map_err(|e| fail("binding /sys read-only", e))?;
    for name in SYS_MASKED {
        if let Some(at) = existing_beneath(&src.sys, Path::new(name))
            .map_err(|e| fail(format!("opening /sys/{name}"), e))?
        {
            src.masks
                .hide(&at)
                .map_err(|e| fail(format!("masking /sys/{name}"), e))?;
        }
    }
    Ok(())
}

/// Step 9: the new root and the hiding dirs read-only, then pivot into it.
pub(super) fn seal_and_pivot(root: &OwnedFd, masks: &Masks) -> Result<(), Failure> {
    masks.seal()?;
    m::set_attr(root, false, MOUNT_ATTR_RDONLY, 0)
        .map_err(|e| fail("making the task's root read-only", e))?;
    m::pivot_into(root).map_err(|e| fail("pivoting into the task's new root", e))
}

fn shm_fs() -> io::Result<OwnedFd> {
    m::new_fs(
        "tmpfs",
        &[("mode", Some("1777")), ("size", Some(SHM_SIZE))],
        MOUNT_ATTR_INERT,
    )
}

/// Detached copies of the volumes, their access mode already set (before anything of them
/// is attached where a task could reach it).
fn volume_trees(p: &MountPlan) -> Result<Vec<OwnedFd>, Failure> {
    p.volumes
        .iter()
        .map(|v| {
            let attrs = MOUNT_ATTR_NOSUID
                | MOUNT_ATTR_NODEV
                | if v.read_only { MOUNT_ATTR_RDONLY } else { 0 };
            host_tree(&v.source, false, true, attrs).map_err(|e| {
                fail(
                    format!(
                        "opening the host volume {} (for {})",
                        display(&v.source),
                        display(&v.dest)
                    ),
                    m::needs_kernel(e),
                )
            })
        })
        .collect()
}

/// Attaches each volume tree beneath the task dir; its mount point is resolved (and made)
/// from the task dir's fd without following any symlink.
fn attach_volumes(p: &MountPlan, task: &OwnedFd, trees: Vec<OwnedFd>) -> Result<(), Failure> {
    for (v, tree) in p.volumes.iter().zip(trees) {
        let file = m::file_type(&tree).is_ok_and(|t| t != libc::S_IFDIR);
        let target = make_beneath(task, &v.dest, file).map_err(|e| {
            fail(
                format!(
                    "creating the mount point {} for the host volume {} (no symlinks are followed inside the task dir)",
                    display(&v.dest),
                    display(&v.source)
                ),
                e,
            )
        })?;
        m::attach(&tree, &target).map_err(|e| {
            fail(
                format!(
                    "binding the host volume {} at {}",
                    display(&v.source),
                    display(&v.dest)
                ),
                e,
            )
        })?;
    }
    Ok(())
}

/// A fresh `/proc` for the task's PID namespace attached on `at`, runc's masked paths hidden
/// and its read-only paths read-only.
fn fresh_proc(at: &OwnedFd, masks: &mut Masks) -> Result<(), Failure> {
    let proc_ = m::new_fs("proc", &[], MOUNT_ATTR_INERT)
        .and_then(|fs| m::attach(&fs, at).map(|_| fs))
        .map_err(|e| fail("mounting /proc for the task's PID namespace", e))?;
    for name in PROC_MASKED {
        if let Some(at) = existing_beneath(&proc_, Path::new(name))
            .map_err(|e| fail(format!("opening /proc/{name}"), e))?
        {
            masks
                .hide(&at)
                .map_err(|e| fail(format!("masking /proc/{name}"), e))?;
        }
    }
    for name in PROC_READONLY {
        let Some(at) = existing_beneath(&proc_, Path::new(name))
            .map_err(|e| fail(format!("opening /proc/{name}"), e))?
        else {
            continue;
        };
        let r = m::clone_tree(at.as_raw_fd(), Path::new(""), true)
            .and_then(|t| m::set_attr(&t, true, MOUNT_ATTR_RDONLY | MOUNT_ATTR_INERT, 0).map(|_| t))
            .and_then(|t| m::attach(&t, &at));
        r.map_err(|e| fail(format!("making /proc/{name} read-only"), e))?;
    }
    Ok(())
}

fn device_attach(dev: &OwnedFd, dest: &Path, tree: OwnedFd) -> Result<(), Failure> {
    let at = Path::new("/dev").join(dest);
    let file = m::file_type(&tree).is_ok_and(|t| t != libc::S_IFDIR);
    let target =
        make_beneath(dev, dest, file).map_err(|e| fail(format!("creating {}", display(&at)), e))?;
    m::attach(&tree, &target).map_err(|e| fail(format!("binding the device {}", display(&at)), e))
}
