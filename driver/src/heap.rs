//! Giving the heap a burst of task starts freed back to the kernel.
//!
//! A start storm (hundreds of StartTask calls in flight at once, each with its spec, its
//! shim's handshake and its gRPC buffers) grows glibc's arenas far above what the tasks keep
//! once they run; the freed chunks stay resident, scattered between live ones, so the arenas'
//! tops cannot shrink. Measured at 1,000 stand-in tasks: 82 KiB of plugin RSS per task after
//! the storm against 25 KiB after a quick start of the same tasks (docs/performance.md, "At
//! scale"). `malloc_trim(0)` hands every free page of every arena back (`madvise`), so once
//! no start, recovery or stop has happened for [`QUIET`] the plugin trims once.

use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::watch;

/// How long the task RPCs must have been quiet before the plugin trims.
pub const QUIET: Duration = Duration::from_secs(2);

static ACTIVITY: OnceLock<watch::Sender<u64>> = OnceLock::new();

/// A task was started, recovered or destroyed: trim once things are quiet. Needs a tokio
/// runtime (the first call starts the task that trims).
pub fn note_activity() {
    ACTIVITY
        .get_or_init(|| {
            let (tx, rx) = watch::channel(0);
            tokio::spawn(trim_when_quiet(rx, trim));
            tx
        })
        .send_modify(|n| *n = n.wrapping_add(1));
}

async fn trim_when_quiet(mut rx: watch::Receiver<u64>, trim: fn() -> bool) {
    // Each round: wait for activity, then for QUIET without any, then trim.
    while rx.changed().await.is_ok() {
        loop {
            match tokio::time::timeout(QUIET, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return,
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
        tracing::debug!(
            released,
            trim_us = started.elapsed().as_micros() as u64,
            "heap trimmed after task activity"
        );
    }
}

#[cfg(target_env = "gnu")]
fn trim() -> bool {
    // SAFETY: malloc_trim only walks and releases glibc's own free lists.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(target_env = "gnu"))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    static TRIMS: AtomicU32 = AtomicU32::new(0);

    fn counted() -> bool {
        TRIMS.fetch_add(1, Ordering::SeqCst);
        true
    }

    #[tokio::test(start_paused = true)]
    async fn trims_once_after_a_quiet_spell_never_during_a_burst() {
        let (tx, rx) = watch::channel(0u64);
        let trimmer = tokio::spawn(trim_when_quiet(rx, counted));
        // A burst: activity every second for 10 s (QUIET is 2 s): no trim.
        for _ in 0..10 {
            tx.send_modify(|n| *n += 1);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(TRIMS.load(Ordering::SeqCst), 0);
        // Quiet: one trim, and none more while nothing happens.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(TRIMS.load(Ordering::SeqCst), 1);
        // The next burst trims once more.
        tx.send_modify(|n| *n += 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(TRIMS.load(Ordering::SeqCst), 2);
        drop(tx);
        trimmer.await.unwrap();
    }
}
