//! Finding and making mount points and sources as fds: beneath a dir fd without following a
//! symlink (mount points, entries to hide), or a detached copy of a host tree.

use super::sys as m;
use common::beneath::{self, Walk};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// `p` without its leading `/` (what `openat2` beneath the new root takes).
pub(super) fn rel(p: &Path) -> &Path {
    p.strip_prefix("/").unwrap_or(p)
}

/// A detached copy of the host tree at `path` with `attrs` set on every mount of it.
/// `strict` (the task's own dirs): the last component is never a symlink (`ELOOP`); the
/// dirs above it are Nomad's (its data dir, the root-owned alloc dir: no task writes there),
/// whose symlinks an operator may use. Else the host's own symlinks are followed.
pub(super) fn host_tree(
    path: &Path,
    strict: bool,
    recursive: bool,
    attrs: u64,
) -> io::Result<OwnedFd> {
    let at = m::open_path(path, if strict { libc::O_NOFOLLOW } else { 0 })?;
    let tree = m::clone_tree(at.as_raw_fd(), Path::new(""), recursive)?;
    m::set_attr(&tree, recursive, attrs, 0)?;
    Ok(tree)
}

/// An `O_PATH` fd on `rel` beneath `base`, creating what is missing (dirs 0755, the last
/// component as an empty file when `file`), one component at a time, never following a
/// symlink (`ELOOP`/`ENOTDIR`; [`beneath::walk_beneath`]): a task swapping a component
/// meanwhile only makes this fail.
/// Where `base` is a read-only bind nothing can be created (`EROFS`): mount points are only
/// ever made in our own tmpfs mounts or in the task's writable dirs.
pub(super) fn make_beneath(base: &OwnedFd, rel: &Path, file: bool) -> io::Result<OwnedFd> {
    let parts: Vec<PathBuf> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(PathBuf::from(n)),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        })
        .collect::<io::Result<_>>()?;
    if parts.is_empty() {
        return m::open_beneath(base, Path::new("."), libc::O_DIRECTORY);
    }
    let h = beneath::walk_beneath(base, Path::new(""), &parts, Walk::mount_point(file))?;
    if file && m::file_type(&h)? == libc::S_IFDIR {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    Ok(h)
}

/// An existing entry `rel` beneath `base` (no symlink followed); None when it is missing or
/// a symlink (nothing to hide there: a symlink leads into the view's own files).
pub(super) fn existing_beneath(base: &OwnedFd, rel: &Path) -> io::Result<Option<OwnedFd>> {
    match m::open_beneath(base, rel, 0) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ELOOP)) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(super) fn readlink_at(dir: &OwnedFd, name: &OsStr) -> io::Result<PathBuf> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
