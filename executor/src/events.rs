//! What the shim has to tell about its task (the `Events` RPC; the plugin makes task events
//! of them). The last few are remembered, so a plugin that subscribes after they happened
//! (right after Start, or after a restart) still gets them.

use common::proto::executor::ShimEvent;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// How many past events a new subscriber can still get.
const REMEMBERED: usize = 16;

#[derive(Clone)]
pub struct Events {
    live: broadcast::Sender<ShimEvent>,
    recent: Arc<Mutex<VecDeque<ShimEvent>>>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            live: broadcast::channel(REMEMBERED).0,
            recent: Arc::default(),
        }
    }
}

impl Events {
    pub fn publish(&self, message: String) {
        let ev = ShimEvent {
            message,
            at_unix_ms: common::state::now_ms(),
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
