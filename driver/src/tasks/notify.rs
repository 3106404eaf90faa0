//! Watching idle tasks without a connection to their shims (shim API level 6,
//! `common::notify`).
//!
//! A task's shim sends its events, log counters and its runtime's exit as datagrams to the
//! plugin's notify socket (`<runtime_dir>/notify-<plugin pid>.sock`, bound on first use). The
//! plugin keeps, per task, its entry and a pidfd on the shim (the shim dying is the one thing
//! no datagram can say); it dials the shim only to call it (Wait once the exit is announced,
//! Stop, Exec, Signal). Before, each task held a connection with its Events stream and a Wait
//! call: about 68 KiB of the plugin's memory per task (docs/performance.md, "At scale").
//!
//! Shims below level 6, a kernel without `pidfd_open` (before 5.3) and a socket that cannot
//! be bound keep the stream and the Wait call (`logs::forward_events`, `wait::collect_exit`).

use super::entry::TaskEntry;
use super::store::TaskStore;
use super::Tasks;
use crate::plugin::Plugin;
use common::notify::{Hub, Received, MAX_DATAGRAM};
use common::proto::executor as shim;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use tokio::io::unix::AsyncFd;

impl Tasks {
    /// The plugin's notify socket, bound (and its receiving task started) on first use; None
    /// when it cannot be (the reason is logged once): tasks then keep a connection each.
    async fn hub(&self) -> Option<Arc<Hub>> {
        self.hub
            .get_or_init(|| async {
                let dir = self.plugin.config().runtime_dir.clone();
                let path = dir.join(format!("notify-{}.sock", std::process::id()));
                let bound = super::blocking(move || {
                    std::fs::create_dir_all(&dir)?;
                    remove_stale_sockets(&dir);
                    Ok::<_, std::io::Error>(path)
                })
                .await
                .and_then(|path| Hub::bind(&path));
                match bound {
                    Ok(hub) => {
                        let hub = Arc::new(hub);
                        tracing::info!(socket = %hub.path().display(), "notify socket bound: idle tasks hold no shim connection");
                        tokio::spawn(receive(
                            hub.clone(),
                            self.store.clone(),
                            self.plugin.clone(),
                        ));
                        Some(hub)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot bind the notify socket in runtime_dir; every task keeps a connection to its shim instead");
                        None
                    }
                }
            })
            .await
            .clone()
    }

    /// Removes the notify socket's file (the plugin is exiting; shims then fail to send until
    /// the next plugin subscribes).
    pub fn remove_notify_socket(&self) {
        if let Some(Some(hub)) = self.hub.get() {
            let _ = std::fs::remove_file(hub.path());
        }
    }

    /// Starts watching a task the store holds: through the notify socket for a level-6 shim
    /// (the events remembered since `since_unix_ms` are forwarded now, the connection is
    /// dropped), else over an Events stream and a Wait call.
    pub(super) async fn watch(&self, entry: &Arc<TaskEntry>, since_unix_ms: i64) {
        let s = &entry.state;
        if common::shim_api::require(
            common::shim_api::NOTIFY,
            s.shim_api_level,
            &s.executor_version,
        )
        .is_ok()
        {
            if let Some(hub) = self.hub().await {
                match self.subscribe(entry, &hub, since_unix_ms).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(task_id = %s.task_id, error = %e, "cannot watch the task through the notify socket; keeping a connection to its shim")
                    }
                }
            }
        }
        self.forward_events(entry, since_unix_ms);
    }

    async fn subscribe(
        &self,
        entry: &Arc<TaskEntry>,
        hub: &Hub,
        since_unix_ms: i64,
    ) -> Result<(), String> {
        let s = &entry.state;
        let (pid, start) = (s.shim_pid, s.shim_start_time);
        // Opened before subscribing: a shim that dies in between is still noticed.
        let pidfd = super::blocking(move || open_pidfd(pid, start))
            .await
            .map_err(|e| format!("pidfd_open of the shim (pid {pid}): {e}"))?;
        let log_counts = s.log_collection == "executor";
        let mut c = entry.client().await.map_err(|e| e.to_string())?;
        let mut stream = c
            .events(shim::EventsRequest {
                since_unix_ms,
                log_counts,
                notify_socket: hub.path().display().to_string(),
            })
            .await
            .map_err(|s| s.message().to_owned())?
            .into_inner();
        if log_counts {
            entry.set_pushed_logs(Some(Default::default()));
        }
        // What the shim remembered (and its current counters); the stream then ends.
        while let Ok(Some(ev)) = stream.message().await {
            apply(&self.plugin, entry, ev);
        }
        entry.set_watched();
        drop(c);
        entry.forget_client().await;
        let task = entry.clone();
        let watcher = tokio::spawn(async move {
            if let Some(fd) = pidfd {
                // SAFETY: the AsyncFd owns the pidfd until it is dropped.
                if let Ok(fd) = unsafe { AsyncFd::register(fd) } {
                    let _ = fd.readable().await;
                }
            }
            // The shim is gone: its exit (recorded, or a clear failure) if not known yet.
            task.set_pushed_logs(None);
            if task.cached_exit().is_none() {
                super::wait::collect_exit(&task).await;
            }
        });
        entry.set_event_forwarder(watcher.abort_handle());
        Ok(())
    }
}

/// Removes the notify sockets of plugin processes that are gone (killed before they could
/// remove their own), so they do not pile up in runtime_dir.
fn remove_stale_sockets(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("notify-"))
            .and_then(|n| n.strip_suffix(".sock"))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A pidfd on `pid` if it is still the process that started at `start` (None: it is gone).
fn open_pidfd(pid: i32, start: u64) -> std::io::Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // Checked after opening: the pidfd refers to this process even if the pid is reused later.
    Ok(common::proc::is_same_process(pid, start).then_some(fd))
}

/// One thing a shim told (on the subscription's stream or as a datagram).
fn apply(plugin: &Plugin, entry: &Arc<TaskEntry>, ev: shim::ShimEvent) {
    if let Some(l) = &ev.logs {
        entry.set_pushed_logs(Some(super::metrics::counts(l)));
    }
    if ev.exited && entry.cached_exit().is_none() && entry.start_collecting() {
        let task = entry.clone();
        tokio::spawn(async move { super::wait::collect_exit(&task).await });
    }
    if !ev.message.is_empty() {
        let s = &entry.state;
        plugin.emit(&s.task_id, &s.alloc_id, &s.task_name, ev.message);
    }
}

/// The notify socket's datagrams, for as long as the plugin runs.
async fn receive(hub: Arc<Hub>, store: Arc<TaskStore>, plugin: Arc<Plugin>) {
    let me = nix::unistd::geteuid().as_raw();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let r = match hub.recv(&mut buf).await {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Not expected of a bound datagram socket; paced so a lasting error cannot spin.
                tracing::error!(error = %e, "cannot read the notify socket; retrying in 1 s");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        match r {
            Ok(Received { uid, .. }) if uid != me => {
                tracing::warn!(
                    uid,
                    "dropped a datagram on the notify socket from another user"
                )
            }
            Ok(Received { event, .. }) => match store.get(&event.task_id) {
                Some(entry) => apply(&plugin, &entry, event),
                None => {
                    tracing::debug!(task_id = %event.task_id, "datagram for a task this plugin does not track")
                }
            },
            Err(e) => tracing::warn!(error = %e, "undecodable datagram on the notify socket"),
        }
    }
}
