//! Opening the task's log sinks: Nomad's FIFOs (a blocking `O_WRONLY` open in a worker thread
//! with a deadline), `/dev/null`, or a regular file. Never through a symlink (`O_NOFOLLOW`):
//! the task itself can write in `alloc/logs`.
//!
//! For a FIFO the shim also keeps its own never-read `O_RDONLY|O_NONBLOCK` end. While it is
//! open the pipe always has a reader, so the task never gets EPIPE/SIGPIPE when logmon
//! restarts (Nomad agent restart or upgrade): output buffers in the pipe until logmon's new
//! reader drains it, and no line is lost or duplicated.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long to wait for the stuck opener thread after unblocking it ourselves.
const UNBLOCK_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum FifoError {
    /// Logmon has not opened the FIFO for reading; a retry may succeed.
    #[error("no reader on log FIFO {path} after {timeout:?} (is Nomad's logmon running?)")]
    NoReader { path: PathBuf, timeout: Duration },
    #[error("log path {path} is a {kind}, not a FIFO, /dev/null or a regular file; refusing to write task output there (point stdout_path/stderr_path at Nomad's log FIFOs)")]
    BadKind { path: PathBuf, kind: &'static str },
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
    } else {
        "special file"
    }
}

fn open_write(path: &Path, append: bool) -> io::Result<File> {
    // std adds O_CLOEXEC itself.
    OpenOptions::new()
        .write(true)
        .append(append)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn open_keepalive(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Opens `path` for the task's output. A FIFO waits at most `timeout` for its reader.
pub async fn open_sink(path: &Path, timeout: Duration) -> Result<Sink, FifoError> {
    let open_err = |source| FifoError::Open {
        path: path.to_path_buf(),
        source,
    };
    let ft = std::fs::symlink_metadata(path)
        .map_err(open_err)?
        .file_type();
    if ft.is_file() {
        let f = open_write(path, true).map_err(open_err)?;
        return Ok(Sink {
            write: f.into(),
            keepalive: None,
        });
    }
    if ft.is_char_device() && path == Path::new("/dev/null") {
        let f = open_write(path, false).map_err(open_err)?;
        return Ok(Sink {
            write: f.into(),
            keepalive: None,
        });
    }
    if !ft.is_fifo() {
        return Err(FifoError::BadKind {
            path: path.to_path_buf(),
            kind: kind_name(ft),
        });
    }
    let owned = path.to_path_buf();
    let mut opener = tokio::task::spawn_blocking(move || open_write(&owned, false));
    let write = match tokio::time::timeout(timeout, &mut opener).await {
        Ok(Ok(Ok(f))) => f,
        Ok(Ok(Err(e))) => return Err(open_err(e)),
        Ok(Err(join)) => return Err(open_err(io::Error::other(join.to_string()))),
        Err(_) => {
            // Unblock the stuck open() by being a reader ourselves; the thread then gets a
            // writer fd, which is closed when its result is dropped here. Waiting for that
            // keeps no stray writer (which would hide EOF from a later logmon) behind.
            let reader = open_keepalive(path);
            let _ = tokio::time::timeout(UNBLOCK_GRACE, opener).await;
            drop(reader);
            return Err(FifoError::NoReader {
                path: path.to_path_buf(),
                timeout,
            });
        }
    };
    // The path was a FIFO a moment ago; make sure the fd still is one.
    let meta = write.metadata().map_err(open_err)?;
    if !meta.file_type().is_fifo() {
        return Err(FifoError::BadKind {
            path: path.to_path_buf(),
            kind: kind_name(meta.file_type()),
        });
    }
    let keepalive = open_keepalive(path).map_err(open_err)?;
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
        open_keepalive(p).unwrap()
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
