//! Opening the task's log sinks: Nomad's FIFOs (a blocking `O_WRONLY` open in a worker thread
//! with a deadline), `/dev/null`, or (an operator's spec only) a regular file.
//!
//! The task itself can write in `alloc/` and `alloc/logs` (Nomad makes them 0777) and can put
//! a symlink in place of `alloc/logs` or of the FIFO. So a path of Nomad's layout,
//! `<alloc_dir>/alloc/logs/<name>`, is resolved *beneath* the alloc dir with no symlink in
//! any component (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, an `O_NOFOLLOW` walk on
//! older kernels), and only a FIFO is written there; any other path is resolved beneath its
//! own dir the same way. The lookup yields an `O_PATH` fd, checked with `fstat`, and the
//! writer and reader ends are opened from that fd (`/proc/self/fd/<n>`), never from the path
//! again.
//!
//! For a FIFO the shim also keeps its own never-read `O_RDONLY|O_NONBLOCK` end. While it is
//! open the pipe always has a reader, so the task never gets EPIPE/SIGPIPE when logmon
//! restarts (Nomad agent restart or upgrade): output buffers in the pipe until logmon's new
//! reader drains it, and no line is lost or duplicated.

use common::beneath::{self, BeneathError};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long to wait for the stuck opener thread after unblocking it ourselves.
const UNBLOCK_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum FifoError {
    /// Logmon has not opened the FIFO for reading; a retry may succeed.
    #[error("no reader on log FIFO {path} after {timeout:?} (is Nomad's logmon running?)")]
    NoReader { path: PathBuf, timeout: Duration },
    #[error("log path {path} is a {kind}, not {wanted}; refusing to write task output there (point stdout_path/stderr_path at Nomad's log FIFOs)")]
    BadKind {
        path: PathBuf,
        kind: &'static str,
        wanted: &'static str,
    },
    #[error("log path {path} {reason}; refusing to write task output there (a task of the allocation may have replaced alloc/logs or the FIFO: restart the allocation)")]
    Unsafe { path: PathBuf, reason: BeneathError },
    #[error("cannot open log path {path}: {source}; it must exist (Nomad's logmon creates the FIFOs before StartTask)")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot create a pipe for the task's output: {0}; the shim may be out of file descriptors"
    )]
    Pipe(#[source] io::Error),
}

impl FifoError {
    /// Whether a later retry could succeed (logmon may just be slow or restarting).
    pub fn is_transient(&self) -> bool {
        matches!(self, FifoError::NoReader { .. })
    }
}

/// An opened sink, plus for a FIFO the shim's keep-alive read end (see the module doc).
#[derive(Debug)]
pub struct Sink {
    pub write: OwnedFd,
    pub keepalive: Option<OwnedFd>,
}

fn kind_name(ft: std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() || ft.is_block_device() {
        "device"
    } else if ft.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

/// Where `path` is resolved from: for Nomad's `<alloc_dir>/alloc/logs/<name>` the alloc dir
/// (Nomad's, root's 0755) and `alloc/logs/<name>`, which only a FIFO may be; for any other
/// path its dir and its name.
fn anchor(path: &Path) -> Option<(&Path, PathBuf, bool)> {
    let name = path.file_name()?;
    let logs = path.parent()?;
    let shared = logs.parent()?;
    match shared.parent() {
        Some(alloc)
            if logs.file_name().is_some_and(|n| n == "logs")
                && shared.file_name().is_some_and(|n| n == "alloc")
                && !alloc.as_os_str().is_empty() =>
        {
            Some((alloc, Path::new("alloc/logs").join(name), true))
        }
        _ => Some((logs, PathBuf::from(name), false)),
    }
}

/// [`kind_name`] of an `st_mode & S_IFMT`.
fn kind_of(fmt: libc::mode_t) -> &'static str {
    match fmt {
        libc::S_IFLNK => "symlink",
        libc::S_IFDIR => "directory",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR | libc::S_IFBLK => "device",
        libc::S_IFREG => "regular file",
        _ => "special file",
    }
}

fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: a fresh fd from the kernel, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// An `O_PATH` fd of `base/rel`, looked up without following any symlink or leaving `base`.
fn path_fd_beneath(base: &Path, rel: &Path) -> Result<OwnedFd, BeneathError> {
    let parts = beneath::plain_components(rel, base)?;
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let dir = nix::fcntl::open(
        base,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(owned)
    .map_err(|errno| match errno {
        Errno::ENOENT => BeneathError::Missing { at: base.into() },
        errno => BeneathError::Io {
            at: base.into(),
            errno,
        },
    })?;
    let how = OpenHow::new().flags(flags).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    );
    let clean: PathBuf = parts.iter().collect();
    let mut tries = 0;
    let found = loop {
        match nix::fcntl::openat2(dir.as_raw_fd(), &clean, how) {
            Err(Errno::EAGAIN) if tries < 8 => tries += 1,
            r => break r,
        }
    };
    let fd = match found {
        Ok(fd) => owned(fd),
        // Older kernels, or a failure to put in words: the O_NOFOLLOW walk (it names the
        // component that stopped it), the last name as O_PATH, not followed.
        Err(errno) => {
            let fd = beneath::walk_beneath(&dir, base, &parts, beneath::Walk::PATH)?;
            if errno != Errno::ENOSYS {
                // openat2 refused what the walk accepts: the tree changed in between.
                return Err(BeneathError::Io {
                    at: base.join(&clean),
                    errno,
                });
            }
            fd
        }
    };
    Ok(fd)
}

/// Opens the file an `O_PATH` fd names (its inode, whatever its path is now).
fn reopen(fd: &OwnedFd, read: bool, append: bool) -> io::Result<File> {
    let via = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let mut o = OpenOptions::new();
    if read {
        o.read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    } else {
        o.write(true).append(append).custom_flags(libc::O_NOCTTY);
    }
    o.open(via)
}

fn open_dev_null(path: &Path) -> io::Result<File> {
    // std adds O_CLOEXEC itself.
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Opens `path` for the task's output. A FIFO waits at most `timeout` for its reader.
pub async fn open_sink(path: &Path, timeout: Duration) -> Result<Sink, FifoError> {
    let open_err = |source| FifoError::Open {
        path: path.to_path_buf(),
        source,
    };
    let bad_kind = |kind: &'static str, nomad: bool| FifoError::BadKind {
        path: path.to_path_buf(),
        kind,
        wanted: if nomad {
            "a FIFO (alloc/logs holds only Nomad's log FIFOs)"
        } else {
            "a FIFO, /dev/null or a regular file"
        },
    };
    if path == Path::new("/dev/null") {
        let f = open_dev_null(path).map_err(open_err)?;
        let ft = f.metadata().map_err(open_err)?.file_type();
        if !ft.is_char_device() {
            return Err(bad_kind(kind_name(ft), false));
        }
        return Ok(Sink {
            write: f.into(),
            keepalive: None,
        });
    }
    let Some((base, rel, nomad)) = anchor(path) else {
        return Err(open_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file path",
        )));
    };
    let fd = match path_fd_beneath(base, &rel) {
        Ok(fd) => fd,
        Err(BeneathError::Missing { .. }) => return Err(open_err(io::ErrorKind::NotFound.into())),
        Err(reason) => {
            return Err(FifoError::Unsafe {
                path: path.to_path_buf(),
                reason,
            })
        }
    };
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| open_err(e.into()))?;
    let kind = st.st_mode & libc::S_IFMT;
    if kind == libc::S_IFREG && !nomad {
        // An operator's own file: appended to, if it is not a link to another one.
        if st.st_nlink != 1 {
            return Err(FifoError::BadKind {
                path: path.to_path_buf(),
                kind: "hard link to another file",
                wanted: "a FIFO, /dev/null or a regular file with one link",
            });
        }
        let f = reopen(&fd, false, true).map_err(open_err)?;
        return Ok(Sink {
            write: f.into(),
            keepalive: None,
        });
    }
    if kind != libc::S_IFIFO {
        return Err(bad_kind(kind_of(kind), nomad));
    }
    let fd = Arc::new(fd);
    let held = fd.clone();
    let mut opener = tokio::task::spawn_blocking(move || reopen(&held, false, false));
    let write = match tokio::time::timeout(timeout, &mut opener).await {
        Ok(Ok(Ok(f))) => f,
        Ok(Ok(Err(e))) => return Err(open_err(e)),
        Ok(Err(join)) => return Err(open_err(io::Error::other(join.to_string()))),
        Err(_) => {
            // Unblock the stuck open() by being a reader ourselves; the thread then gets a
            // writer fd, which is closed when its result is dropped here. Waiting for that
            // keeps no stray writer (which would hide EOF from a later logmon) behind.
            let reader = reopen(&fd, true, false);
            let _ = tokio::time::timeout(UNBLOCK_GRACE, opener).await;
            drop(reader);
            return Err(FifoError::NoReader {
                path: path.to_path_buf(),
                timeout,
            });
        }
    };
    let keepalive = reopen(&fd, true, false).map_err(open_err)?;
    Ok(Sink {
        write: write.into(),
        keepalive: Some(keepalive.into()),
    })
}

/// Opens both sinks concurrently under one deadline.
pub async fn open_both(
    stdout: &Path,
    stderr: &Path,
    timeout: Duration,
) -> Result<(Sink, Sink), FifoError> {
    let (out, err) = tokio::join!(open_sink(stdout, timeout), open_sink(stderr, timeout));
    Ok((out?, err?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::Mode;
    use std::io::Read;

    fn fifo(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600)).unwrap();
        p
    }

    /// A logmon-like reader: nonblocking, so reads report "no writer" as EOF.
    fn reader(p: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(p)
            .unwrap()
    }

    /// Nomad's layout: `<alloc>/alloc/logs/.web.stdout.fifo`.
    fn alloc_logs() -> (tempfile::TempDir, PathBuf) {
        let alloc = tempfile::tempdir().unwrap();
        let logs = alloc.path().join("alloc/logs");
        std::fs::create_dir_all(&logs).unwrap();
        (alloc, logs)
    }

    /// Issue #18 (10): with log_collection = "nomad" a task replaced `alloc/logs` with a
    /// symlink, and the shim appended the task's output to a root-owned file of the same
    /// name wherever it pointed. Nothing beneath the alloc dir is followed, and only a FIFO
    /// is written there.
    #[tokio::test]
    async fn in_alloc_logs_only_a_fifo_reached_without_symlinks_is_written() {
        let t = Duration::from_millis(200);
        let (alloc, logs) = alloc_logs();
        let name = ".web.stdout.fifo";
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join(name);
        std::fs::write(&target, "host file\n").unwrap();
        let path = logs.join(name);

        // alloc/logs swapped for a symlink to a dir holding a file (or a FIFO) of that name.
        std::fs::rename(&logs, alloc.path().join("alloc/logs.old")).unwrap();
        std::os::unix::fs::symlink(outside.path(), &logs).unwrap();
        let e = open_sink(&path, t).await.unwrap_err().to_string();
        assert!(e.contains("symlink") && e.contains("refusing"), "{e}");
        let f = fifo(outside.path(), ".web.stderr.fifo");
        let _r = reader(&f);
        let e = open_sink(&logs.join(".web.stderr.fifo"), t)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "host file\n");
        std::fs::remove_file(&logs).unwrap();
        std::fs::rename(alloc.path().join("alloc/logs.old"), &logs).unwrap();

        // `alloc` itself a symlink: refused the same way.
        let shared = alloc.path().join("alloc");
        std::fs::rename(&shared, alloc.path().join("alloc.old")).unwrap();
        std::os::unix::fs::symlink(alloc.path().join("alloc.old"), &shared).unwrap();
        std::fs::write(alloc.path().join("alloc.old/logs").join(name), "").unwrap();
        let e = open_sink(&path, t).await.unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        std::fs::remove_file(&shared).unwrap();
        std::fs::rename(alloc.path().join("alloc.old"), &shared).unwrap();

        // A regular file (or a symlink to one) in the FIFO's place.
        let e = open_sink(&path, t).await.unwrap_err().to_string();
        assert!(e.contains("regular file") && e.contains("FIFO"), "{e}");
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let e = open_sink(&path, t).await.unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "host file\n");
        std::fs::remove_file(&path).unwrap();

        // Logmon's FIFO: written, with the keep-alive reader.
        let p = fifo(&logs, name);
        let mut logmon = reader(&p);
        let sink = open_sink(&p, Duration::from_secs(5)).await.unwrap();
        assert!(sink.keepalive.is_some());
        nix::unistd::write(&sink.write, b"out\n").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(logmon.read(&mut buf).unwrap(), 4);
    }

    #[tokio::test]
    async fn fifo_without_reader_times_out_and_leaves_no_writer() {
        let dir = tempfile::tempdir().unwrap();
        let p = fifo(dir.path(), "f");
        let e = open_sink(&p, Duration::from_millis(200)).await.unwrap_err();
        assert!(e.is_transient());
        let msg = e.to_string();
        assert!(
            msg.contains("no reader on log FIFO") && msg.contains("200ms"),
            "{msg}"
        );
        assert!(msg.contains("logmon"), "{msg}");
        // No writer is left open: a reader sees EOF (0), not EAGAIN.
        let mut r = reader(&p);
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 0);
    }

    #[tokio::test]
    async fn symlinks_dirs_and_devices_are_refused_files_and_dev_null_work() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        std::fs::write(&target, "old\n").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let t = Duration::from_millis(100);
        let e = open_sink(&link, t).await.unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        let e = open_sink(dir.path(), t).await.unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
        let e = open_sink(Path::new("/dev/zero"), t)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("device"), "{e}");
        let e = open_sink(&dir.path().join("missing"), t)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("logmon creates"), "{e}");
        // A regular file is appended to, not truncated.
        let s = open_sink(&target, t).await.unwrap();
        assert!(s.keepalive.is_none());
        nix::unistd::write(&s.write, b"new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old\nnew\n");
        assert!(open_sink(Path::new("/dev/null"), t).await.is_ok());
    }

    #[tokio::test]
    async fn fifo_with_reader_opens_and_survives_the_reader_going_away() {
        let dir = tempfile::tempdir().unwrap();
        let p = fifo(dir.path(), "f");
        let logmon = reader(&p);
        let sink = open_sink(&p, Duration::from_secs(5)).await.unwrap();
        assert!(sink.keepalive.is_some());
        drop(logmon);
        // With logmon's reader gone, writes still succeed (buffered): no EPIPE.
        assert_eq!(nix::unistd::write(&sink.write, b"line\n").unwrap(), 5);
        // A new logmon reader gets the buffered line exactly once.
        let mut again = reader(&p);
        let mut buf = [0u8; 16];
        assert_eq!(again.read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"line\n");
    }

    #[tokio::test]
    async fn both_sinks_share_one_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let out = fifo(dir.path(), "o");
        let err = fifo(dir.path(), "e");
        let _r = reader(&out);
        let e = open_both(&out, &err, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(e.to_string().contains(&err.display().to_string()), "{e}");
        let _r2 = reader(&err);
        let (o, e) = open_both(&out, &err, Duration::from_secs(5)).await.unwrap();
        assert!(o.keepalive.is_some() && e.keepalive.is_some());
    }
}
