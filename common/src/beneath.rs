//! Opening a path from a job *beneath* the directory it must stay in, the way the kernel
//! means it: no `..`, no symlink (not even one that stays inside), no magic link, whatever
//! the task did to its own files in between. The result is an open fd, so every later check
//! or change (`fstat`, `fchmod`) is about the file that was vetted, never about whatever a
//! path names a moment later.
//!
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (Linux 5.6) does it in one call; on
//! older kernels (`ENOSYS`) the same rules are enforced by a walk, one `openat(O_NOFOLLOW)`
//! per component.

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// Why a path could not be opened beneath its directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BeneathError {
    #[error("is empty")]
    Empty,
    #[error("leads outside {base} (\"..\")")]
    Escapes { base: PathBuf },
    #[error("is a symlink or passes through one ({at}); symlinks are not followed, name the file itself")]
    Symlink { at: PathBuf },
    #[error("does not exist ({at} is missing)")]
    Missing { at: PathBuf },
    #[error("goes through {at}, which is not a directory")]
    NotADirectory { at: PathBuf },
    #[error("cannot be opened: {errno} ({at})")]
    Io { at: PathBuf, errno: Errno },
}

/// The components of `rel` if it stays beneath its base by its text alone: plain names only
/// (`.` is dropped; `..`, a root or a prefix are refused).
pub fn plain_components(rel: &Path, base: &Path) -> Result<Vec<PathBuf>, BeneathError> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => parts.push(PathBuf::from(n)),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(BeneathError::Escapes { base: base.into() })
            }
        }
    }
    if parts.is_empty() {
        return Err(BeneathError::Empty);
    }
    Ok(parts)
}

/// Opens `base/rel` for reading without following any symlink and without leaving `base`.
/// `base` itself comes from Nomad or the operator and is opened as it is. Opens with
/// `O_NONBLOCK | O_NOCTTY`, so a FIFO or a terminal planted under the name cannot block or
/// become a controlling terminal; callers `fstat` the fd to see what it is.
pub fn open_beneath(base: &Path, rel: &Path) -> Result<OwnedFd, BeneathError> {
    let parts = plain_components(rel, base)?;
    let dir = open_dir(base)?;
    let clean: PathBuf = parts.iter().collect();
    match openat2_beneath(&dir, &clean) {
        Err(Errno::ENOSYS) => walk_beneath(&dir, base, &parts),
        Err(e) => Err(classify(&dir, base, &parts, e)),
        Ok(fd) => Ok(fd),
    }
}

const FILE_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

fn open_dir(base: &Path) -> Result<OwnedFd, BeneathError> {
    nix::fcntl::open(
        base,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(owned)
    .map_err(|errno| match errno {
        Errno::ENOENT => BeneathError::Missing { at: base.into() },
        Errno::ENOTDIR => BeneathError::NotADirectory { at: base.into() },
        errno => BeneathError::Io {
            at: base.into(),
            errno,
        },
    })
}

fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: a fresh fd from the kernel, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn openat2_beneath(dir: &OwnedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new().flags(FILE_FLAGS).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    );
    // EAGAIN: a rename raced the lookup; the kernel asks to try again.
    let mut tries = 0;
    loop {
        match nix::fcntl::openat2(dir.as_raw_fd(), rel, how) {
            Err(Errno::EAGAIN) if tries < 8 => tries += 1,
            r => return r.map(owned),
        }
    }
}

/// The same rules without openat2: each directory opened `O_NOFOLLOW` from the previous one.
pub fn walk_beneath(
    dir: &OwnedFd,
    base: &Path,
    parts: &[PathBuf],
) -> Result<OwnedFd, BeneathError> {
    let (last, dirs) = parts.split_last().ok_or(BeneathError::Empty)?;
    let mut at = base.to_path_buf();
    let mut current: Option<OwnedFd> = None;
    for d in dirs {
        let parent = current.as_ref().unwrap_or(dir);
        at.push(d);
        let next = nix::fcntl::openat(
            Some(parent.as_raw_fd()),
            d.as_path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(owned)
        .map_err(|e| explain(parent, d, &at, e))?;
        current = Some(next);
    }
    let parent = current.as_ref().unwrap_or(dir);
    at.push(last);
    nix::fcntl::openat(
        Some(parent.as_raw_fd()),
        last.as_path(),
        FILE_FLAGS,
        Mode::empty(),
    )
    .map(owned)
    .map_err(|e| explain(parent, last, &at, e))
}

/// Names the component openat2 stopped at (it reports only an errno): the walk, run on the
/// same tree, finds it; when the tree changed in between, the errno alone has to do.
fn classify(dir: &OwnedFd, base: &Path, parts: &[PathBuf], errno: Errno) -> BeneathError {
    match walk_beneath(dir, base, parts) {
        Err(e) => e,
        Ok(_) => BeneathError::Io {
            at: parts.iter().fold(base.to_path_buf(), |p, c| p.join(c)),
            errno,
        },
    }
}

/// An openat error on `name` (in `parent`, known to the user as `at`), in words.
fn explain(parent: &OwnedFd, name: &Path, at: &Path, errno: Errno) -> BeneathError {
    let is_symlink = || {
        nix::sys::stat::fstatat(
            Some(parent.as_raw_fd()),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
    };
    let at = at.to_path_buf();
    match errno {
        Errno::ELOOP => BeneathError::Symlink { at },
        Errno::ENOTDIR if is_symlink() => BeneathError::Symlink { at },
        Errno::ENOTDIR => BeneathError::NotADirectory { at },
        Errno::ENOENT => BeneathError::Missing { at },
        errno => BeneathError::Io { at, errno },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    type Opener = fn(&Path, &Path) -> Result<OwnedFd, BeneathError>;
    type Expect = fn(&BeneathError) -> bool;

    /// The walk alone, as on a kernel without openat2.
    fn walk_only(base: &Path, rel: &Path) -> Result<OwnedFd, BeneathError> {
        let parts = plain_components(rel, base)?;
        walk_beneath(&open_dir(base)?, base, &parts)
    }

    const OPENERS: [(&str, Opener); 2] = [("openat2", open_beneath), ("walk", walk_only)];

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base");
        std::fs::create_dir_all(base.join("local/sub")).unwrap();
        std::fs::write(base.join("local/sub/app.py"), "x").unwrap();
        std::fs::write(t.path().join("outside.py"), "x").unwrap();
        symlink(t.path().join("outside.py"), base.join("local/abs.py")).unwrap();
        symlink("sub/app.py", base.join("local/inside.py")).unwrap();
        symlink("..", base.join("local/up")).unwrap();
        symlink("sub", base.join("local/subdir")).unwrap();
        t
    }

    #[test]
    fn plain_files_open_and_every_way_out_is_refused_by_both_resolvers() {
        let t = tree();
        let base = t.path().join("base");
        for (name, open) in OPENERS {
            let ok = open(&base, Path::new("./local//sub/app.py"));
            assert!(ok.is_ok(), "{name}: {ok:?}");
            let cases: [(&str, Expect); 8] = [
                ("../outside.py", |e| {
                    matches!(e, BeneathError::Escapes { .. })
                }),
                ("local/../../outside.py", |e| {
                    matches!(e, BeneathError::Escapes { .. })
                }),
                ("/etc/passwd", |e| matches!(e, BeneathError::Escapes { .. })),
                ("local/abs.py", |e| {
                    matches!(e, BeneathError::Symlink { .. })
                }),
                ("local/inside.py", |e| {
                    matches!(e, BeneathError::Symlink { .. })
                }),
                ("local/up/outside.py", |e| {
                    matches!(e, BeneathError::Symlink { .. })
                }),
                ("local/subdir/app.py", |e| {
                    matches!(e, BeneathError::Symlink { .. })
                }),
                ("local/sub/app.py/x", |e| {
                    matches!(e, BeneathError::NotADirectory { .. })
                }),
            ];
            for (rel, want) in cases {
                let e = open(&base, Path::new(rel)).unwrap_err();
                assert!(want(&e), "{name} {rel}: {e:?}");
            }
            let e = open(&base, Path::new("local/nope.py")).unwrap_err();
            assert_eq!(
                e,
                BeneathError::Missing {
                    at: base.join("local/nope.py")
                },
                "{name}"
            );
            assert_eq!(
                open(&base, Path::new(".")).unwrap_err(),
                BeneathError::Empty
            );
        }
    }

    #[test]
    fn errors_name_the_component_that_stopped_the_lookup() {
        let t = tree();
        let base = t.path().join("base");
        let e = open_beneath(&base, Path::new("local/up/outside.py")).unwrap_err();
        assert_eq!(
            e,
            BeneathError::Symlink {
                at: base.join("local/up")
            }
        );
        assert!(e.to_string().contains("symlinks are not followed"), "{e}");
    }

    #[test]
    fn a_fifo_opens_without_blocking() {
        let t = tree();
        let base = t.path().join("base");
        nix::unistd::mkfifo(&base.join("f.py"), Mode::from_bits_truncate(0o644)).unwrap();
        for (name, open) in OPENERS {
            let fd = open(&base, Path::new("f.py")).unwrap();
            let st = nix::sys::stat::fstat(fd.as_raw_fd()).unwrap();
            assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFIFO, "{name}");
        }
    }
}
