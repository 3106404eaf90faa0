//! What the shim has to tell about its task (the `Events` RPC; the plugin makes task events
//! of them). The last few are remembered, so a plugin that subscribes after they happened
//! (right after Start, or after a restart) still gets them.
//!
//! Level 5: the log counters too, for subscribers that ask (`EventsRequest.log_counts`, the
//! plugin's metrics): the latest pushed value ([`Events::push_log_counts`], coalesced by
//! `logs::push`), never remembered as an event.

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
}

impl Default for Events {
    fn default() -> Self {
        Events {
            live: broadcast::channel(REMEMBERED).0,
            recent: Arc::default(),
            log_counts: Arc::new(watch::channel(None).0),
        }
    }
}

impl Events {
    pub fn publish(&self, message: String) {
        let ev = ShimEvent {
            message,
            at_unix_ms: common::state::now_ms(),
            logs: None,
        };
        // Sent under the lock `subscribe` takes: a new subscriber gets each event once.
        let mut recent = common::sync::lock(&self.recent);
        if recent.len() == REMEMBERED {
            recent.pop_front();
        }
        recent.push_back(ev.clone());
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
        self.log_counts.send_replace(Some(logs));
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
