//! The task's file system view, set up by `sandbox-init` in the task's own mount namespace.
//!
//! [`plan`] (pure) turns the spec's sandbox into a [`MountPlan`]; [`apply`] carries it out with
//! the fd-based mount API ([`super::mountapi`]): every bind is a detached copy of a tree
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

use super::mountapi::{self as m, MOUNT_ATTR_INERT, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC};
use super::mountapi::{MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
use super::report::{Failure, Step};
use common::hosts::HostsSpec;
use common::sandbox::{relative_task_path, FsIsolation, SandboxSpec};
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

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
const DEVICE: u64 = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC;
/// Size of the task's `/dev/shm` (Nomad exec's 64 MiB).
const SHM_SIZE: &str = "65536k";
/// Allow-listed host dirs whose entries no one but root may read (mode without `o+r`) are
/// hidden: the credential stores of `/etc` (`shadow`, `gshadow`, `ssl/private`, SSH host
/// keys, `sudoers`, `security/opasswd`…) whatever their names on this host.
pub const SCRUBBED: &[&str] = &["/etc"];

/// One step of the overlay phase, at a host path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Overlay {
    /// An empty read-only dir (or `/dev/null` over a file) in its place.
    Hide { path: PathBuf },
    /// The host path bound at the same path.
    Bind {
        path: PathBuf,
        writable: bool,
        /// Missing on the host: a failure (the task dir) or skipped (Elide's home, `/lib32`).
        /// Required paths are resolved without following any symlink; the others are host
        /// paths only the host's root controls (the allow-list), whose symlinks are followed
        /// (a top-level one, `/lib -> usr/lib`, is recreated as a symlink).
        required: bool,
    },
}

impl Overlay {
    fn path(&self) -> &Path {
        match self {
            Overlay::Hide { path } | Overlay::Bind { path, .. } => path,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub source: PathBuf,
    /// Relative to the task dir (no `..`).
    pub dest: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub source: PathBuf,
    /// Relative to `/dev`.
    pub dest: PathBuf,
    pub writable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPlan {
    /// Build a new root from the allow-listed binds and pivot into it.
    pub new_root: bool,
    pub private_tmp: bool,
    pub private_dev: bool,
    pub fresh_proc: bool,
    pub private_shm: bool,
    pub mqueue: bool,
    pub overlays: Vec<Overlay>,
    /// Bound dirs ([`SCRUBBED`]) whose root-only entries are hidden.
    #[serde(default)]
    pub scrubbed: Vec<PathBuf>,
    pub task_dir: PathBuf,
    pub volumes: Vec<Volume>,
    pub devices: Vec<Device>,
    /// The task's own resolv.conf (Nomad's `network { dns {} }`), mounted read-only over
    /// `/etc/resolv.conf` (readonly isolation only).
    #[serde(default)]
    pub resolv_conf: Option<String>,
    /// The task's own `/etc/hosts` in group network mode (readonly isolation only); the
    /// fields Nomad did not send are found by `sandbox-init` in the network namespace.
    #[serde(default)]
    pub hosts: Option<HostsSpec>,
}

fn depth(p: &Path) -> usize {
    p.components().count()
}

/// `a` is a proper ancestor of `b`.
fn above(a: &Path, b: &Path) -> bool {
    a != b && b.starts_with(a)
}

/// The mount plan of a sandbox. `shim_dirs`: the shim's own dirs (socket dir, state dir),
/// hidden on top of the spec's list (wherever the view would show them).
pub fn plan(s: &SandboxSpec, task_dir: &Path, shim_dirs: &[PathBuf]) -> MountPlan {
    let readonly = s.fs_isolation == FsIsolation::Readonly;
    let overlays = if readonly {
        overlays(s, shim_dirs)
    } else {
        Vec::new()
    };
    let scrubbed = overlays
        .iter()
        .filter_map(|o| match o {
            Overlay::Bind { path, .. } if SCRUBBED.iter().any(|s| Path::new(s) == path) => {
                Some(path.clone())
            }
            _ => None,
        })
        .collect();
    let volumes = s
        .volumes
        .iter()
        .filter_map(|v| {
            Some(Volume {
                source: v.host_path.clone(),
                dest: relative_task_path(&v.task_path).ok()?,
                read_only: v.read_only,
            })
        })
        .collect();
    let devices = if readonly {
        s.devices
            .iter()
            .filter_map(|d| {
                Some(Device {
                    source: d.host_path.clone(),
                    dest: d.task_path.strip_prefix("/dev").ok()?.to_path_buf(),
                    writable: d.permissions.contains('w'),
                })
            })
            .collect()
    } else {
        // The host's /dev is there as it is; the plugin refused devices placed elsewhere.
        Vec::new()
    };
    MountPlan {
        new_root: readonly,
        private_tmp: readonly,
        private_dev: readonly,
        fresh_proc: readonly || s.pid_mode.is_private(),
        private_shm: readonly || s.ipc_mode.is_private(),
        mqueue: readonly && s.ipc_mode.is_private(),
        overlays,
        scrubbed,
        task_dir: task_dir.to_path_buf(),
        volumes,
        devices,
        resolv_conf: s.dns.as_ref().filter(|_| readonly).map(|d| d.render()),
        hosts: s.hosts.clone().filter(|_| readonly),
    }
}

/// Binds (the allow-list, the task's own dirs) and hides, outer paths first. The new root
/// shows nothing but the binds (and the private `/tmp`, `/dev`, `/proc`, `/sys`), so a hide
/// is kept only where a bind would show it, and not below another hide unless a bind between
/// them brings its part of the tree back.
fn overlays(s: &SandboxSpec, shim_dirs: &[PathBuf]) -> Vec<Overlay> {
    let mut binds: Vec<(PathBuf, bool, bool)> = Vec::new();
    for (p, writable, required) in s
        .writable_paths
        .iter()
        .map(|p| (p, true, true))
        .chain(s.readable_paths.iter().map(|p| (p, false, false)))
    {
        if p.parent().is_none() {
            continue; // never the whole host root
        }
        match binds.iter_mut().find(|b| b.0 == *p) {
            Some(b) => {
                b.1 |= writable;
                b.2 |= required;
            }
            None => binds.push((p.clone(), writable, required)),
        }
    }
    // A read-only path inside another bind is already there (and could not get a mount
    // point in a read-only bind): only writable ones are bound again.
    let snapshot = binds.clone();
    binds.retain(|b| b.1 || !snapshot.iter().any(|o| above(&o.0, &b.0)));
    let mut hides: Vec<PathBuf> = Vec::new();
    let mut wanted: Vec<&PathBuf> = s.hidden_paths.iter().chain(shim_dirs).collect();
    wanted.sort_by_key(|p| depth(p));
    for h in wanted {
        if hides.contains(h) || binds.iter().any(|b| b.0 == *h) {
            continue;
        }
        let shown = binds.iter().any(|b| above(&b.0, h));
        let covered = hides
            .iter()
            .any(|a| above(a, h) && !binds.iter().any(|b| above(a, &b.0) && h.starts_with(&b.0)));
        if shown && !covered {
            hides.push(h.clone());
        }
    }
    let mut out: Vec<Overlay> = hides
        .into_iter()
        .map(|path| Overlay::Hide { path })
        .chain(
            binds
                .into_iter()
                .map(|(path, writable, required)| Overlay::Bind {
                    path,
                    writable,
                    required,
                }),
        )
        .collect();
    // Outer first; at the same depth hides before binds (stable otherwise).
    out.sort_by_key(|o| (depth(o.path()), matches!(o, Overlay::Bind { .. })));
    out
}

// ------------------------------------------------------------------------------ applying

fn fail(detail: impl Into<String>, e: io::Error) -> Failure {
    Failure::new(Step::Mounts, detail, &e)
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// `p` without its leading `/` (what `openat2` beneath the new root takes).
fn rel(p: &Path) -> &Path {
    p.strip_prefix("/").unwrap_or(p)
}

/// `mount --make-rprivate /`: no mount event goes to or comes from the host any more.
fn make_rprivate() -> io::Result<()> {
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(io::Error::from)
}

/// A detached copy of the host tree at `path` with `attrs` set on every mount of it.
/// `strict` (the task's own dirs): the last component is never a symlink (`ELOOP`); the
/// dirs above it are Nomad's (its data dir, the root-owned alloc dir: no task writes there),
/// whose symlinks an operator may use. Else the host's own symlinks are followed.
fn host_tree(path: &Path, strict: bool, recursive: bool, attrs: u64) -> io::Result<OwnedFd> {
    let at = m::open_path(path, if strict { libc::O_NOFOLLOW } else { 0 })?;
    let tree = m::clone_tree(at.as_raw_fd(), Path::new(""), recursive)?;
    m::set_attr(&tree, recursive, attrs, 0)?;
    Ok(tree)
}

/// An `O_PATH` fd on `rel` beneath `base`, creating what is missing (dirs 0755, the last
/// component as an empty file when `file`), one component at a time, never following a
/// symlink (`ELOOP`/`ENOTDIR`): a task swapping a component meanwhile only makes this fail.
/// Where `base` is a read-only bind nothing can be created (`EROFS`): mount points are only
/// ever made in our own tmpfs mounts or in the task's writable dirs.
fn make_beneath(base: &OwnedFd, rel: &Path, file: bool) -> io::Result<OwnedFd> {
    let parts: Vec<&OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        })
        .collect::<io::Result<_>>()?;
    let mut dir = m::open_beneath(base, Path::new("."), libc::O_DIRECTORY)?;
    for (i, name) in parts.iter().enumerate() {
        if i + 1 == parts.len() && file {
            m::mkfile_at(&dir, name, 0o644)?;
            let h = m::open_beneath(&dir, Path::new(name), 0)?;
            if m::file_type(&h)? == libc::S_IFDIR {
                return Err(io::Error::from_raw_os_error(libc::EISDIR));
            }
            return Ok(h);
        }
        m::mkdir_at(&dir, name, 0o755)?;
        dir = m::open_beneath(&dir, Path::new(name), libc::O_DIRECTORY)?;
    }
    Ok(dir)
}

/// An existing entry `rel` beneath `base` (no symlink followed); None when it is missing or
/// a symlink (nothing to hide there: a symlink leads into the view's own files).
fn existing_beneath(base: &OwnedFd, rel: &Path) -> io::Result<Option<OwnedFd>> {
    match m::open_beneath(base, rel, 0) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ELOOP)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What the sandbox hides things with.
struct Masks {
    /// `O_PATH` on the host's `/dev/null` (cloned for each file to hide).
    null: OwnedFd,
    /// Hiding tmpfs mounts, writable until the end (a bind may need a mount point in one).
    dirs: Vec<OwnedFd>,
}

impl Masks {
    /// An empty dir (made read-only at the end) or `/dev/null` over what `at` is.
    fn hide(&mut self, at: &OwnedFd) -> io::Result<()> {
        if m::file_type(at)? == libc::S_IFDIR {
            let fs = m::new_fs(
                "tmpfs",
                &[("mode", Some("755")), ("size", Some("16k"))],
                MOUNT_ATTR_INERT,
            )?;
            m::attach(&fs, at)?;
            self.dirs.push(fs);
        } else {
            let null = m::clone_tree(self.null.as_raw_fd(), Path::new(""), false)?;
            // Not nodev: it reads as empty, like runc's masked paths.
            m::set_attr(&null, false, MOUNT_ATTR_RDONLY | DEVICE, 0)?;
            m::attach(&null, at)?;
        }
        Ok(())
    }

    /// The hiding dirs, read-only.
    fn seal(&self) -> Result<(), Failure> {
        for fs in &self.dirs {
            m::set_attr(fs, false, MOUNT_ATTR_RDONLY, 0)
                .map_err(|e| fail("making a hiding dir read-only", e))?;
        }
        Ok(())
    }
}

/// The entries below `dir` (a host dir only the host's root controls) that only root may
/// read (no `o+r`), relative to it; such a dir is listed whole, not walked into. Symlinks
/// are not followed, other file systems not entered.
fn root_only_entries(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, at: &Path, dev: u64, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(at) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                continue;
            }
            if meta.mode() & 0o004 == 0 {
                if let Ok(r) = p.strip_prefix(base) {
                    out.push(r.to_path_buf());
                }
            } else if meta.is_dir() && meta.dev() == dev {
                walk(base, &p, dev, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(meta) = std::fs::metadata(dir) {
        walk(dir, dir, meta.dev(), &mut out);
    }
    out
}

/// A detached tree or a symlink to recreate, for a bind of the plan.
enum Source {
    Tree(OwnedFd),
    Symlink(PathBuf),
}

/// Carries out the plan (as root, in a new mount namespace).
pub fn apply(p: &MountPlan) -> Result<(), Failure> {
    // 1. Nothing we do may reach the host.
    make_rprivate().map_err(|e| fail("making every mount private (mount --make-rprivate /)", e))?;
    if p.new_root {
        new_root(p)
    } else {
        host_root(p)
    }
}

/// `fs_isolation = "none"`: the host's view, with volumes, `/proc` and `/dev/shm` of the
/// task's own.
fn host_root(p: &MountPlan) -> Result<(), Failure> {
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

/// `fs_isolation = "readonly"`: the new root (module docs).
fn new_root(p: &MountPlan) -> Result<(), Failure> {
    // 2. Sources, while the host view is complete.
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
    let mut masks = Masks {
        null: m::open_path(Path::new("/dev/null"), 0).map_err(|e| fail("opening /dev/null", e))?,
        dirs: Vec::new(),
    };

    // 3. The new root: a tmpfs, attached over /tmp (of this namespace only) while it is built.
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
    let dir_in_root = |name: &str| {
        make_beneath(&root, Path::new(name), false)
            .map_err(|e| fail(format!("creating /{name} in the task's root"), e))
    };

    // 4. Private /tmp and /dev (before the binds: one may go below /tmp).
    if p.private_tmp {
        // Executable: Elide extracts its native libraries to /tmp.
        let at = dir_in_root("tmp")?;
        m::new_fs("tmpfs", &[("mode", Some("1777"))], rw)
            .and_then(|fs| m::attach(&fs, &at))
            .map_err(|e| fail("mounting a private /tmp", e))?;
    }
    let dev = if p.private_dev {
        let at = dir_in_root("dev")?;
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

    // 3 (cont.) and 5. Binds and hides, outer first.
    for (o, src) in p.overlays.iter().zip(sources) {
        match o {
            Overlay::Hide { path } => {
                let at = existing_beneath(&root, rel(path))
                    .map_err(|e| fail(format!("opening {} to hide it", display(path)), e))?;
                if let Some(at) = at {
                    masks
                        .hide(&at)
                        .map_err(|e| fail(format!("hiding {}", display(path)), e))?;
                }
            }
            Overlay::Bind { path, .. } => match src {
                None => {}
                Some(Source::Symlink(to)) => {
                    let r = rel(path);
                    let name = r.file_name().unwrap_or(r.as_os_str());
                    m::symlink_at(&to, &root, name)
                        .map_err(|e| fail(format!("creating the symlink {}", display(path)), e))?;
                }
                Some(Source::Tree(tree)) => {
                    let file = m::file_type(&tree).is_ok_and(|t| t != libc::S_IFDIR);
                    let at = make_beneath(&root, rel(path), file).map_err(|e| {
                        fail(format!("creating the mount point {}", display(path)), e)
                    })?;
                    m::attach(&tree, &at)
                        .map_err(|e| fail(format!("binding {}", display(path)), e))?;
                }
            },
        }
    }
    for path in &scrub {
        if let Some(at) = existing_beneath(&root, rel(path))
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

    // 6. Volumes beneath the task dir.
    if !p.volumes.is_empty() {
        let task = m::open_beneath(&root, rel(&p.task_dir), libc::O_DIRECTORY).map_err(|e| {
            fail(
                format!(
                    "opening the task dir {} in the new root",
                    display(&p.task_dir)
                ),
                e,
            )
        })?;
        attach_volumes(p, &task, volumes)?;
    }

    // 4 (cont.). /dev.
    if let Some(dev) = &dev {
        for (name, tree) in standard {
            device_attach(dev, Path::new(name), tree)?;
        }
        for (d, tree) in p.devices.iter().zip(devices) {
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
        m::set_attr(dev, false, MOUNT_ATTR_RDONLY, 0)
            .map_err(|e| fail("making /dev read-only", e))?;
    }

    // 7. /proc of the task's PID namespace, /sys read-only with the firmware masked.
    if p.fresh_proc {
        let at = dir_in_root("proc")?;
        fresh_proc(&at, &mut masks)?;
    }
    let at = dir_in_root("sys")?;
    m::attach(&sys, &at).map_err(|e| fail("binding /sys read-only", e))?;
    for name in SYS_MASKED {
        if let Some(at) = existing_beneath(&sys, Path::new(name))
            .map_err(|e| fail(format!("opening /sys/{name}"), e))?
        {
            masks
                .hide(&at)
                .map_err(|e| fail(format!("masking /sys/{name}"), e))?;
        }
    }

    // 8. The task's resolv.conf and /etc/hosts.
    if let Some(content) = &p.resolv_conf {
        mount_file_over(
            &root,
            content,
            Path::new(common::dns::RESOLV_CONF),
            "the task's DNS config",
        )?;
    }
    if let Some(hosts) = &p.hosts {
        // None: loopback only (`network { mode = "none" }`), nothing to map.
        if let Some(content) = etc_hosts(hosts)? {
            mount_file_over(
                &root,
                &content,
                Path::new(common::hosts::ETC_HOSTS),
                "the task's hosts file",
            )?;
        }
    }

    // 9. Read-only, then pivot.
    masks.seal()?;
    m::set_attr(&root, false, MOUNT_ATTR_RDONLY, 0)
        .map_err(|e| fail("making the task's root read-only", e))?;
    m::pivot_into(&root).map_err(|e| fail("pivoting into the task's new root", e))?;
    Ok(())
}

fn device_attach(dev: &OwnedFd, dest: &Path, tree: OwnedFd) -> Result<(), Failure> {
    let at = Path::new("/dev").join(dest);
    let file = m::file_type(&tree).is_ok_and(|t| t != libc::S_IFDIR);
    let target =
        make_beneath(dev, dest, file).map_err(|e| fail(format!("creating {}", display(&at)), e))?;
    m::attach(&tree, &target).map_err(|e| fail(format!("binding the device {}", display(&at)), e))
}

/// Where a resolver opening `link` (`/etc/resolv.conf`) in the new root ends up: followed as
/// the task would (never out of the root). A dangling symlink (its target below a path the
/// view does not show) gets its target created as an empty file in our tmpfs.
fn mount_target(root: &OwnedFd, link: &Path) -> io::Result<OwnedFd> {
    match m::open_in_root(root, rel(link)) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        r => return r,
    }
    let parent = link.parent().unwrap_or(Path::new("/"));
    let pfd = m::open_in_root(root, rel(parent))?;
    let name = link.file_name().unwrap_or(link.as_os_str());
    let to = readlink_at(&pfd, name)?;
    let mut target = parent.to_path_buf();
    for c in to.components() {
        match c {
            Component::RootDir => target = PathBuf::from("/"),
            Component::ParentDir => {
                target.pop();
            }
            Component::Normal(n) => target.push(n),
            Component::CurDir | Component::Prefix(_) => {}
        }
    }
    make_beneath(root, rel(&target), true)
}

fn readlink_at(dir: &OwnedFd, name: &OsStr) -> io::Result<PathBuf> {
    let c = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: readlinkat into a live buffer of the given length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(OsStr::from_bytes(&buf)))
}

/// Mounts `content` (`what`, for errors) read-only over where `link` leads in the new root.
/// The file is written by us (root, before the task runs) into the new root's own tmpfs,
/// bound read-only over the target, and unlinked again: the only way to it is the read-only
/// bind, and nothing a task controls is ever written through.
fn mount_file_over(root: &OwnedFd, content: &str, link: &Path, what: &str) -> Result<(), Failure> {
    let target = mount_target(root, link).map_err(|e| {
        fail(
            format!(
                "finding {} to mount {what} over (the host needs one, even empty)",
                display(link)
            ),
            e,
        )
    })?;
    if m::file_type(&target).is_ok_and(|t| t == libc::S_IFDIR) {
        return Err(fail(
            format!("{} is a directory, not a file", display(link)),
            io::Error::from_raw_os_error(libc::EISDIR),
        ));
    }
    let name = format!(
        ".elide-{}",
        link.file_name()
            .unwrap_or(OsStr::new("file"))
            .to_string_lossy()
    );
    let staged = (|| {
        let c = std::ffi::CString::new(name.as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: openat relative to a live dir fd; the fd is owned from here on.
        let fd = unsafe {
            libc::openat(
                root.as_raw_fd(),
                c.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd.
        let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        f.write_all(content.as_bytes())?;
        drop(f);
        let tree = m::clone_tree(root.as_raw_fd(), Path::new(&name), false)?;
        m::set_attr(&tree, false, MOUNT_ATTR_RDONLY | MOUNT_ATTR_INERT, 0)?;
        m::attach(&tree, &target)
    })();
    let c = std::ffi::CString::new(name.as_bytes()).ok();
    if let Some(c) = c {
        // SAFETY: unlinkat relative to a live dir fd (the bind keeps the file alive).
        unsafe { libc::unlinkat(root.as_raw_fd(), c.as_ptr(), 0) };
    }
    staged.map_err(|e| fail(format!("mounting {what} over {}", display(link)), e))
}

/// The task's `/etc/hosts` text: Nomad's address and hostname, else the address of this
/// (the task's) network namespace and this (the node's) hostname. None when the namespace
/// has no address but loopback.
fn etc_hosts(h: &HostsSpec) -> Result<Option<String>, Failure> {
    let address = match &h.address {
        Some(a) => a.clone(),
        None => {
            let addrs = nix::ifaddrs::getifaddrs()
                .map_err(|e| {
                    fail(
                        "listing the network namespace's addresses for /etc/hosts",
                        io::Error::from(e),
                    )
                })?
                .filter_map(|i| {
                    let a = i.address?;
                    let ip = match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
                        (Some(v4), _) => std::net::IpAddr::V4(v4.ip()),
                        (_, Some(v6)) => std::net::IpAddr::V6(v6.ip()),
                        _ => return None,
                    };
                    Some((i.interface_name, ip))
                })
                .collect::<Vec<_>>();
            let picked = common::hosts::pick_address(addrs.iter().map(|(n, a)| (n.as_str(), *a)));
            match picked {
                Some(a) => a.to_string(),
                None => return Ok(None),
            }
        }
    };
    let hostname = match &h.hostname {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .map_err(|e| fail("reading the hostname for /etc/hosts", io::Error::from(e)))?
            .to_string_lossy()
            .into_owned(),
    };
    // The node's entries (the host root, read-only here; root's file), bounded.
    let host_file = std::fs::File::open("/etc/hosts").ok().and_then(|f| {
        let mut text = String::new();
        io::Read::read_to_string(
            &mut io::Read::take(f, common::hosts::MAX_HOST_ENTRIES_BYTES as u64),
            &mut text,
        )
        .ok()
        .map(|_| text)
    });
    Ok(Some(common::hosts::render(
        &address,
        &hostname,
        host_file.as_deref(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::sandbox::{DeviceSpec, NamespaceMode, VolumeSpec};

    fn spec() -> SandboxSpec {
        SandboxSpec {
            writable_paths: vec![
                "/var/lib/nomad/alloc/a1/web".into(),
                "/var/lib/nomad/alloc/a1/alloc".into(),
            ],
            readable_paths: vec![
                "/usr".into(),
                "/etc".into(),
                "/lib".into(),
                "/opt/elide".into(),
            ],
            hidden_paths: vec![
                "/var/lib/nomad/alloc".into(),
                "/var/lib/nomad".into(),
                "/run/nomad-driver-elide".into(),
                "/var/lib/nomad/alloc/a1/web/private".into(),
                "/etc/shadow".into(),
                "/etc/nomad.d".into(),
            ],
            ..Default::default()
        }
    }

    fn ops(p: &MountPlan) -> Vec<String> {
        p.overlays
            .iter()
            .map(|o| match o {
                Overlay::Hide { path } => format!("hide {}", path.display()),
                Overlay::Bind { path, writable, .. } => {
                    format!(
                        "bind{} {}",
                        if *writable { "-rw" } else { "-ro" },
                        path.display()
                    )
                }
            })
            .collect()
    }

    /// The new root shows the binds only: hides outside them (Nomad's data dir, the plugin's
    /// runtime dir, the shim's state) are not needed, those inside (`/etc/shadow`, the task's
    /// `private/`) are kept, after their bind.
    #[test]
    fn outer_paths_first_and_only_hides_a_bind_would_show() {
        let p = plan(
            &spec(),
            Path::new("/var/lib/nomad/alloc/a1/web"),
            &[
                "/var/lib/nomad/alloc/a1/.elide/k".into(),
                "/run/nomad-driver-elide".into(),
            ],
        );
        assert_eq!(
            ops(&p),
            [
                "bind-ro /usr",
                "bind-ro /etc",
                "bind-ro /lib",
                "hide /etc/shadow",
                "hide /etc/nomad.d",
                "bind-ro /opt/elide",
                "bind-rw /var/lib/nomad/alloc/a1/web",
                "bind-rw /var/lib/nomad/alloc/a1/alloc",
                "hide /var/lib/nomad/alloc/a1/web/private",
            ]
        );
        assert_eq!(p.scrubbed, [PathBuf::from("/etc")]);
        assert!(p.new_root && p.private_tmp && p.private_dev && p.fresh_proc);
        assert!(p.private_shm && p.mqueue);
        // Only the task's own dirs are required (resolved without symlinks, never skipped).
        for o in &p.overlays {
            if let Overlay::Bind { path, required, .. } = o {
                assert_eq!(*required, path.starts_with("/var/lib/nomad"), "{o:?}");
            }
        }
    }

    /// A read-only path inside another bind is already visible (and a read-only bind could
    /// not take a mount point); a writable one inside a read-only bind is bound again; a
    /// hide below another hide is dropped unless a bind between them shows it; `/` is
    /// never bound.
    #[test]
    fn nested_binds_and_hides() {
        let s = SandboxSpec {
            writable_paths: vec!["/tmp/t/data/alloc/a1/web".into(), "/srv/rw".into()],
            readable_paths: vec![
                "/".into(),
                "/srv".into(),
                "/srv/elide".into(),
                "/usr/local/elide".into(),
                "/usr".into(),
            ],
            hidden_paths: vec![
                "/tmp/t/data".into(),
                "/srv/keys".into(),
                "/srv/keys/a".into(),
                "/srv/rw/x".into(),
                "/tmp/t/data/alloc/a1/web/private".into(),
            ],
            ..Default::default()
        };
        let p = plan(&s, Path::new("/tmp/t/data/alloc/a1/web"), &[]);
        assert_eq!(
            ops(&p),
            [
                "bind-ro /srv",
                "bind-ro /usr",
                "hide /srv/keys",
                "bind-rw /srv/rw",
                "hide /srv/rw/x",
                "bind-rw /tmp/t/data/alloc/a1/web",
                "hide /tmp/t/data/alloc/a1/web/private"
            ]
        );
        assert!(p.scrubbed.is_empty());
    }

    #[test]
    fn none_keeps_the_host_view_and_only_sets_up_namespaces_and_volumes() {
        let mut s = spec();
        s.fs_isolation = FsIsolation::None;
        s.volumes = vec![VolumeSpec {
            host_path: "/srv/data".into(),
            task_path: "/data/x".into(),
            read_only: true,
        }];
        s.devices = vec![DeviceSpec {
            host_path: "/dev/fuse".into(),
            task_path: "/dev/fuse".into(),
            permissions: "rwm".into(),
        }];
        let p = plan(&s, Path::new("/t"), &[]);
        assert!(p.overlays.is_empty() && p.devices.is_empty());
        assert!(!p.new_root && !p.private_tmp && !p.private_dev && !p.mqueue);
        assert!(p.fresh_proc && p.private_shm);
        assert_eq!(
            p.volumes,
            [Volume {
                source: "/srv/data".into(),
                dest: "data/x".into(),
                read_only: true
            }]
        );
        s.pid_mode = NamespaceMode::Host;
        s.ipc_mode = NamespaceMode::Host;
        let p = plan(&s, Path::new("/t"), &[]);
        assert!(!p.fresh_proc && !p.private_shm);
    }
    #[test]
    fn devices_go_below_dev_with_their_write_permission() {
        let mut s = spec();
        s.devices = vec![
            DeviceSpec {
                host_path: "/dev/nvidia0".into(),
                task_path: "/dev/nvidia0".into(),
                permissions: "rwm".into(),
            },
            DeviceSpec {
                host_path: "/dev/sda".into(),
                task_path: "/dev/disk/x".into(),
                permissions: "r".into(),
            },
        ];
        let p = plan(&s, Path::new("/t"), &[]);
        assert_eq!(p.devices[0].dest, Path::new("nvidia0"));
        assert!(p.devices[0].writable);
        assert_eq!(p.devices[1].dest, Path::new("disk/x"));
        assert!(!p.devices[1].writable);
    }
    #[test]
    fn a_dns_config_becomes_the_resolv_conf_to_mount_with_readonly_isolation_only() {
        let mut s = spec();
        assert_eq!(plan(&s, Path::new("/t"), &[]).resolv_conf, None);
        s.dns = Some(common::dns::DnsSpec {
            servers: vec!["10.9.8.7".into()],
            searches: vec!["example.internal".into()],
            options: vec!["ndots:2".into()],
        });
        assert_eq!(
            plan(&s, Path::new("/t"), &[]).resolv_conf.as_deref(),
            Some("search example.internal\nnameserver 10.9.8.7\noptions ndots:2\n")
        );
        s.fs_isolation = FsIsolation::None;
        assert_eq!(plan(&s, Path::new("/t"), &[]).resolv_conf, None);
    }
    #[test]
    fn a_hosts_config_is_planned_with_readonly_isolation_only() {
        let mut s = spec();
        assert_eq!(plan(&s, Path::new("/t"), &[]).hosts, None);
        let hosts = HostsSpec {
            hostname: Some("web-1".into()),
            address: None,
        };
        s.hosts = Some(hosts.clone());
        assert_eq!(plan(&s, Path::new("/t"), &[]).hosts, Some(hosts));
        s.fs_isolation = FsIsolation::None;
        assert_eq!(plan(&s, Path::new("/t"), &[]).hosts, None);
    }
    #[test]
    fn etc_hosts_takes_nomads_values_or_the_network_namespaces() {
        let given = HostsSpec {
            hostname: Some("a1b2c3d4e5f6".into()),
            address: Some("172.26.64.5".into()),
        };
        let text = etc_hosts(&given).unwrap().unwrap();
        assert!(text.ends_with("\n172.26.64.5 a1b2c3d4e5f6\n"), "{text}");
        if !common::testing::root_or_skip("a network namespace needs root") {
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            assert_eq!(etc_hosts(&HostsSpec::default()).unwrap(), None);
            let named = HostsSpec {
                hostname: Some("web-1".into()),
                address: None,
            };
            assert_eq!(etc_hosts(&named).unwrap(), None);
        })
        .join()
        .unwrap();
    }

    /// Entries no one but root may read are listed (a dir whole); symlinks are not
    /// followed.
    #[test]
    fn root_only_entries_are_found_without_following_symlinks() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let b = d.path();
        std::fs::create_dir_all(b.join("ssl/private")).unwrap();
        std::fs::create_dir_all(b.join("ssh")).unwrap();
        for (f, mode) in [
            ("shadow", 0o640),
            ("passwd", 0o644),
            ("ssh/ssh_host_ed25519_key", 0o600),
            ("ssh/ssh_host_ed25519_key.pub", 0o644),
            ("ssl/private/snakeoil.key", 0o640),
        ] {
            std::fs::write(b.join(f), "x").unwrap();
            std::fs::set_permissions(b.join(f), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::set_permissions(
            b.join("ssl/private"),
            std::fs::Permissions::from_mode(0o710),
        )
        .unwrap();
        std::os::unix::fs::symlink("shadow", b.join("link")).unwrap();
        let mut found = root_only_entries(b);
        found.sort();
        assert_eq!(
            found,
            [
                PathBuf::from("shadow"),
                PathBuf::from("ssh/ssh_host_ed25519_key"),
                PathBuf::from("ssl/private"),
            ]
        );
    }

    /// A mount point is made one component at a time and a symlink anywhere on the way is
    /// never followed, whatever it points at; the target of the symlink stays untouched.
    #[test]
    fn mount_points_are_made_beneath_without_following_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("task");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(base.join("data")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, base.join("data/sub")).unwrap();
        std::os::unix::fs::symlink("../..", base.join("up")).unwrap();
        let fd = m::open_path(&base, libc::O_DIRECTORY).unwrap();
        for rel in ["data/sub/x", "data/sub", "up/x"] {
            let e = make_beneath(&fd, Path::new(rel), false).unwrap_err();
            assert!(
                matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)),
                "{rel}: {e}"
            );
        }
        assert!(make_beneath(&fd, Path::new("data/sub/f"), true).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // Plain dirs and files are made as asked.
        let h = make_beneath(&fd, Path::new("a/b/c"), false).unwrap();
        assert_eq!(m::file_type(&h).unwrap(), libc::S_IFDIR);
        let h = make_beneath(&fd, Path::new("a/b/f"), true).unwrap();
        assert_eq!(m::file_type(&h).unwrap(), libc::S_IFREG);
        assert!(make_beneath(&fd, Path::new("../x"), false).is_err());
    }
}
