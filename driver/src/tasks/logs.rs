//! The plugin's part of the task's logs (`log_collection`):
//!
//! - which way a task's output went, recorded in its `driver_state` ([`collection_of`]);
//! - the shim's events (log files it cannot write, and when it can again) forwarded as task
//!   events ([`Tasks::forward_events`]), and a summary of what was lost while the plugin was
//!   away ([`loss_summary`]);
//! - the `logmon` Nomad left behind: a task started with `log_collection = "nomad"` (or by a
//!   release before the shim wrote logs) keeps its logmon across an upgrade to "executor",
//!   but Nomad then neither reattaches nor stops it (the driver now reports
//!   `DisableLogCollection`). It keeps collecting the task's output through the FIFOs while
//!   the task runs; when the task is destroyed, the plugin stops it
//!   ([`stop_orphaned_logmon`]).

use super::entry::TaskEntry;
use super::Tasks;
use common::proto::executor as shim;
use common::spec::TaskSpec;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// `driver_state.log_collection` of a task: "executor", "nomad" or "none".
pub fn collection_of(spec: &TaskSpec) -> &'static str {
    let null = Path::new("/dev/null");
    if spec.log_files.is_some() {
        "executor"
    } else if spec.stdout_path == null && spec.stderr_path == null {
        "none"
    } else {
        "nomad"
    }
}

/// Whether Nomad runs a logmon for this task (its output goes through FIFOs).
pub fn has_logmon(state_collection: &str) -> bool {
    matches!(state_collection, "" | "nomad")
}

impl Tasks {
    /// Turns the events of the task's shim into task events, from `since_unix_ms` on, until
    /// the shim goes away. Shims from before the Events RPC (API level 1) have none. From a
    /// level-5 shim writing the log files, the same stream brings its log counters whenever
    /// they change: kept in the entry for the metrics (never task events), so a scrape asks
    /// the shim nothing (`tasks::metrics`).
    pub fn forward_events(&self, entry: &Arc<TaskEntry>, since_unix_ms: i64) {
        let s = &entry.state;
        if common::shim_api::require(
            common::shim_api::EVENTS,
            s.shim_api_level,
            &s.executor_version,
        )
        .is_err()
        {
            return;
        }
        let log_counts = s.log_collection == "executor"
            && common::shim_api::require(
                common::shim_api::LOG_COUNT_PUSH,
                s.shim_api_level,
                &s.executor_version,
            )
            .is_ok();
        let plugin = self.plugin.clone();
        let task = entry.clone();
        let forwarder = tokio::spawn(async move {
            let Ok(mut c) = task.client().await else {
                return;
            };
            let Ok(mut stream) = c
                .events(shim::EventsRequest {
                    since_unix_ms,
                    log_counts,
                    notify_socket: String::new(),
                })
                .await
                .map(|r| r.into_inner())
            else {
                return;
            };
            if log_counts {
                // Zero until the shim says otherwise (it sends its counts at once when not
                // all zero).
                task.set_pushed_logs(Some(Default::default()));
            }
            while let Ok(Some(ev)) = stream.message().await {
                if let Some(l) = &ev.logs {
                    task.set_pushed_logs(Some(super::metrics::counts(l)));
                    continue;
                }
                if ev.message.is_empty() {
                    continue;
                }
                let s = &task.state;
                plugin.emit(&s.task_id, &s.alloc_id, &s.task_name, ev.message);
            }
            // The stream ended (the shim went away): the scrape asks Status again.
            task.set_pushed_logs(None);
        });
        entry.set_event_forwarder(forwarder.abort_handle());
    }
}

/// A task event for output the shim could not write, from its Status (e.g. while the plugin
/// was down): None when nothing was lost.
pub fn loss_summary(logs: Option<&shim::LogStatus>) -> Option<String> {
    let logs = logs?;
    let lost: Vec<String> = logs
        .streams
        .iter()
        .filter(|s| s.bytes_dropped > 0)
        .map(|s| {
            format!(
                "{} bytes of {} (last error: {})",
                s.bytes_dropped, s.name, s.last_error
            )
        })
        .collect();
    if lost.is_empty() {
        return None;
    }
    Some(format!(
        "the task's shim could not write all of its output to the log files in {}: {} were lost; `elide-executor status` shows the counts",
        logs.dir,
        lost.join(", ")
    ))
}

/// How long logmon gets after the task's output ended to write what it buffered (it flushes
/// every 100 ms).
const LOGMON_FLUSH: Duration = Duration::from_secs(1);

/// Stops the `nomad logmon` that holds `fifo` (the task's stdout FIFO) open, once it had
/// time to write out what the task printed last. Returns the pids it stopped.
pub fn stop_orphaned_logmon(fifo: &Path, exited_at_unix_ms: i64) -> Vec<i32> {
    let found = logmons_holding(fifo);
    if found.is_empty() {
        return Vec::new();
    }
    let since_exit =
        Duration::from_millis((common::state::now_ms() - exited_at_unix_ms).max(0) as u64);
    std::thread::sleep(LOGMON_FLUSH.saturating_sub(since_exit));
    kill_all(&found, fifo)
}

/// A process found holding the FIFO, by pidfd where the kernel has them (Linux 5.3+): the
/// flush wait is up to a second, long enough for the pid of a logmon that ended meanwhile to
/// be taken by another process (pid_max is 32768 on many hosts, and a task can fork through
/// them), which a `kill(pid)` would then hit.
struct Holder {
    pid: i32,
    pidfd: Option<OwnedFd>,
}

/// A pidfd of `pid`: Ok(None) when the kernel has no pidfds.
fn pidfd_open(pid: i32) -> std::io::Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open with integer arguments returns a new (close-on-exec) fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOSYS) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: a fresh fd, owned from here on.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
}

/// SIGKILL to each of `found` that is still the process found; the pids signalled.
fn kill_all(found: &[Holder], fifo: &Path) -> Vec<i32> {
    found
        .iter()
        .filter(|h| match &h.pidfd {
            // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                ) == 0
            },
            // No pidfds: the pid is checked again right before the kill.
            None => {
                is_logmon(h.pid)
                    && holds(h.pid, fifo)
                    && nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(h.pid),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                    .is_ok()
            }
        })
        .map(|h| h.pid)
        .collect()
}

/// Processes running `<nomad> logmon` with `fifo` open. The pidfd is taken before the
/// checks, so what they find is about the process it refers to (or that one is gone).
fn logmons_holding(fifo: &Path) -> Vec<Holder> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let pidfd = pidfd_open(pid).ok()?;
            (is_logmon(pid) && holds(pid, fifo)).then_some(Holder { pid, pidfd })
        })
        .collect()
}

fn is_logmon(pid: i32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    cmdline.split(|b| *b == 0).nth(1) == Some(b"logmon".as_slice())
}

fn holds(pid: i32, path: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_are_summed_up_per_stream_and_nothing_lost_says_nothing() {
        let mut l = shim::LogStatus {
            collection: "executor".into(),
            dir: "/a/alloc/logs".into(),
            streams: vec![
                shim::LogStream {
                    name: "stdout".into(),
                    bytes_dropped: 0,
                    ..Default::default()
                },
                shim::LogStream {
                    name: "stderr".into(),
                    bytes_dropped: 0,
                    ..Default::default()
                },
            ],
        };
        assert_eq!(loss_summary(Some(&l)), None);
        assert_eq!(loss_summary(None), None);
        l.streams[1].bytes_dropped = 42;
        l.streams[1].last_error = "No space left on device (os error 28)".into();
        let m = loss_summary(Some(&l)).unwrap();
        assert!(
            m.contains("42 bytes of stderr (last error: No space left on device")
                && m.contains("/a/alloc/logs")
                && !m.contains("stdout"),
            "{m}"
        );
    }

    /// `sh <dir>/logmon FIFO`: argv[1] is "logmon" (as in `nomad logmon`), fd 3 holds the
    /// FIFO; in its own process group, which is killed on drop.
    struct FakeLogmon(std::process::Child);

    impl FakeLogmon {
        fn start(dir: &Path, fifo: &Path) -> FakeLogmon {
            use std::os::unix::process::CommandExt;
            std::fs::write(dir.join("logmon"), "exec 3<>\"$1\"; sleep 1000 3<&-\n").unwrap();
            FakeLogmon(
                std::process::Command::new("/bin/sh")
                    .current_dir(dir)
                    .args(["logmon", fifo.to_str().unwrap()])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .process_group(0)
                    .spawn()
                    .unwrap(),
            )
        }

        fn pid(&self) -> i32 {
            self.0.id() as i32
        }
    }

    impl Drop for FakeLogmon {
        fn drop(&mut self) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.pid()),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = self.0.wait();
        }
    }

    #[test]
    fn the_logmon_holding_the_tasks_fifo_is_stopped_after_its_flush_time() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join(".t.stdout.fifo");
        let other = dir.path().join(".u.stdout.fifo");
        for f in [&fifo, &other] {
            nix::unistd::mkfifo(f, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        }
        let mut mine = FakeLogmon::start(dir.path(), &fifo);
        let mut theirs = FakeLogmon::start(dir.path(), &other);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !(holds(mine.pid(), &fifo) && holds(theirs.pid(), &other)) {
            assert!(
                std::time::Instant::now() < deadline,
                "the FIFOs never opened"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            is_logmon(mine.pid()),
            "{:?}",
            std::fs::read(format!("/proc/{}/cmdline", mine.pid()))
        );
        assert!(!is_logmon(std::process::id() as i32));
        let t0 = std::time::Instant::now();
        let stopped = stop_orphaned_logmon(&fifo, common::state::now_ms());
        assert!(t0.elapsed() >= LOGMON_FLUSH - Duration::from_millis(50));
        assert_eq!(stopped, [mine.pid()]);
        assert!(
            mine.0.wait().unwrap().code().is_none(),
            "killed by a signal"
        );
        // Only the logmon of that FIFO; and none at all is fine.
        assert_eq!(theirs.0.try_wait().unwrap(), None);
        assert!(stop_orphaned_logmon(&fifo, 0).is_empty());
    }

    /// A process with the given pid (`ns_last_pid` makes the next one get it; another
    /// process of the host may take it first, and the pid stays in use while the ended
    /// process's group has a member, so this tries again for a while), or None.
    fn process_with_pid(pid: i32) -> Option<std::process::Child> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
            let mut c = std::process::Command::new("sleep")
                .arg("1000")
                .spawn()
                .unwrap();
            if c.id() as i32 == pid {
                return Some(c);
            }
            let _ = c.kill();
            let _ = c.wait();
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// The flush wait is up to a second, long enough for the pid of a logmon that ended
    /// meanwhile to be taken by another process (pid_max is 32768 on many hosts, and a task
    /// can fork through them): that process must not be killed.
    #[test]
    fn a_logmon_gone_during_its_flush_wait_never_costs_the_process_that_took_its_pid() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join(".t.stdout.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let logmon = FakeLogmon::start(dir.path(), &fifo);
        let pid = logmon.pid();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // Until the shell has forked its `sleep` (which, until its exec, is a copy of it).
        let found = loop {
            let found = logmons_holding(&fifo);
            if found.iter().map(|h| h.pid).eq([pid]) {
                break found;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the FIFO never opened"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        drop(logmon); // it ends (killed and reaped) during the flush wait
        let mut other = process_with_pid(pid).expect("no process got the pid of the logmon");
        let stopped = kill_all(&found, &fifo);
        // A SIGKILL is delivered asynchronously: give it time to show.
        let until = std::time::Instant::now() + Duration::from_millis(500);
        let mut alive = true;
        while alive && std::time::Instant::now() < until {
            alive = other.try_wait().unwrap().is_none();
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = other.kill();
        let _ = other.wait();
        assert!(alive, "the process that took pid {pid} was killed");
        assert!(stopped.is_empty(), "{stopped:?}");
    }

    #[test]
    fn the_collection_is_read_from_the_spec() {
        let mut s: TaskSpec = serde_json::from_str(
            r#"{"version":1,"task_id":"a/t/1","argv":["/e"],"env":{},"cwd":"/t",
                "stdout_path":"/a/alloc/logs/.t.stdout.fifo","stderr_path":"/a/alloc/logs/.t.stderr.fifo",
                "socket_path":"/r/s.sock","state_path":"/s/state.json"}"#,
        )
        .unwrap();
        assert_eq!(collection_of(&s), "nomad");
        assert!(has_logmon("nomad") && has_logmon("") && !has_logmon("executor"));
        s.stdout_path = "/dev/null".into();
        s.stderr_path = "/dev/null".into();
        assert_eq!(collection_of(&s), "none");
    }
}
