//! Opening the task's log sinks: Nomad's FIFOs (blocking O_WRONLY in a worker thread with a
//! deadline), `/dev/null`, or a plain file. Never through a symlink: the task can write in
//! `alloc/logs`.

use nix::fcntl::{open, OFlag};
use nix::sys::stat::{Mode, SFlag};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum FifoError {
    #[error("no reader on log FIFO {path} after {secs}s (is Nomad's logmon running?); the task will be retried")]
    NoReader { path: PathBuf, secs: f64 },
    #[error("log path {path} is a {kind}, not a FIFO, /dev/null or a regular file; refusing to write task output there")]
    BadKind { path: PathBuf, kind: &'static str },
    #[error("cannot open log path {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

impl FifoError {
    pub fn is_recoverable(&self) -> bool {
        matches!(self, FifoError::NoReader { .. })
    }
}

/// An opened sink, plus for a FIFO our own never-read read end: while we hold it the pipe
/// always has a reader, so the task never gets EPIPE/SIGPIPE when logmon restarts; output
/// just buffers until logmon reads again.
pub struct Sink {
    pub write: OwnedFd,
    pub keepalive: Option<OwnedFd>,
}

fn kind_of(path: &Path) -> Result<SFlag, FifoError> {
    let st = nix::sys::stat::lstat(path).map_err(|source| FifoError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT)
}

pub async fn open_sink(path: &Path, timeout: Duration) -> Result<Sink, FifoError> {
    let kind = kind_of(path)?;
    let flags = OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    if kind == SFlag::S_IFREG {
        let fd = open(path, flags | OFlag::O_APPEND, Mode::empty()).map_err(|source| {
            FifoError::Open {
                path: path.to_path_buf(),
                source,
            }
        })?;
        // SAFETY: `open` returned a fresh fd that nothing else owns.
        return Ok(Sink {
            write: unsafe { OwnedFd::from_raw_fd(fd) },
            keepalive: None,
        });
    }
    if kind == SFlag::S_IFCHR && path == Path::new("/dev/null") {
        let fd =
            open(path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|source| {
                FifoError::Open {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        // SAFETY: fresh fd.
        return Ok(Sink {
            write: unsafe { OwnedFd::from_raw_fd(fd) },
            keepalive: None,
        });
    }
    if kind != SFlag::S_IFIFO {
        let kind = match kind {
            SFlag::S_IFLNK => "symlink",
            SFlag::S_IFDIR => "directory",
            SFlag::S_IFSOCK => "socket",
            SFlag::S_IFCHR | SFlag::S_IFBLK => "device",
            _ => "special file",
        };
        return Err(FifoError::BadKind {
            path: path.to_path_buf(),
            kind,
        });
    }
    let owned = path.to_path_buf();
    let opener = tokio::task::spawn_blocking(move || open(&owned, flags, Mode::empty()));
    let fd = match tokio::time::timeout(timeout, opener).await {
        Ok(Ok(Ok(fd))) => fd,
        Ok(Ok(Err(source))) => {
            return Err(FifoError::Open {
                path: path.to_path_buf(),
                source,
            })
        }
        Ok(Err(_)) | Err(_) => {
            // Unblock the stuck open() by being a reader ourselves for a moment; the thread
            // then returns a writer fd, which is closed when the JoinHandle's result drops.
            if let Ok(r) = open(
                path,
                OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                // SAFETY: fresh fd, closed right away.
                drop(unsafe { OwnedFd::from_raw_fd(r) });
            }
            return Err(FifoError::NoReader {
                path: path.to_path_buf(),
                secs: timeout.as_secs_f64(),
            });
        }
    };
    // SAFETY: fresh fd from `open`.
    let write = unsafe { OwnedFd::from_raw_fd(fd) };
    let keepalive = open(
        path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()
    // SAFETY: fresh fd.
    .map(|r| unsafe { OwnedFd::from_raw_fd(r) });
    Ok(Sink { write, keepalive })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fifo_without_reader_times_out_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.fifo");
        nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600)).unwrap();
        let e = open_sink(&p, Duration::from_millis(200))
            .await
            .err()
            .unwrap();
        assert!(e.is_recoverable());
        assert!(e.to_string().contains("no reader"), "{e}");
    }

    #[tokio::test]
    async fn symlinks_are_refused_and_files_and_dev_null_work() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        std::fs::write(&target, "").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = open_sink(&link, Duration::from_millis(100))
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert!(open_sink(&target, Duration::from_millis(100)).await.is_ok());
        assert!(
            open_sink(Path::new("/dev/null"), Duration::from_millis(100))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn fifo_with_reader_opens_and_keeps_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.fifo");
        nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600)).unwrap();
        let reader = open(&p, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty()).unwrap();
        let sink = open_sink(&p, Duration::from_secs(2)).await.unwrap();
        assert!(sink.keepalive.is_some());
        // SAFETY: test-owned fd.
        drop(unsafe { OwnedFd::from_raw_fd(reader) });
        // With the logmon-like reader gone, writes still succeed (buffered), no EPIPE.
        let n = nix::unistd::write(&sink.write, b"line\n").unwrap();
        assert_eq!(n, 5);
    }
}
