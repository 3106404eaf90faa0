//! Thin wrappers over the file-descriptor mount API the sandbox is built with: `open_tree`,
//! `move_mount`, `fsopen`/`fsconfig`/`fsmount` (Linux 5.2), `openat2` (5.6), `mount_setattr`
//! (5.12), `pivot_root` and `mount(MS_PRIVATE)`. Every mount the sandbox makes acts on an fd
//! that was obtained without following a symlink a task could have planted, never on a path
//! looked up again later (issue #18, item 1). Kernels without these calls get
//! [`needs_kernel`]'s error.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
/// nosuid, nodev, noexec: what every mount of ours that holds no programs gets.
pub const MOUNT_ATTR_INERT: u64 = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// The error for a kernel without the fd-based mount API (`ENOSYS`).
pub fn needs_kernel(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ENOSYS) {
        io::Error::other(
            "this kernel lacks the fd-based mount API (open_tree, move_mount, fsopen, openat2, mount_setattr); \
             fs_isolation = \"readonly\" needs Linux >= 5.12: upgrade the kernel or set the plugin's fs_isolation = \"none\"",
        )
    } else {
        e
    }
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn fd_of(r: libc::c_long) -> io::Result<OwnedFd> {
    if r < 0 {
        return Err(needs_kernel(io::Error::last_os_error()));
    }
    // SAFETY: the syscall returned a fresh fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

fn ok(r: libc::c_long) -> io::Result<()> {
    if r < 0 {
        return Err(needs_kernel(io::Error::last_os_error()));
    }
    Ok(())
}

/// A detached copy of the mount tree at `path` (relative to `dir`; `""` for `dir` itself),
/// `recursive` with its submounts. The last component is not followed.
pub fn clone_tree(dir: RawFd, path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    flags |= libc::AT_SYMLINK_NOFOLLOW as libc::c_uint;
    if path.as_os_str().is_empty() {
        flags |= libc::AT_EMPTY_PATH as libc::c_uint;
    }
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: a NUL-terminated path and a live (or AT_FDCWD) dir fd.
    fd_of(unsafe { libc::syscall(libc::SYS_open_tree, dir, c.as_ptr(), flags) })
}

/// Sets (`set`) and clears (`clear`) `MOUNT_ATTR_*` on the mount `fd` refers to (a detached
/// tree or an attached mount), and on every mount below it when `recursive`.
pub fn set_attr(fd: &OwnedFd, recursive: bool, set: u64, clear: u64) -> io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes of a live struct.
    ok(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
}

/// Attaches the detached tree `tree` on the file or dir `target` is an `O_PATH` fd of.
pub fn attach(tree: &OwnedFd, target: &OwnedFd) -> io::Result<()> {
    // SAFETY: two live fds and empty paths.
    ok(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })
}

/// A new, detached file system (`tmpfs`, `proc`, `devpts`, `mqueue`) with `options`
/// (`(key, None)` is a flag) and the `MOUNT_ATTR_*` in `attrs`.
pub fn new_fs(fstype: &str, options: &[(&str, Option<&str>)], attrs: u64) -> io::Result<OwnedFd> {
    let t = cstr(OsStr::new(fstype))?;
    // SAFETY: a NUL-terminated name.
    let ctx = fd_of(unsafe { libc::syscall(libc::SYS_fsopen, t.as_ptr(), FSOPEN_CLOEXEC) })?;
    for (key, value) in options {
        let k = cstr(OsStr::new(key))?;
        let v = value.map(|v| cstr(OsStr::new(v))).transpose()?;
        let (cmd, vp) = match &v {
            Some(v) => (FSCONFIG_SET_STRING, v.as_ptr()),
            None => (FSCONFIG_SET_FLAG, std::ptr::null()),
        };
        // SAFETY: a live fs context, NUL-terminated key and value (or null for a flag).
        ok(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                ctx.as_raw_fd(),
                cmd,
                k.as_ptr(),
                vp,
                0 as libc::c_int,
            )
        })
        .map_err(|e| io::Error::new(e.kind(), format!("{fstype} option {key}: {e}")))?;
    }
    // SAFETY: a live fs context.
    ok(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            ctx.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0 as libc::c_int,
        )
    })?;
    // SAFETY: a live, created fs context.
    fd_of(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            ctx.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            attrs as libc::c_uint,
        )
    })
}

/// `openat2(2)` with `O_CLOEXEC` added.
fn openat2(dir: RawFd, path: &Path, flags: libc::c_int, resolve: u64) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    /// `struct open_how` (libc's is non-exhaustive).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: a NUL-terminated path, a live dir fd and a live `open_how`.
    fd_of(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })
}

/// An `O_PATH` fd on `rel` beneath `dir`: no `..` out of it, no symlink anywhere (the last
/// component included: `ELOOP`). Crossing into mounts below `dir` is fine.
pub fn open_beneath(dir: &OwnedFd, rel: &Path, extra: libc::c_int) -> io::Result<OwnedFd> {
    openat2(
        dir.as_raw_fd(),
        rel,
        // No O_NOFOLLOW: with it, a trailing symlink would be opened itself (O_PATH);
        // without it RESOLVE_NO_SYMLINKS refuses it (ELOOP).
        libc::O_PATH | extra,
        RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    )
}

/// An `O_PATH` fd on `rel` as a process whose root is `root` would find it (symlinks
/// followed, but never out of `root`).
pub fn open_in_root(root: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    openat2(
        root.as_raw_fd(),
        rel,
        libc::O_PATH,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    )
}

/// An `O_PATH` fd on a path, following symlinks unless `extra` has `O_NOFOLLOW` (for paths
/// only the host's root controls).
pub fn open_path(path: &Path, extra: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: open of a NUL-terminated path; the fd is owned from here on.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC | extra) };
    let fd = fd_of(fd as libc::c_long)?;
    // O_PATH | O_NOFOLLOW opens a symlink itself: refuse it.
    if extra & libc::O_NOFOLLOW != 0 && file_type(&fd)? == libc::S_IFLNK {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    Ok(fd)
}

/// `symlinkat`.
pub fn symlink_at(target: &Path, dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let t = cstr(target.as_os_str())?;
    let n = cstr(name)?;
    // SAFETY: NUL-terminated strings and a live dir fd.
    if unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The `stat` of what an fd refers to (a symlink itself for `O_NOFOLLOW` ones).
pub fn stat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value for fstatat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat with AT_EMPTY_PATH on a live fd, into a live struct.
    let r = unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// The `S_IFMT` bits of what an fd refers to.
pub fn file_type(fd: &OwnedFd) -> io::Result<libc::mode_t> {
    stat(fd).map(|s| s.st_mode & libc::S_IFMT)
}

/// Makes the mount `root` (an fd on its root dir) this process's `/`, with nothing of the old
/// root left reachable: `pivot_root(".", ".")` then a lazy unmount of the old root stacked
/// below (runc's way, no put-old dir needed).
pub fn pivot_into(root: &OwnedFd) -> io::Result<()> {
    // SAFETY: fchdir on a live dir fd.
    if unsafe { libc::fchdir(root.as_raw_fd()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two NUL-terminated paths.
    ok(unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) })?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::chdir(c"/".as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `mount --make-rprivate /`: no mount event goes to or comes from the host any more.
pub fn make_rprivate() -> io::Result<()> {
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(io::Error::from)
}
