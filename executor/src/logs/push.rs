//! The log counters pushed on the `Events` stream (shim API level 5), so that the plugin's
//! metrics read them without a `Status` call per task and scrape.
//!
//! Coalesced per shim: the first change after a quiet spell is pushed at once, later ones at
//! most once per [`PERIOD`], the latest at the end of the period in which it happened (so
//! the plugin has the counts within about [`PERIOD`] of the last change); once the task's
//! output has ended, the final counts at once. While nothing changes, nothing runs: an idle
//! task's shim never wakes for its counters.

use common::proto::executor::LogStatus;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// At most one push per period.
pub const PERIOD: Duration = Duration::from_secs(5);

/// Pushes what `read` returns through `publish` after each change signalled on `changed`,
/// coalesced as the module says; returns after the final push, once `drained` is true (or
/// its sender is gone). A value equal to the last pushed one is not pushed again.
pub async fn run(
    read: impl Fn() -> LogStatus,
    changed: &Notify,
    mut drained: watch::Receiver<bool>,
    period: Duration,
    mut publish: impl FnMut(LogStatus),
) {
    let mut last: Option<LogStatus> = None;
    let mut push = |now: LogStatus| {
        if last.as_ref() != Some(&now) {
            last = Some(now.clone());
            publish(now);
        }
    };
    loop {
        // Quiet until something changes (a change during the last period left a permit: then
        // this returns at once, and that change is pushed now, at the period's end).
        let done = tokio::select! {
            _ = changed.notified() => false,
            _ = output_ended(&mut drained) => true,
        };
        push(read());
        if done {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = output_ended(&mut drained) => {
                push(read());
                return;
            }
        }
    }
}

/// Resolves once the output has ended (or nobody can tell any more).
async fn output_ended(drained: &mut watch::Receiver<bool>) {
    let _ = drained.wait_for(|d| *d).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::proto::executor::LogStream;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    fn status(lines: u64) -> LogStatus {
        LogStatus {
            collection: "executor".into(),
            streams: vec![LogStream {
                name: "stdout".into(),
                lines_written: lines,
                bytes_written: lines * 7,
                ..Default::default()
            }],
            dir: "/a/alloc/logs".into(),
        }
    }

    struct Rig {
        lines: Arc<AtomicU64>,
        changed: Arc<Notify>,
        drained: watch::Sender<bool>,
        /// (seconds since the start, lines) of each push.
        pushed: Arc<Mutex<Vec<(u64, u64)>>>,
        task: tokio::task::JoinHandle<()>,
        t0: Instant,
    }

    impl Rig {
        fn start() -> Rig {
            let lines = Arc::new(AtomicU64::new(0));
            let changed = Arc::new(Notify::new());
            let drained = watch::channel(false).0;
            let pushed = Arc::new(Mutex::new(Vec::new()));
            let t0 = Instant::now();
            let task = tokio::spawn({
                let (lines, changed, rx, pushed) = (
                    lines.clone(),
                    changed.clone(),
                    drained.subscribe(),
                    pushed.clone(),
                );
                async move {
                    run(
                        || status(lines.load(Ordering::SeqCst)),
                        &changed,
                        rx,
                        PERIOD,
                        |s| {
                            let at = (Instant::now() - t0).as_millis() as u64 / 1000;
                            pushed
                                .lock()
                                .unwrap()
                                .push((at, s.streams[0].lines_written));
                        },
                    )
                    .await
                }
            });
            Rig {
                lines,
                changed,
                drained,
                pushed,
                task,
                t0,
            }
        }

        /// The task writes `n` more lines (as the pump does: count, then signal).
        fn write(&self, n: u64) {
            self.lines.fetch_add(n, Ordering::SeqCst);
            self.changed.notify_one();
        }

        async fn at(&self, secs_ms: u64) {
            tokio::time::sleep_until(self.t0 + Duration::from_millis(secs_ms)).await;
        }

        fn pushed(&self) -> Vec<(u64, u64)> {
            self.pushed.lock().unwrap().clone()
        }
    }

    /// Paused time: the runtime's clock jumps to the next timer when all tasks are idle, so
    /// the periods pass without real waiting.
    #[tokio::test(start_paused = true)]
    async fn changes_are_pushed_at_most_once_per_period_with_the_latest_at_its_end() {
        let rig = Rig::start();
        // Idle: nothing is ever pushed.
        rig.at(60_000).await;
        assert_eq!(rig.pushed(), []);

        // A first change goes at once; a burst during the period goes as one push at its end,
        // with the latest counts.
        rig.write(1);
        rig.at(60_001).await;
        assert_eq!(rig.pushed(), [(60, 1)]);
        for _ in 0..1000 {
            rig.write(10);
        }
        rig.at(62_000).await;
        rig.write(9);
        rig.at(64_999).await;
        assert_eq!(rig.pushed(), [(60, 1)], "not before the period's end");
        rig.at(65_001).await;
        assert_eq!(rig.pushed(), [(60, 1), (65, 10_010)]);

        // Quiet again: no more pushes, however long.
        rig.at(600_000).await;
        assert_eq!(rig.pushed().len(), 2);

        // A change signalled without a new count (the pump's zero-byte writes) pushes nothing.
        rig.changed.notify_one();
        rig.at(700_000).await;
        assert_eq!(rig.pushed().len(), 2);

        // A steady trickle: one push per period, never more.
        for s in 0..30u64 {
            rig.write(1);
            rig.at(700_000 + s * 1000 + 500).await;
        }
        let trickle: Vec<(u64, u64)> = rig.pushed()[2..].to_vec();
        assert_eq!(
            trickle.iter().map(|p| p.0).collect::<Vec<_>>(),
            [700, 705, 710, 715, 720, 725],
            "{trickle:?}"
        );
        rig.at(735_000).await;
        assert_eq!(rig.pushed().last(), Some(&(730, 10_040)));
        assert!(!rig.task.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn the_final_counts_go_at_once_when_the_output_ends() {
        let rig = Rig::start();
        rig.write(5);
        rig.at(1_000).await;
        rig.write(3);
        rig.drained.send_replace(true);
        rig.at(1_001).await;
        assert_eq!(rig.pushed(), [(0, 5), (1, 8)]);
        assert!(rig.task.is_finished());
    }
}
