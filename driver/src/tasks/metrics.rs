//! The task store as the metrics' scrape sees it (crate::metrics::scrape): each task's state,
//! and its shim's log counters: those the shim pushed on its event stream (shim API level 5,
//! `tasks::logs`), else (older shims, a stream that is not open, a task that exited: its
//! exact final counts) from one Status call, all shims asked at once.

use super::Tasks;
use crate::metrics::scrape::{LogCounts, Source, TaskFigures, STREAMS};
use common::proto::executor as shim;
use futures::StreamExt;
use std::collections::HashSet;
use std::time::Duration;

/// How long one shim may take to answer a scrape's Status.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Shims asked at once.
const CONCURRENCY: usize = 32;

#[tonic::async_trait]
impl Source for Tasks {
    async fn figures(&self, final_counts: &HashSet<String>) -> Vec<TaskFigures> {
        let entries = self.store.all();
        futures::stream::iter(entries)
            .map(|entry| {
                let skip = final_counts.contains(&entry.state.task_id);
                async move {
                    let exited = entry.cached_exit().is_some();
                    let pushed = entry.pushed_logs().filter(|_| !exited);
                    let logs = if skip || entry.state.log_collection != "executor" {
                        None
                    } else if pushed.is_some() {
                        pushed
                    } else {
                        let call = async {
                            let mut c = entry.client().await.ok()?;
                            c.status(shim::StatusRequest {}).await.ok()
                        };
                        match tokio::time::timeout(STATUS_TIMEOUT, call).await {
                            Ok(Some(r)) => r.into_inner().logs.map(|l| counts(&l)),
                            _ => None,
                        }
                    };
                    TaskFigures {
                        task_id: entry.state.task_id.clone(),
                        exited,
                        logs,
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await
    }

    fn elides(&self) -> Vec<(String, String)> {
        let e = self.plugin.elides();
        e.default
            .iter()
            .map(|p| ("default".to_owned(), p.version.clone()))
            .chain(
                e.versions
                    .iter()
                    .map(|(n, p)| (n.clone(), p.version.clone())),
            )
            .collect()
    }
}

/// The shim's per-stream figures, by stream name.
pub(super) fn counts(l: &shim::LogStatus) -> [LogCounts; 2] {
    let mut out = [LogCounts::default(); 2];
    for s in &l.streams {
        if let Some(i) = STREAMS.iter().position(|n| *n == s.name) {
            out[i] = LogCounts {
                bytes_written: s.bytes_written,
                bytes_dropped: s.bytes_dropped,
                lines_written: s.lines_written,
                lines_dropped: s.lines_dropped,
                write_errors: s.write_errors,
            };
        }
    }
    out
}
