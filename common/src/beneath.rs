//! Opening a path from a job *beneath* the directory it must stay in, the way the kernel
//! means it: no `..`, no symlink (not even one that stays inside), no magic link, whatever
//! the task did to its own files in between. The result is an open fd, so every later check
//! or change (`fstat`, `fchmod`) is about the file that was vetted, never about whatever a
//! path names a moment later.
//!
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (Linux 5.6) does it in one call; on
//! older kernels (`ENOSYS`) the same rules are enforced by a walk, one `openat(O_NOFOLLOW)`
//! per component. The walk ([`walk_beneath`]) also makes what is missing on the way: the
//! sandbox's mount points (dirs, or an empty file for a file's bind) in the task's dirs and in
//! its own tmpfs mounts, where a task swapping a component for a symlink meanwhile only makes
//! it fail.

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

impl BeneathError {
    /// The errno a plain `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` would have failed
    /// with (`ELOOP` for a symlink), for callers that report `io::Error`s.
    pub fn errno(&self) -> Errno {
        match self {
            BeneathError::Empty | BeneathError::Escapes { .. } => Errno::EINVAL,
            BeneathError::Symlink { .. } => Errno::ELOOP,
            BeneathError::Missing { .. } => Errno::ENOENT,
            BeneathError::NotADirectory { .. } => Errno::ENOTDIR,
            BeneathError::Io { errno, .. } => *errno,
        }
    }
}

impl From<BeneathError> for std::io::Error {
    fn from(e: BeneathError) -> Self {
        std::io::Error::from_raw_os_error(e.errno() as i32)
    }
}

/// What [`walk_beneath`] does on its way: which missing components it makes, and how it opens
/// the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    /// Make what is missing: every dir on the way (mode 0755 less the umask) and the last
    /// component, an empty file (0644) with `last_is_file`, else a dir. An existing entry is
    /// kept (and must still be no symlink).
    pub create: bool,
    /// The last component is (or is made as) a file, not a dir.
    pub last_is_file: bool,
    /// The last component is opened `O_PATH` (an fd to mount on or `fstat`), not for reading.
    pub path_only: bool,
}

impl Walk {
    /// Open an existing entry for reading ([`open_beneath`]'s rules).
    pub const READ: Walk = Walk {
        create: false,
        last_is_file: true,
        path_only: false,
    };

    /// An `O_PATH` fd of an existing entry of any kind but a symlink (to `fstat` it, then
    /// reopen it through `/proc/self/fd`).
    pub const PATH: Walk = Walk {
        create: false,
        last_is_file: true,
        path_only: true,
    };

    /// Make a mount point (a dir, or an empty file when `file`) and what leads to it; an
    /// `O_PATH` fd of it.
    pub const fn mount_point(file: bool) -> Walk {
        Walk {
            create: true,
            last_is_file: file,
            path_only: true,
        }
    }
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
        Err(Errno::ENOSYS) => walk_beneath(&dir, base, &parts, Walk::READ),
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

/// The same rules without openat2, one component at a time: each directory opened
/// `O_PATH | O_NOFOLLOW` from the previous one (`dir` is `base`), so a symlink anywhere, even
/// one a task plants while the walk runs, stops it with [`BeneathError::Symlink`]. `how`
/// says what is made on the way and how the last component is opened.
pub fn walk_beneath(
    dir: &OwnedFd,
    base: &Path,
    parts: &[PathBuf],
    how: Walk,
) -> Result<OwnedFd, BeneathError> {
    let (last, dirs) = parts.split_last().ok_or(BeneathError::Empty)?;
    let mut at = base.to_path_buf();
    let mut current: Option<OwnedFd> = None;
    for d in dirs {
        let parent = current.as_ref().unwrap_or(dir);
        at.push(d);
        if how.create {
            make_dir(parent, d, &at)?;
        }
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
    match (how.create, how.last_is_file) {
        (true, true) => make_file(parent, last, &at)?,
        (true, false) => make_dir(parent, last, &at)?,
        (false, _) => {}
    }
    let flags = match (how.path_only, how.last_is_file) {
        (false, _) => FILE_FLAGS,
        (true, true) => OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        (true, false) => OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
    };
    let fd = nix::fcntl::openat(
        Some(parent.as_raw_fd()),
        last.as_path(),
        flags,
        Mode::empty(),
    )
    .map(owned)
    .map_err(|e| explain(parent, last, &at, e))?;
    // O_PATH | O_NOFOLLOW opens a symlink itself: refuse it.
    if how.path_only {
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|errno| BeneathError::Io {
            at: at.clone(),
            errno,
        })?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(BeneathError::Symlink { at });
        }
    }
    Ok(fd)
}

/// `mkdirat(name, 0755)` in `parent`, an existing entry being fine.
fn make_dir(parent: &OwnedFd, name: &Path, at: &Path) -> Result<(), BeneathError> {
    match nix::sys::stat::mkdirat(
        Some(parent.as_raw_fd()),
        name,
        Mode::from_bits_truncate(0o755),
    ) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(errno) => Err(BeneathError::Io {
            at: at.into(),
            errno,
        }),
    }
}

/// An empty file `name` (0644) in `parent` unless something is there (never followed).
fn make_file(parent: &OwnedFd, name: &Path, at: &Path) -> Result<(), BeneathError> {
    match nix::fcntl::openat(
        Some(parent.as_raw_fd()),
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    ) {
        Ok(fd) => {
            drop(owned(fd));
            Ok(())
        }
        Err(Errno::EEXIST) => Ok(()),
        Err(errno) => Err(BeneathError::Io {
            at: at.into(),
            errno,
        }),
    }
}

/// Names the component openat2 stopped at (it reports only an errno): the walk, run on the
/// same tree, finds it; when the tree changed in between, the errno alone has to do.
fn classify(dir: &OwnedFd, base: &Path, parts: &[PathBuf], errno: Errno) -> BeneathError {
    match walk_beneath(dir, base, parts, Walk::READ) {
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
        walk_beneath(&open_dir(base)?, base, &parts, Walk::READ)
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

    /// The sandbox's use: mount points made one component at a time beneath a dir fd, a
    /// symlink anywhere on the way never followed whatever it points at (its target stays
    /// untouched), an existing entry kept, the result an `O_PATH` fd of a dir or a file.
    #[test]
    fn mount_points_are_made_beneath_without_following_symlinks() {
        let t = tree();
        let base = t.path().join("base");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        symlink(&outside, base.join("local/out")).unwrap();
        let dir = open_dir(&base).unwrap();
        let make = |rel: &str, file: bool| {
            let parts = plain_components(Path::new(rel), &base)?;
            walk_beneath(&dir, &base, &parts, Walk::mount_point(file))
        };
        for rel in [
            "local/out/x",
            "local/out",
            "local/up/x",
            "local/subdir/new",
            "local/inside.py",
        ] {
            for file in [false, true] {
                let e = make(rel, file).unwrap_err();
                assert!(
                    matches!(e, BeneathError::Symlink { .. }),
                    "{rel} file={file}: {e:?}"
                );
                assert_eq!(std::io::Error::from(e).raw_os_error(), Some(libc::ELOOP));
            }
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        let kind =
            |fd: &OwnedFd| nix::sys::stat::fstat(fd.as_raw_fd()).unwrap().st_mode & libc::S_IFMT;
        let d = make("new/a/b", false).unwrap();
        assert_eq!(kind(&d), libc::S_IFDIR);
        let f = make("new/a/f", true).unwrap();
        assert_eq!(kind(&f), libc::S_IFREG);
        assert!(base.join("new/a/b").is_dir() && base.join("new/a/f").is_file());
        // Existing entries are kept: the file's content, the dir's entries.
        let f = make("local/sub/app.py", true).unwrap();
        assert_eq!(kind(&f), libc::S_IFREG);
        assert_eq!(
            std::fs::read_to_string(base.join("local/sub/app.py")).unwrap(),
            "x"
        );
        assert!(make("local/sub", false).is_ok());
        // A file where a dir is wanted, on the way or last.
        let e = make("local/sub/app.py/x", false).unwrap_err();
        assert!(matches!(e, BeneathError::NotADirectory { .. }), "{e:?}");
        let e = make("local/sub/app.py", false).unwrap_err();
        assert_eq!(std::io::Error::from(e).raw_os_error(), Some(libc::ENOTDIR));
        assert_eq!(
            std::io::Error::from(plain_components(Path::new("../x"), &base).unwrap_err())
                .raw_os_error(),
            Some(libc::EINVAL)
        );
    }

    /// The log FIFOs' use: an `O_PATH` fd of any entry but a symlink (a dir too), nothing
    /// made; a symlink last or on the way is named.
    #[test]
    fn path_fds_refuse_symlinks_anywhere() {
        let t = tree();
        let base = t.path().join("base");
        let dir = open_dir(&base).unwrap();
        let walk = |rel: &str| {
            let parts = plain_components(Path::new(rel), &base)?;
            walk_beneath(&dir, &base, &parts, Walk::PATH)
        };
        assert!(walk("local/sub/app.py").is_ok());
        assert!(walk("local/sub").is_ok());
        for rel in ["local/inside.py", "local/subdir", "local/subdir/app.py"] {
            let e = walk(rel).unwrap_err();
            assert!(matches!(e, BeneathError::Symlink { .. }), "{rel}: {e:?}");
        }
        assert_eq!(
            walk("local/nope").unwrap_err(),
            BeneathError::Missing {
                at: base.join("local/nope")
            }
        );
        assert!(!base.join("local/nope").exists());
    }

    /// Without `create` a missing component is named, never made.
    #[test]
    fn reading_makes_nothing() {
        let t = tree();
        let base = t.path().join("base");
        let dir = open_dir(&base).unwrap();
        let parts = plain_components(Path::new("new/x"), &base).unwrap();
        let e = walk_beneath(&dir, &base, &parts, Walk::READ).unwrap_err();
        assert_eq!(
            e,
            BeneathError::Missing {
                at: base.join("new")
            }
        );
        assert!(!base.join("new").exists());
    }
}
