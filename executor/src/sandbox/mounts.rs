//! The task's file system view, set up by `sandbox-init` in the task's own mount namespace.
//!
//! [`plan`] (pure) turns the spec's sandbox into a [`MountPlan`]; [`apply`] carries it out.
//! With `fs_isolation = "readonly"`:
//! 1. every mount becomes private (nothing propagates to or from the host);
//! 2. the sources of all binds are opened (`O_PATH`) while the host view is still complete;
//! 3. the whole tree is made read-only (`mount_setattr(AT_RECURSIVE)`, kernel >= 5.12; else a
//!    remount of each mount from `/proc/self/mountinfo`, keeping its other flags);
//! 4. `/tmp` becomes a private tmpfs, `/dev` a minimal one;
//! 5. hidden paths become empty tmpfs dirs and the task's own dirs are bound back at their host
//!    paths, outer paths first (a bind below a hidden path gets its mount point created in
//!    that fresh tmpfs, never on the host); writable binds get `nosuid,nodev`; then the
//!    task's own resolv.conf (Nomad's `dns {}`), written in a private tmpfs that is detached
//!    again, is bound read-only over where `/etc/resolv.conf` leads in the task's view, and
//!    in group network mode the task's `/etc/hosts` the same way (its address and hostname
//!    found here, in the task's network namespace, unless Nomad sent them);
//! 6. volumes are bound beneath the task dir; the mount point is created component by
//!    component with `O_NOFOLLOW`, so a symlink planted in the task dir is never followed;
//! 7. `/dev` gets null, zero, full, random, urandom, tty, a private devpts, `/dev/shm`,
//!    `/dev/mqueue` and the task's devices, then turns read-only;
//! 8. a fresh `/proc` (the task's PID namespace) with `kcore` and friends masked and `sys`,
//!    `sysrq-trigger`, `irq`, `bus`… read-only, as Nomad exec (runc's defaults) does; `/sys/firmware`
//!    masked;
//! 9. the hiding tmpfs mounts become read-only.
//!
//! With `"none"` only volumes, a fresh `/proc` for a private PID namespace and a private
//! `/dev/shm` for a private IPC namespace are set up.

use super::report::{Failure, Step};
use common::hosts::HostsSpec;
use common::sandbox::{relative_task_path, FsIsolation, SandboxSpec};
use nix::mount::MsFlags;
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
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
const SYS_MASKED: &[&str] = &["/sys/firmware", "/sys/devices/virtual/powercap"];
/// Size of the task's `/dev/shm` (Nomad exec's 64 MiB).
const SHM_SIZE: &str = "65536k";

/// One step of the overlay phase, at a host path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Overlay {
    /// An empty read-only dir (or `/dev/null` over a file) in its place.
    Hide { path: PathBuf },
    /// The host path bound back at the same path.
    Bind {
        path: PathBuf,
        writable: bool,
        /// Missing on the host: a failure (the task dir) or skipped (Elide's home).
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
    pub readonly_root: bool,
    pub private_tmp: bool,
    pub private_dev: bool,
    pub fresh_proc: bool,
    pub private_shm: bool,
    pub mqueue: bool,
    pub overlays: Vec<Overlay>,
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
/// hidden on top of the spec's list.
pub fn plan(s: &SandboxSpec, task_dir: &Path, shim_dirs: &[PathBuf]) -> MountPlan {
    let readonly = s.fs_isolation == FsIsolation::Readonly;
    let overlays = if readonly {
        overlays(s, shim_dirs)
    } else {
        Vec::new()
    };
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
        readonly_root: readonly,
        private_tmp: readonly,
        private_dev: readonly,
        fresh_proc: readonly || s.pid_mode.is_private(),
        private_shm: readonly || s.ipc_mode.is_private(),
        mqueue: readonly && s.ipc_mode.is_private(),
        overlays,
        task_dir: task_dir.to_path_buf(),
        volumes,
        devices,
        resolv_conf: s.dns.as_ref().filter(|_| readonly).map(|d| d.render()),
        hosts: s.hosts.clone().filter(|_| readonly),
    }
}

/// Hides and same-path binds, outer paths first; a hide below another hide is dropped unless
/// a bind between them brings its part of the tree back (`/tmp` and `/dev` count as hides).
fn overlays(s: &SandboxSpec, shim_dirs: &[PathBuf]) -> Vec<Overlay> {
    let mut binds: Vec<(PathBuf, bool, bool)> = Vec::new();
    for (p, writable, required) in s
        .writable_paths
        .iter()
        .map(|p| (p, true, true))
        .chain(s.readable_paths.iter().map(|p| (p, false, false)))
    {
        match binds.iter_mut().find(|b| b.0 == *p) {
            Some(b) => {
                b.1 |= writable;
                b.2 |= required;
            }
            None => binds.push((p.clone(), writable, required)),
        }
    }
    let mut covers: Vec<PathBuf> = vec!["/tmp".into(), "/dev".into()];
    let mut hides: Vec<PathBuf> = Vec::new();
    let mut wanted: Vec<&PathBuf> = s.hidden_paths.iter().chain(shim_dirs).collect();
    wanted.sort_by_key(|p| depth(p));
    for h in wanted {
        if hides.contains(h) || binds.iter().any(|b| b.0 == *h) {
            continue;
        }
        let covered = covers.iter().chain(hides.iter()).any(|a| {
            (above(a, h) || a == h) && !binds.iter().any(|b| above(a, &b.0) && h.starts_with(&b.0))
        });
        if !covered {
            hides.push(h.clone());
        }
    }
    covers.clear();
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

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> io::Result<()> {
    nix::mount::mount(src, target, fstype, flags, data).map_err(io::Error::from)
}

/// An `O_PATH` handle on a mount source or target; mounted through `/proc/self/fd/N`.
struct Handle(OwnedFd);

impl Handle {
    fn open(p: &Path, flags: libc::c_int) -> io::Result<Handle> {
        let c = cstr(p)?;
        // SAFETY: open of a NUL-terminated path; the fd is owned from here on.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC | flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd.
        Ok(Handle(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn at(dir: RawFd, name: &std::ffi::OsStr, flags: libc::c_int) -> io::Result<Handle> {
        let c = CString::new(name.as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: openat relative to a live dir fd.
        let fd = unsafe {
            libc::openat(
                dir,
                c.as_ptr(),
                libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW | flags,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd.
        Ok(Handle(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.0.as_raw_fd()))
    }

    fn is_dir(&self) -> bool {
        file_type(self).is_ok_and(|t| t == libc::S_IFDIR)
    }
}

/// `mount_setattr(2)`'s argument.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// Sets/clears read-only (and sets nosuid/nodev) on the mount at `path` and every mount
/// below it.
fn set_tree(path: &Path, readonly: bool, nosuid_nodev: bool) -> io::Result<()> {
    let mut attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    if readonly {
        attr.attr_set |= MOUNT_ATTR_RDONLY;
    } else {
        attr.attr_clr |= MOUNT_ATTR_RDONLY;
    }
    if nosuid_nodev {
        attr.attr_set |= MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    }
    let c = cstr(path)?;
    // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes of a live struct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            (libc::AT_RECURSIVE | libc::AT_SYMLINK_NOFOLLOW) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(e);
    }
    remount_each(path, readonly, nosuid_nodev)
}

/// The pre-5.12 way: remount every mount at or below `path`, keeping its other flags.
fn remount_each(path: &Path, readonly: bool, nosuid_nodev: bool) -> io::Result<()> {
    // thread-self: a mount namespace belongs to a thread (it is what a test unshares).
    let info = std::fs::read_to_string("/proc/thread-self/mountinfo")?;
    for (mount_point, options) in parse_mountinfo(&info) {
        if !mount_point.starts_with(path) {
            continue;
        }
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | kept_flags(&options);
        if readonly {
            flags |= MsFlags::MS_RDONLY;
        }
        if nosuid_nodev {
            flags |= MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        }
        mount(None, &mount_point, None, flags, None)?;
    }
    Ok(())
}

/// (mount point, per-mount options) of each line of `/proc/self/mountinfo`.
pub fn parse_mountinfo(info: &str) -> Vec<(PathBuf, String)> {
    info.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let mount_point = f.nth(4)?;
            let options = f.next()?;
            Some((PathBuf::from(unescape(mount_point)), options.to_owned()))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The flags a bind remount must repeat so it does not clear them (read-only is decided by
/// the caller).
fn kept_flags(options: &str) -> MsFlags {
    options.split(',').fold(MsFlags::empty(), |f, o| {
        f | match o {
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            _ => MsFlags::empty(),
        }
    })
}

fn tmpfs(path: &Path, flags: MsFlags, data: &str) -> io::Result<()> {
    mount(
        Some(Path::new("tmpfs")),
        path,
        Some("tmpfs"),
        flags,
        Some(data),
    )
}

/// Makes a tmpfs (or any mount) we created read-only, keeping nosuid/nodev/noexec.
fn seal(path: &Path, extra: MsFlags) -> io::Result<()> {
    mount(
        None,
        path,
        None,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | extra,
        None,
    )
}

const HIDE_FLAGS: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Creates `path` (a dir, or an empty file when `file`) inside the deepest of our tmpfs
/// mounts above it, unless it is there; the components are fresh dirs we make, so nothing is
/// followed.
fn make_mount_point_in(roots: &[PathBuf], path: &Path, file: bool) -> io::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir() != file) {
        return Ok(());
    }
    let root = roots
        .iter()
        .filter(|r| above(r, path))
        .max_by_key(|r| depth(r))
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
    let rel = path
        .strip_prefix(root)
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    walk_beneath(root, rel, file).map(|_| ())
}

/// Resolves `rel` beneath `base` one component at a time without following any symlink,
/// creating missing dirs (0755), and the last component as an empty file when `file`.
/// Returns an `O_PATH` handle on it.
fn walk_beneath(base: &Path, rel: &Path, file: bool) -> io::Result<Handle> {
    let mut dir = Handle::open(base, libc::O_DIRECTORY)?;
    let parts: Vec<&std::ffi::OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        })
        .collect::<io::Result<_>>()?;
    for (i, name) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let c = CString::new(name.as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        if last && file {
            // SAFETY: openat relative to a live dir fd; the created fd is closed at once.
            let fd = unsafe {
                libc::openat(
                    dir.0.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_WRONLY
                        | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if fd >= 0 {
                // SAFETY: closing the fd just opened.
                unsafe { libc::close(fd) };
            }
            let h = Handle::at(dir.0.as_raw_fd(), name, 0)?;
            // O_PATH|O_NOFOLLOW on a symlink opens the link itself: refuse it.
            return match file_type(&h)? {
                libc::S_IFLNK => Err(io::Error::from_raw_os_error(libc::ELOOP)),
                libc::S_IFDIR => Err(io::Error::from_raw_os_error(libc::EISDIR)),
                _ => Ok(h),
            };
        }
        // SAFETY: mkdirat relative to a live dir fd.
        let r = unsafe { libc::mkdirat(dir.0.as_raw_fd(), c.as_ptr(), 0o755) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
        }
        // A symlink or a file here: O_PATH|O_NOFOLLOW|O_DIRECTORY fails with ENOTDIR.
        dir = Handle::at(dir.0.as_raw_fd(), name, libc::O_DIRECTORY)?;
    }
    Ok(dir)
}

/// The `S_IFMT` bits of what a handle refers to (a symlink itself for `O_NOFOLLOW` ones).
fn file_type(h: &Handle) -> io::Result<libc::mode_t> {
    // SAFETY: an all-zero `stat` is a valid value for fstatat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat with AT_EMPTY_PATH on a live fd, into a live struct.
    let r = unsafe {
        libc::fstatat(
            h.0.as_raw_fd(),
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_mode & libc::S_IFMT)
}

fn bind(src: &Handle, target: &Path) -> io::Result<()> {
    mount(
        Some(&src.proc_path()),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// `mount --make-rprivate /`: no mount event goes to or comes from the host any more.
fn make_rprivate() -> io::Result<()> {
    mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
}

/// Carries out the plan (as root, in a new mount namespace).
pub fn apply(p: &MountPlan) -> Result<(), Failure> {
    // 1. Nothing we do may reach the host.
    make_rprivate().map_err(|e| fail("making every mount private (mount --make-rprivate /)", e))?;

    // 2. Sources, while the host view is complete.
    let mut overlay_src: Vec<Option<Handle>> = Vec::new();
    for o in &p.overlays {
        overlay_src.push(match o {
            Overlay::Hide { .. } => None,
            Overlay::Bind { path, required, .. } => match Handle::open(path, 0) {
                Ok(h) => Some(h),
                Err(_) if !required => None,
                Err(e) => return Err(fail(format!("opening {} to bind it", display(path)), e)),
            },
        });
    }
    let volume_src = p
        .volumes
        .iter()
        .map(|v| {
            Handle::open(&v.source, 0).map_err(|e| {
                fail(
                    format!(
                        "opening the host volume {} (for {})",
                        display(&v.source),
                        display(&v.dest)
                    ),
                    e,
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let device_src = p
        .devices
        .iter()
        .map(|d| {
            Handle::open(&d.source, 0)
                .map_err(|e| fail(format!("opening the device {}", display(&d.source)), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let null = Handle::open(Path::new("/dev/null"), 0).map_err(|e| fail("opening /dev/null", e))?;
    let standard_src: Vec<(&str, Option<Handle>)> = if p.private_dev {
        STANDARD_DEVICES
            .iter()
            .map(|d| (*d, Handle::open(&Path::new("/dev").join(d), 0).ok()))
            .collect()
    } else {
        Vec::new()
    };

    // 3. The host root, read-only.
    if p.readonly_root {
        set_tree(Path::new("/"), true, false)
            .map_err(|e| fail("making the host file system read-only", e))?;
    }
    // 4. Private /tmp and /dev.
    let mut tmpfs_roots: Vec<PathBuf> = Vec::new();
    for (wanted, path, flags, data) in [
        // Executable: Elide extracts its native libraries to /tmp.
        (
            p.private_tmp,
            "/tmp",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            "mode=1777",
        ),
        (
            p.private_dev,
            "/dev",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "mode=755,size=64k",
        ),
    ] {
        if wanted {
            tmpfs(Path::new(path), flags, data)
                .map_err(|e| fail(format!("mounting a private {path}"), e))?;
            tmpfs_roots.push(path.into());
        }
    }

    // 5. Hides and same-path binds.
    let mut sealed: Vec<PathBuf> = Vec::new();
    for (o, src) in p.overlays.iter().zip(overlay_src) {
        match o {
            Overlay::Hide { path } => {
                let Ok(meta) = std::fs::metadata(path) else {
                    continue; // not there (or already hidden): nothing to hide
                };
                if meta.is_dir() {
                    tmpfs(path, HIDE_FLAGS, "mode=755,size=1m")
                        .map_err(|e| fail(format!("hiding {}", display(path)), e))?;
                    tmpfs_roots.push(path.clone());
                    sealed.push(path.clone());
                } else {
                    bind(&null, path).map_err(|e| fail(format!("hiding {}", display(path)), e))?;
                }
            }
            Overlay::Bind { path, writable, .. } => {
                let Some(src) = src else { continue };
                make_mount_point_in(&tmpfs_roots, path, !src.is_dir())
                    .map_err(|e| fail(format!("creating the mount point {}", display(path)), e))?;
                bind(&src, path).map_err(|e| fail(format!("binding {}", display(path)), e))?;
                set_tree(path, !writable, *writable).map_err(|e| {
                    fail(format!("setting the access mode of {}", display(path)), e)
                })?;
            }
        }
    }

    // 5, last. The task's resolv.conf, once the binds that bring a symlinked one back are there.
    if let Some(content) = &p.resolv_conf {
        mount_file_over(
            content,
            Path::new(common::dns::RESOLV_CONF),
            Path::new("/tmp"),
            &tmpfs_roots,
            "the task's DNS config",
        )?;
    }
    if let Some(hosts) = &p.hosts {
        // None: loopback only (`network { mode = "none" }`), nothing to map.
        if let Some(content) = etc_hosts(hosts)? {
            mount_file_over(
                &content,
                Path::new(common::hosts::ETC_HOSTS),
                Path::new("/tmp"),
                &tmpfs_roots,
                "the task's hosts file",
            )?;
        }
    }

    // 6. Volumes beneath the task dir.
    for (v, src) in p.volumes.iter().zip(&volume_src) {
        let target = walk_beneath(&p.task_dir, &v.dest, !src.is_dir()).map_err(|e| {
            fail(
                format!(
                    "creating the mount point {} for the host volume {} (no symlinks are followed inside the task dir)",
                    display(&v.dest),
                    display(&v.source)
                ),
                e,
            )
        })?;
        bind(src, &target.proc_path()).map_err(|e| {
            fail(
                format!(
                    "binding the host volume {} at {}",
                    display(&v.source),
                    display(&v.dest)
                ),
                e,
            )
        })?;
        let at = p.task_dir.join(&v.dest);
        set_tree(&at, v.read_only, true).map_err(|e| {
            fail(
                format!("setting the access mode of the volume at {}", display(&at)),
                e,
            )
        })?;
    }

    // 7. /dev.
    let dev = Path::new("/dev");
    if p.private_dev {
        for (name, src) in &standard_src {
            let Some(src) = src else { continue };
            device_bind(dev, Path::new(name), src, true)?;
        }
        for (d, src) in p.devices.iter().zip(&device_src) {
            device_bind(dev, &d.dest, src, d.writable)?;
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
        ] {
            std::os::unix::fs::symlink(target, dev.join(link))
                .map_err(|e| fail(format!("creating /dev/{link}"), e))?;
        }
        let pts = dev.join("pts");
        std::fs::create_dir(&pts).map_err(|e| fail("creating /dev/pts", e))?;
        mount(
            Some(Path::new("devpts")),
            &pts,
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        )
        .map_err(|e| fail("mounting a private /dev/pts", e))?;
        std::fs::create_dir(dev.join("shm")).map_err(|e| fail("creating /dev/shm", e))?;
        if p.mqueue {
            let mq = dev.join("mqueue");
            std::fs::create_dir(&mq).map_err(|e| fail("creating /dev/mqueue", e))?;
            mount(
                Some(Path::new("mqueue")),
                &mq,
                Some("mqueue"),
                HIDE_FLAGS,
                None,
            )
            .map_err(|e| fail("mounting /dev/mqueue", e))?;
        }
    }
    if p.private_shm {
        let shm = dev.join("shm");
        if shm.is_dir() {
            tmpfs(&shm, HIDE_FLAGS, &format!("mode=1777,size={SHM_SIZE}"))
                .map_err(|e| fail("mounting a private /dev/shm", e))?;
        }
    }
    if p.private_dev {
        seal(dev, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC)
            .map_err(|e| fail("making /dev read-only", e))?;
    }

    // 8. /proc of the task's PID namespace, and the kernel's knobs out of reach.
    if p.fresh_proc {
        let proc_ = Path::new("/proc");
        mount(
            Some(Path::new("proc")),
            proc_,
            Some("proc"),
            HIDE_FLAGS,
            None,
        )
        .map_err(|e| fail("mounting /proc for the task's PID namespace", e))?;
        for name in PROC_MASKED {
            mask(&proc_.join(name), &null)?;
        }
        for name in PROC_READONLY {
            let path = proc_.join(name);
            if std::fs::symlink_metadata(&path).is_err() {
                continue;
            }
            let h = Handle::open(&path, 0)
                .map_err(|e| fail(format!("opening {}", display(&path)), e))?;
            bind(&h, &path).map_err(|e| fail(format!("binding {}", display(&path)), e))?;
            seal(&path, HIDE_FLAGS)
                .map_err(|e| fail(format!("making {} read-only", display(&path)), e))?;
        }
    }
    if p.readonly_root {
        for path in SYS_MASKED {
            mask(Path::new(path), &null)?;
        }
    }

    // 9. The hiding dirs, read-only.
    for path in sealed {
        seal(&path, HIDE_FLAGS)
            .map_err(|e| fail(format!("making {} read-only", display(&path)), e))?;
    }
    Ok(())
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

/// Where a resolver opening `link` (`/etc/resolv.conf`) ends up in this mount namespace.
/// A symlink whose target is gone (below a hidden dir) gets its target created as an empty
/// file in our tmpfs above it; a missing file is an error (the host root is read-only).
fn mount_target(link: &Path, tmpfs_roots: &[PathBuf]) -> io::Result<PathBuf> {
    if let Ok(t) = std::fs::canonicalize(link) {
        return Ok(t);
    }
    let to = std::fs::read_link(link)?;
    let mut target = link.parent().unwrap_or(Path::new("/")).to_path_buf();
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
    make_mount_point_in(tmpfs_roots, &target, true)?;
    Ok(target)
}

/// Mounts `content` (`what`, for errors) read-only over where `link` leads. The file is written by us (root, before
/// the task runs) into a fresh tmpfs on a 0700 dir made in `stage_in` (the private `/tmp`);
/// that tmpfs is detached again once bound, so the only way to the file is the read-only
/// bind: nothing the task controls is ever written through.
fn mount_file_over(
    content: &str,
    link: &Path,
    stage_in: &Path,
    tmpfs_roots: &[PathBuf],
    what: &str,
) -> Result<(), Failure> {
    let target = mount_target(link, tmpfs_roots).map_err(|e| {
        fail(
            format!(
                "finding {} to mount {what} over (the host needs one, even empty)",
                display(link)
            ),
            e,
        )
    })?;
    if std::fs::metadata(&target).is_ok_and(|m| m.is_dir()) {
        return Err(fail(
            format!("{} is a directory, not a file", display(&target)),
            io::Error::from_raw_os_error(libc::EISDIR),
        ));
    }
    let name = link.file_name().unwrap_or(std::ffi::OsStr::new("file"));
    let stage = stage_in.join(format!(".elide-stage-{}", std::process::id()));
    let staged = (|| {
        std::fs::DirBuilder::new().mode(0o700).create(&stage)?;
        // Room for the content (a job's dns block, the node's /etc/hosts), page-rounded.
        let size = (content.len() / 4096 + 2) * 4096;
        tmpfs(&stage, HIDE_FLAGS, &format!("mode=700,size={size}"))?;
        let file = stage.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&file)?
            .write_all(content.as_bytes())?;
        let src = Handle::open(&file, 0)?;
        bind(&src, &target)?;
        seal(&target, HIDE_FLAGS)
    })();
    // Detached whatever happened: the bind keeps the file alive on its own.
    let _ = nix::mount::umount2(&stage, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(&stage);
    staged.map_err(|e| fail(format!("mounting {what} over {}", display(&target)), e))
}

/// An empty read-only dir, or /dev/null, in place of `path` (if it exists).
fn mask(path: &Path, null: &Handle) -> Result<(), Failure> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let r = if meta.is_dir() {
        tmpfs(path, HIDE_FLAGS | MsFlags::MS_RDONLY, "mode=755,size=4k")
    } else {
        bind(null, path).and_then(|_| seal(path, HIDE_FLAGS))
    };
    r.map_err(|e| fail(format!("masking {}", display(path)), e))
}

fn device_bind(dev: &Path, dest: &Path, src: &Handle, writable: bool) -> Result<(), Failure> {
    let at = dev.join(dest);
    let target = walk_beneath(dev, dest, !src.is_dir())
        .map_err(|e| fail(format!("creating {}", display(&at)), e))?;
    bind(src, &target.proc_path())
        .map_err(|e| fail(format!("binding the device {}", display(&at)), e))?;
    if writable {
        // The source came from the host /dev, which step 3 made read-only.
        set_tree(&at, false, false)
            .map_err(|e| fail(format!("making {} writable", display(&at)), e))?;
    }
    Ok(())
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
            readable_paths: vec!["/opt/elide".into()],
            hidden_paths: vec![
                "/var/lib/nomad/alloc".into(),
                "/var/lib/nomad".into(),
                "/run/nomad-driver-elide".into(),
                "/var/lib/nomad/alloc/a1/web/private".into(),
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

    #[test]
    fn outer_paths_first_and_redundant_hides_dropped() {
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
                "hide /run/nomad-driver-elide",
                "bind-ro /opt/elide",
                "hide /var/lib/nomad",
                "bind-rw /var/lib/nomad/alloc/a1/web",
                "bind-rw /var/lib/nomad/alloc/a1/alloc",
                // Inside the task dir bind, so it needs its own hide.
                "hide /var/lib/nomad/alloc/a1/web/private",
            ]
        );
        assert!(p.readonly_root && p.private_tmp && p.private_dev && p.fresh_proc);
        assert!(p.private_shm && p.mqueue);
    }

    #[test]
    fn hides_below_tmp_are_already_hidden_unless_a_bind_brings_them_back() {
        let s = SandboxSpec {
            writable_paths: vec!["/tmp/t/data/alloc/a1/web".into()],
            hidden_paths: vec![
                "/tmp/t/data".into(),
                "/tmp/nde-1".into(),
                "/tmp/t/data/alloc/a1/web/private".into(),
            ],
            ..Default::default()
        };
        let p = plan(&s, Path::new("/tmp/t/data/alloc/a1/web"), &[]);
        assert_eq!(
            ops(&p),
            [
                "bind-rw /tmp/t/data/alloc/a1/web",
                "hide /tmp/t/data/alloc/a1/web/private"
            ]
        );
    }

    /// An operator's absolute_script_dirs entry (a readable path) is bound back into the
    /// private /tmp and below a hidden dir, read-only, while hides below it still apply.
    #[test]
    fn readable_paths_come_back_in_the_private_tmp_and_below_hidden_dirs() {
        let mut s = spec();
        s.readable_paths = vec![
            "/opt/elide".into(),
            "/tmp/pytest-of-root/allowed0/apps".into(),
            "/var/lib/apps".into(),
            "/srv/apps".into(),
        ];
        s.hidden_paths.extend([
            "/var/lib".into(),
            "/tmp/pytest-of-root".into(),
            "/srv/apps/keys".into(),
        ]);
        let p = plan(&s, Path::new("/var/lib/nomad/alloc/a1/web"), &[]);
        assert_eq!(
            ops(&p),
            [
                "hide /run/nomad-driver-elide",
                "hide /var/lib",
                "bind-ro /opt/elide",
                "bind-ro /srv/apps",
                // After the bind it is below.
                "hide /srv/apps/keys",
                // After the hide it is below (made in its tmpfs).
                "bind-ro /var/lib/apps",
                // After the private /tmp (made in it); /tmp/pytest-of-root needs no hide.
                "bind-ro /tmp/pytest-of-root/allowed0/apps",
                "bind-rw /var/lib/nomad/alloc/a1/web",
                "bind-rw /var/lib/nomad/alloc/a1/alloc",
                "hide /var/lib/nomad/alloc/a1/web/private",
            ]
        );
        assert!(p.private_tmp);
        // Missing on the host: skipped, never a failed start.
        assert!(p.overlays.iter().all(|o| !matches!(
            o,
            Overlay::Bind {
                writable: false,
                required: true,
                ..
            }
        )));
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
        assert!(!p.readonly_root && !p.private_tmp && !p.private_dev && !p.mqueue);
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

    /// Both ways of changing a whole tree (mount_setattr, and the remount of each mount that
    /// kernels before 5.12 need), in a mount namespace of this test's thread only.
    #[test]
    fn a_tree_turns_read_only_and_back_with_submounts_and_both_methods() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().to_path_buf();
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            make_rprivate().unwrap();
            tmpfs(&top, MsFlags::empty(), "size=1m").unwrap();
            let sub = top.join("sub");
            std::fs::create_dir(&sub).unwrap();
            tmpfs(&sub, MsFlags::empty(), "size=1m").unwrap();
            let writable = |p: &Path| std::fs::write(p.join("f"), "x").is_ok();
            let flags_of = |p: &Path| {
                let info = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
                parse_mountinfo(&info)
                    .into_iter()
                    .rfind(|(m, _)| m == p)
                    .map(|(_, o)| o)
                    .unwrap()
            };
            for legacy in [false, true] {
                let set = |ro: bool, extra: bool| {
                    if legacy {
                        remount_each(&top, ro, extra)
                    } else {
                        set_tree(&top, ro, extra)
                    }
                };
                set(true, false).unwrap();
                assert!(!writable(&top) && !writable(&sub), "legacy={legacy}");
                set(false, true).unwrap();
                assert!(writable(&top) && writable(&sub), "legacy={legacy}");
                assert!(flags_of(&sub).contains("nosuid") && flags_of(&sub).contains("nodev"));
            }
        })
        .join()
        .unwrap();
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

    /// Nomad's values are used as they are; else the namespace's address and the hostname;
    /// a namespace with loopback only (`network { mode = "none" }`) gets no hosts file.
    #[test]
    fn etc_hosts_takes_nomads_values_or_the_network_namespaces() {
        let given = HostsSpec {
            hostname: Some("a1b2c3d4e5f6".into()),
            address: Some("172.26.64.5".into()),
        };
        let text = etc_hosts(&given).unwrap().unwrap();
        assert!(text.ends_with("\n172.26.64.5 a1b2c3d4e5f6\n"), "{text}");
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: a network namespace needs root");
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

    /// The resolv.conf goes over where a symlinked one leads (systemd-resolved's), also when
    /// that target is below a hidden dir; read-only; the host file and the staging dir are
    /// untouched / gone afterwards.
    #[test]
    fn resolv_conf_is_mounted_read_only_through_symlinks_and_the_host_file_stays() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().to_path_buf();
        let etc = top.join("etc");
        let stage = top.join("tmp");
        let hidden = top.join("run");
        for d in [&etc, &stage, &hidden] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(etc.join("real.conf"), "nameserver 10.255.255.53\n").unwrap();
        std::os::unix::fs::symlink("real.conf", etc.join("resolv.conf")).unwrap();
        std::os::unix::fs::symlink("../run/resolve/stub.conf", etc.join("dangling.conf")).unwrap();
        let content = "nameserver 10.9.8.7\n";
        let t = top.clone();
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            make_rprivate().unwrap();
            let (etc, stage, hidden) = (t.join("etc"), t.join("tmp"), t.join("run"));
            mount_file_over(content, &etc.join("resolv.conf"), &stage, &[], "dns").unwrap();
            assert_eq!(
                std::fs::read_to_string(etc.join("resolv.conf")).unwrap(),
                content
            );
            assert_eq!(
                std::fs::read_to_string(etc.join("real.conf")).unwrap(),
                content
            );
            let w = std::fs::OpenOptions::new()
                .write(true)
                .open(etc.join("resolv.conf"))
                .unwrap_err();
            assert_eq!(w.raw_os_error(), Some(libc::EROFS));
            assert_eq!(
                std::fs::read_dir(&stage).unwrap().count(),
                0,
                "staging left behind"
            );
            // A target below a hidden dir (our tmpfs): created there, never on the host.
            tmpfs(&hidden, MsFlags::empty(), "size=1m").unwrap();
            mount_file_over(
                content,
                &etc.join("dangling.conf"),
                &stage,
                std::slice::from_ref(&hidden),
                "dns",
            )
            .unwrap();
            assert_eq!(
                std::fs::read_to_string(etc.join("dangling.conf")).unwrap(),
                content
            );
            // No file to mount over: the error says what is missing.
            let e = mount_file_over(content, &etc.join("missing.conf"), &stage, &[], "dns")
                .unwrap_err()
                .detail;
            assert!(e.contains("missing.conf"), "{e}");
        })
        .join()
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(etc.join("resolv.conf")).unwrap(),
            "nameserver 10.255.255.53\n"
        );
        assert!(!top.join("run/resolve").exists());
        assert_eq!(std::fs::read_dir(&stage).unwrap().count(), 0);
    }

    #[test]
    fn mountinfo_lines_give_mount_points_and_their_flags() {
        let info = "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n\
                    30 22 0:40 / /mnt/with\\040space ro,noatime - tmpfs tmpfs rw\n";
        let m = parse_mountinfo(info);
        assert_eq!(m[0].0, Path::new("/proc"));
        assert_eq!(m[1].0, Path::new("/mnt/with space"));
        let f = kept_flags(&m[0].1);
        assert!(f.contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC));
        assert!(!f.contains(MsFlags::MS_RDONLY));
        assert!(kept_flags(&m[1].1).contains(MsFlags::MS_NOATIME));
        assert!(!kept_flags(&m[1].1).contains(MsFlags::MS_RDONLY));
    }
}
