//! The copy loop of `log_collection = "executor"`: the runtime's stdout and stderr pipes into
//! their [`Rotator`]s, on the shim's one thread.
//!
//! - **Bounded.** One read buffer for both streams; while a write to disk is in progress
//!   nothing else is read, so a slow disk fills the pipe and the task blocks in `write` —
//!   backpressure on the task, never memory growth in the shim.
//! - **Never fatal.** A write that fails (disk full, read-only, the log dir gone) loses that
//!   chunk, which is counted ([`StreamStats::bytes_dropped`]); reading goes on, so the task
//!   never blocks on a broken disk, and the next chunk tries again. The first failure and the
//!   recovery are published as shim events (task events in Nomad).
//! - **Complete.** The loop runs until both pipes report EOF, i.e. until every process that
//!   held their write ends is gone; the shim records the exit only after that
//!   ([`Collector::drained`]).

use super::rotator::{LogDir, Rotator, WriteError};
use super::Events;
use common::proto::executor as api;
use common::sync::lock;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::unix::pipe::Receiver;
use tokio::sync::{watch, Notify};

/// One read: both pipes share it (they are read one after the other on one thread). Held
/// only while output flows: a read that does not fill it emptied the pipe, and the buffer is
/// freed then, so an idle task's shim does not keep the pages the last burst touched.
const READ_BUFFER: usize = 32 * 1024;

/// What the shim knows about one stream's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// `stdout` or `stderr`.
    pub name: &'static str,
    /// The file written to now (its name within the log dir).
    pub file: String,
    pub bytes_written: u64,
    /// Output that could not be written (disk full, read-only, …) and is lost.
    pub bytes_dropped: u64,
    /// Newlines in what was written / lost (a line cut by a failure counts where its
    /// newline went).
    pub lines_written: u64,
    pub lines_dropped: u64,
    /// Writes that failed (each one a run of lost output, however long).
    pub write_errors: u64,
    /// The failure in force, empty while writing works.
    pub error: String,
    /// The most recent failure, kept after writing works again.
    pub last_error: String,
}

/// The running copy loop: its figures, and whether both pipes are drained.
#[derive(Debug)]
pub struct Collector {
    dir: PathBuf,
    stats: Mutex<[StreamStats; 2]>,
    drained: watch::Sender<bool>,
    /// Signalled after the figures changed (for the pushes of `super::push`).
    changed: Notify,
}

impl Collector {
    /// Both streams' figures.
    pub fn stats(&self) -> [StreamStats; 2] {
        lock(&self.stats).clone()
    }

    /// The shim API's view of the figures.
    pub fn log_status(&self) -> api::LogStatus {
        api::LogStatus {
            collection: super::COLLECTION_EXECUTOR.to_owned(),
            dir: self.dir.display().to_string(),
            streams: self
                .stats()
                .into_iter()
                .map(|s| api::LogStream {
                    name: s.name.to_owned(),
                    file: s.file,
                    bytes_written: s.bytes_written,
                    bytes_dropped: s.bytes_dropped,
                    lines_written: s.lines_written,
                    lines_dropped: s.lines_dropped,
                    write_errors: s.write_errors,
                    error: s.error,
                    last_error: s.last_error,
                })
                .collect(),
        }
    }

    /// Waits until both pipes reached EOF and everything read was handed to the files, at
    /// most `timeout` (a process that survived SIGKILL may still hold a pipe). True when
    /// drained.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let mut rx = self.drained.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|d| *d))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// A pipe read end and the files it goes to.
pub struct Source {
    pub name: &'static str,
    pub read: OwnedFd,
    pub rotator: Rotator,
}

/// Creates the first files (so `nomad alloc logs` finds them before the first line), then
/// copies until both sources are at EOF. Runs on the shim's runtime (`tokio::spawn`).
pub fn start(dir: PathBuf, sources: [Source; 2], events: Events) -> Arc<Collector> {
    let collector = Arc::new(Collector {
        dir: dir.clone(),
        stats: Mutex::new(sources.each_ref().map(|s| StreamStats {
            name: s.name,
            file: s.rotator.current_name(),
            ..Default::default()
        })),
        drained: watch::channel(false).0,
        changed: Notify::new(),
    });
    // The counters pushed to the plugin (Events subscribers that ask for them) as they change.
    tokio::spawn({
        let (c, events) = (collector.clone(), events.clone());
        async move {
            super::push::run(
                || c.log_status(),
                &c.changed,
                c.drained.subscribe(),
                super::push::PERIOD,
                |s| events.push_log_counts(s),
            )
            .await
        }
    });
    let mut pump = Pump {
        collector: collector.clone(),
        dir_path: dir,
        dir: None,
        events,
        streams: Vec::new(),
    };
    let mut readers = Vec::new();
    for (i, s) in sources.into_iter().enumerate() {
        pump.streams.push(s.rotator);
        match Receiver::from_owned_fd(s.read) {
            Ok(rx) => readers.push(Some(rx)),
            Err(e) => {
                // Not expected (a pipe always registers with epoll); never leave the task
                // writing into a pipe nobody reads.
                tracing::error!(stream = s.name, error = %e, "cannot poll the output pipe");
                pump.failed(i, &[], &e.to_string());
                readers.push(None);
            }
        }
    }
    pump.open_first_files();
    tokio::spawn(async move {
        let mut out = readers.remove(0);
        let mut err = readers.remove(0);
        // Not zeroed: only the pages reads really fill become resident.
        let mut buf = Vec::new();
        while out.is_some() || err.is_some() {
            let done = tokio::select! {
                r = readable(&out) => pump.read(0, r, &out, &mut buf).then_some(0),
                r = readable(&err) => pump.read(1, r, &err, &mut buf).then_some(1),
            };
            match done {
                Some(0) => out = None,
                Some(_) => err = None,
                None => {}
            }
        }
        for r in &mut pump.streams {
            r.close();
        }
        pump.collector.drained.send_replace(true);
        tracing::debug!("task output drained");
    });
    collector
}

/// Waits until `rx` is readable; never resolves for a stream that is done.
async fn readable(rx: &Option<Receiver>) -> std::io::Result<()> {
    match rx {
        Some(rx) => rx.readable().await,
        None => std::future::pending().await,
    }
}

struct Pump {
    collector: Arc<Collector>,
    dir_path: PathBuf,
    dir: Option<LogDir>,
    events: Events,
    streams: Vec<Rotator>,
}

impl Pump {
    /// Handles one readiness of stream `i`: reads one chunk and writes it out. True at EOF
    /// (or on an error, which a pipe does not have): the stream is done.
    fn read(
        &mut self,
        i: usize,
        ready: std::io::Result<()>,
        rx: &Option<Receiver>,
        buf: &mut Vec<u8>,
    ) -> bool {
        let Some(rx) = rx else { return true };
        buf.clear();
        buf.reserve_exact(READ_BUFFER);
        let n = match ready.and_then(|()| rx.try_read_buf(buf)) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                *buf = Vec::new();
                return false;
            }
            Err(e) => {
                tracing::error!(stream = i, error = %e, "reading the task's output failed");
                0
            }
        };
        if n == 0 {
            return true;
        }
        self.write(i, &buf[..n]);
        if n < READ_BUFFER {
            *buf = Vec::new();
        }
        false
    }

    /// Opens the log dir if it is not open yet (it may have been missing or unreadable).
    fn ensure_dir(&mut self) -> Result<(), String> {
        if self.dir.is_none() {
            let d = LogDir::open(&self.dir_path)
                .map_err(|e| format!("cannot open the log dir {}: {e}", self.dir_path.display()))?;
            self.dir = Some(d);
        }
        Ok(())
    }

    fn open_first_files(&mut self) {
        for i in 0..self.streams.len() {
            let opened = self.ensure_dir().and_then(|()| match &self.dir {
                Some(d) => self.streams[i].open(d).map_err(|e| e.to_string()),
                None => Err("no log dir".to_owned()),
            });
            match opened {
                Ok(()) => self.succeeded(i, &[]),
                Err(e) => self.failed(i, &[], &e),
            }
        }
    }

    fn write(&mut self, i: usize, data: &[u8]) {
        let result = match self.ensure_dir() {
            Err(e) => Err((0, e)),
            Ok(()) => match &self.dir {
                Some(d) => self.streams[i]
                    .write(d, data)
                    .map_err(|WriteError { written, error }| (written, error.to_string())),
                None => Err((0, "no log dir".to_owned())),
            },
        };
        match result {
            Ok(()) => self.succeeded(i, data),
            Err((written, e)) => {
                let (kept, lost) = data.split_at(written.min(data.len()));
                self.succeeded_quietly(i, kept);
                self.failed(i, lost, &e);
            }
        }
    }

    fn succeeded_quietly(&mut self, i: usize, written: &[u8]) {
        let file = self.streams[i].current_name();
        let lines = count_lines(written);
        let mut stats = lock(&self.collector.stats);
        stats[i].bytes_written += written.len() as u64;
        stats[i].lines_written += lines;
        stats[i].file = file;
        drop(stats);
        self.collector.changed.notify_one();
    }

    fn succeeded(&mut self, i: usize, written: &[u8]) {
        self.succeeded_quietly(i, written);
        let recovered = {
            let mut stats = lock(&self.collector.stats);
            let s = &mut stats[i];
            (!s.error.is_empty()).then(|| {
                s.error.clear();
                (s.name, s.bytes_dropped, s.file.clone())
            })
        };
        if let Some((name, dropped, file)) = recovered {
            let msg = format!(
                "writing the task's {name} log works again ({file}); {dropped} bytes of {name} were lost while it failed"
            );
            tracing::warn!("{msg}");
            self.events.publish(msg);
        }
    }

    /// `lost` bytes could not be written because of `error`. The first failure of a run of
    /// failures becomes an event; the rest are counted.
    fn failed(&mut self, i: usize, lost: &[u8], error: &str) {
        let lines = count_lines(lost);
        let first = {
            let mut stats = lock(&self.collector.stats);
            let s = &mut stats[i];
            s.bytes_dropped += lost.len() as u64;
            s.lines_dropped += lines;
            s.write_errors += 1;
            s.last_error = error.to_owned();
            let first = s.error.is_empty();
            s.error = error.to_owned();
            first.then(|| (s.name, s.file.clone()))
        };
        self.collector.changed.notify_one();
        if let Some((name, file)) = first {
            let msg = format!(
                "cannot write the task's {name} log ({}/{file}): {error}; its output is dropped and counted until writing works again (the task keeps running; elide-executor status shows the bytes lost)",
                self.dir_path.display()
            );
            tracing::warn!("{msg}");
            self.events.publish(msg);
        }
    }
}

/// Lines in a chunk of output: its newlines.
fn count_lines(data: &[u8]) -> u64 {
    data.iter().filter(|b| **b == b'\n').count() as u64
}

#[cfg(test)]
mod tests {
    use super::count_lines;

    #[test]
    fn lines_are_newlines() {
        assert_eq!(count_lines(b""), 0);
        assert_eq!(count_lines(b"no newline"), 0);
        assert_eq!(count_lines(b"a\nb\n\nc"), 3);
    }
}
