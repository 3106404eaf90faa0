//! What the shim has to tell about its task (the `Events` RPC; the plugin makes task events
//! of them). The last few are remembered, so a plugin that subscribes after they happened
//! (right after Start, or after a restart) still gets them.
//!
//! Level 5: the log counters too, for subscribers that ask (`EventsRequest.log_counts`, the
//! plugin's metrics): the latest pushed value ([`Events::push_log_counts`], coalesced by
//! `logs::push`), never remembered as an event.
//!
//! Level 6: to a plugin that gives its notify socket, the same as datagrams
//! ([`Events::subscribe_notify`], `common::notify`), the runtime's exit included, so the plugin
//! holds no connection to an idle task's shim.

use common::notify::Notifier;
use common::proto::executor::{LogStatus, ShimEvent};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

/// How many past events a new subscriber can still get.
const REMEMBERED: usize = 16;

#[derive(Clone)]
pub struct Events {
    live: broadcast::Sender<ShimEvent>,
    recent: Arc<Mutex<VecDeque<ShimEvent>>>,
    /// The log counters last pushed (None before the first push).
    log_counts: Arc<watch::Sender<Option<LogStatus>>>,
    /// Level 6: the plugin that takes datagrams (the latest to subscribe).
    notify: Arc<Mutex<Option<NotifyTarget>>>,
}

struct NotifyTarget {
    notifier: Notifier,
    /// Whether it asked for the log counters.
    log_counts: bool,
    /// The task that tells it the runtime's exit.
    exit_watch: tokio::task::AbortHandle,
}

impl Drop for NotifyTarget {
    fn drop(&mut self) {
        self.exit_watch.abort();
    }
}

impl Default for Events {
    fn default() -> Self {
        Events {
            live: broadcast::channel(REMEMBERED).0,
            recent: Arc::default(),
            log_counts: Arc::new(watch::channel(None).0),
            notify: Arc::default(),
        }
    }
}

impl Events {
    pub fn publish(&self, message: String) {
        let ev = ShimEvent {
            message,
            at_unix_ms: common::state::now_ms(),
            ..Default::default()
        };
        // Sent under the lock `subscribe` takes: a new subscriber gets each event once.
        let mut recent = common::sync::lock(&self.recent);
        if recent.len() == REMEMBERED {
            recent.pop_front();
        }
        recent.push_back(ev.clone());
        if let Some(t) = common::sync::lock(&self.notify).as_ref() {
            t.notifier.message(ev.message.clone(), ev.at_unix_ms);
        }
        let _ = self.live.send(ev);
    }

    /// The remembered events from `since_unix_ms` on, and a receiver of the new ones (taken
    /// under the same lock, so none is missed or repeated).
    pub fn subscribe(
        &self,
        since_unix_ms: i64,
    ) -> (Vec<ShimEvent>, broadcast::Receiver<ShimEvent>) {
        let recent = common::sync::lock(&self.recent);
        let past = recent
            .iter()
            .filter(|e| e.at_unix_ms >= since_unix_ms)
            .cloned()
            .collect();
        (past, self.live.subscribe())
    }

    /// Sends the log counters to the subscribers that asked for them (only the latest value
    /// is kept: a slow subscriber skips to it).
    pub fn push_log_counts(&self, logs: LogStatus) {
        if let Some(t) = common::sync::lock(&self.notify).as_ref() {
            if t.log_counts {
                t.notifier.logs(logs.clone());
            }
        }
        self.log_counts.send_replace(Some(logs));
    }

    /// Level 6: from now on every event (and, with `log_counts`, every counters push) goes to
    /// `notifier` as a datagram, instead of to any earlier notify subscriber; `exit_watch` is
    /// the task that sends it the runtime's exit (stopped when another plugin subscribes).
    /// Returns the remembered events from `since_unix_ms` on (taken under the lock `publish`
    /// holds, so none is missed or sent twice).
    pub fn subscribe_notify(
        &self,
        since_unix_ms: i64,
        notifier: Notifier,
        log_counts: bool,
        exit_watch: tokio::task::AbortHandle,
    ) -> Vec<ShimEvent> {
        let recent = common::sync::lock(&self.recent);
        *common::sync::lock(&self.notify) = Some(NotifyTarget {
            notifier,
            log_counts,
            exit_watch,
        });
        recent
            .iter()
            .filter(|e| e.at_unix_ms >= since_unix_ms)
            .cloned()
            .collect()
    }

    /// A receiver of the log counters pushed from now on (what was pushed before is marked
    /// seen: a new subscriber reads the current counts itself).
    pub fn subscribe_log_counts(&self) -> watch::Receiver<Option<LogStatus>> {
        self.log_counts.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn late_subscribers_get_the_remembered_events_then_live_ones() {
        let ev = Events::default();
        for i in 0..20 {
            ev.publish(format!("e{i}"));
        }
        let (past, mut rx) = ev.subscribe(0);
        assert_eq!(past.len(), REMEMBERED);
        assert_eq!(past[0].message, "e4");
        let (none, _) = ev.subscribe(common::state::now_ms() + 60_000);
        assert!(none.is_empty());
        ev.publish("live".into());
        assert_eq!(rx.recv().await.unwrap().message, "live");
    }
}
