//! What is read when Prometheus scrapes, not before: tasks by state, the Elide binaries the
//! fingerprint found, and the log counters each shim keeps (bytes and lines written and
//! dropped, failed writes; `LogStream` in the shim API). An idle shim is woken only by a
//! scrape — one Status call per scrape, none for a task whose exit and final counts are known.
//!
//! The counters are the plugin's totals over every task it has tracked: a task that leaves
//! (DestroyTask) keeps its last counts in `retired`, so a total never goes down while the
//! plugin process lives (a new plugin process starts from what its recovered tasks report,
//! which Prometheus sees as a counter reset).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

/// One log stream's counters, as a shim reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogCounts {
    pub bytes_written: u64,
    pub bytes_dropped: u64,
    pub lines_written: u64,
    pub lines_dropped: u64,
    pub write_errors: u64,
}

impl LogCounts {
    fn add(&mut self, o: &LogCounts) {
        self.bytes_written += o.bytes_written;
        self.bytes_dropped += o.bytes_dropped;
        self.lines_written += o.lines_written;
        self.lines_dropped += o.lines_dropped;
        self.write_errors += o.write_errors;
    }

    /// Field-wise max: a shim's counters only grow, so a smaller figure is an older one.
    pub fn max(&self, o: &LogCounts) -> LogCounts {
        LogCounts {
            bytes_written: self.bytes_written.max(o.bytes_written),
            bytes_dropped: self.bytes_dropped.max(o.bytes_dropped),
            lines_written: self.lines_written.max(o.lines_written),
            lines_dropped: self.lines_dropped.max(o.lines_dropped),
            write_errors: self.write_errors.max(o.write_errors),
        }
    }
}

/// The streams, in the shim's order.
pub const STREAMS: [&str; 2] = ["stdout", "stderr"];

/// One tracked task at scrape time.
#[derive(Debug, Clone, Default)]
pub struct TaskFigures {
    pub task_id: String,
    pub exited: bool,
    /// Its shim's log counters (stdout, stderr), None when they could not be read now.
    pub logs: Option<[LogCounts; 2]>,
}

/// Where a scrape reads the tasks from (the plugin's task store; a fake in tests).
#[tonic::async_trait]
pub trait Source: Send + Sync + 'static {
    /// Every tracked task; no log counts (no call) for the tasks in `final_counts`, whose
    /// counters were read after they exited.
    async fn figures(&self, final_counts: &HashSet<String>) -> Vec<TaskFigures>;
    /// The Elide binaries the fingerprint found: (name, version); name "default" or an
    /// `elide_versions` name.
    fn elides(&self) -> Vec<(String, String)>;
}

static SOURCE: OnceLock<Arc<dyn Source>> = OnceLock::new();

/// Set once by the server (driver/src/server.rs).
pub fn set_source(source: Arc<dyn Source>) {
    let _ = SOURCE.set(source);
}

#[derive(Debug, Default)]
struct Seen {
    logs: [LogCounts; 2],
    /// Read after the task had exited: these are its final counts.
    last: bool,
}

#[derive(Debug, Default)]
struct State {
    running: u64,
    exited: u64,
    per_task: HashMap<String, Seen>,
    retired: [LogCounts; 2],
    unreadable: u64,
    elides: Vec<(String, String)>,
}

impl State {
    /// Takes in one scrape's figures.
    pub(crate) fn update(&mut self, figures: Vec<TaskFigures>, elides: Vec<(String, String)>) {
        self.running = figures.iter().filter(|f| !f.exited).count() as u64;
        self.exited = figures.len() as u64 - self.running;
        self.unreadable = 0;
        let mut present = HashMap::with_capacity(figures.len());
        for f in figures {
            let mut seen = self.per_task.remove(&f.task_id).unwrap_or_default();
            match f.logs {
                Some(l) => {
                    seen.logs = [seen.logs[0].max(&l[0]), seen.logs[1].max(&l[1])];
                    seen.last = f.exited;
                }
                None if !seen.last => self.unreadable += 1,
                None => {}
            }
            present.insert(f.task_id, seen);
        }
        // Tasks gone since the last scrape keep their counts in the totals.
        for (_, gone) in self.per_task.drain() {
            self.retired[0].add(&gone.logs[0]);
            self.retired[1].add(&gone.logs[1]);
        }
        self.per_task = present;
        self.elides = elides;
    }

    fn totals(&self) -> [LogCounts; 2] {
        let mut t = self.retired;
        for s in self.per_task.values() {
            t[0].add(&s.logs[0]);
            t[1].add(&s.logs[1]);
        }
        t
    }
}

/// The scrape-time series (a prometheus-client `Collector`).
#[derive(Debug, Default)]
pub struct Snapshot {
    state: Mutex<State>,
    /// One scrape at a time reads the shims.
    refreshing: tokio::sync::Mutex<()>,
}

impl Snapshot {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the tasks (and their shims) from the source, if one is set.
    pub async fn refresh(&self) {
        let Some(source) = SOURCE.get() else { return };
        self.refresh_from(source.as_ref()).await
    }

    pub async fn refresh_from(&self, source: &dyn Source) {
        let _one = self.refreshing.lock().await;
        let finals: HashSet<String> = {
            let s = self.lock();
            s.per_task
                .iter()
                .filter(|(_, v)| v.last)
                .map(|(k, _)| k.clone())
                .collect()
        };
        let figures = source.figures(&finals).await;
        let elides = source.elides();
        self.lock().update(figures, elides);
    }

    #[cfg(test)]
    pub(crate) fn is_final(&self, task_id: &str) -> bool {
        self.lock().per_task.get(task_id).is_some_and(|s| s.last)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabel {
    stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ElideLabels {
    name: String,
    version: String,
}

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&prometheus_client::registry::Unit>,
    values: [u64; 2],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (stream, v) in STREAMS.into_iter().zip(values) {
        let labels = StreamLabel { stream };
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.lock();
        {
            let mut tasks = encoder.encode_descriptor(
                "tasks",
                "Tasks this plugin process tracks, by state (running; exited, not yet destroyed)",
                None,
                MetricType::Gauge,
            )?;
            for (state, v) in [("running", s.running), ("exited", s.exited)] {
                ConstGauge::new(v as i64).encode(tasks.encode_family(&StateLabel { state })?)?;
            }
        }
        ConstGauge::new(s.unreadable as i64).encode(encoder.encode_descriptor(
            "log_counts_unreadable_tasks",
            "Tasks whose shim did not answer for its log counters at the last scrape",
            None,
            MetricType::Gauge,
        )?)?;
        let t = s.totals();
        let bytes = prometheus_client::registry::Unit::Bytes;
        counter_family(
            &mut encoder,
            "log_written",
            "Task output written to the log files by the shims (log_collection = \"executor\")",
            Some(&bytes),
            [t[0].bytes_written, t[1].bytes_written],
        )?;
        counter_family(
            &mut encoder,
            "log_dropped",
            "Task output the shims could not write (disk full, read-only …) and lost",
            Some(&bytes),
            [t[0].bytes_dropped, t[1].bytes_dropped],
        )?;
        counter_family(
            &mut encoder,
            "log_lines_written",
            "Lines (newlines) of task output written to the log files",
            None,
            [t[0].lines_written, t[1].lines_written],
        )?;
        counter_family(
            &mut encoder,
            "log_lines_dropped",
            "Lines (newlines) of task output lost",
            None,
            [t[0].lines_dropped, t[1].lines_dropped],
        )?;
        counter_family(
            &mut encoder,
            "log_write_errors",
            "Failed writes of task output (each one a run of lost output)",
            None,
            [t[0].write_errors, t[1].write_errors],
        )?;
        {
            let mut info = encoder.encode_descriptor(
                "elide_binary",
                "The Elide binaries the last fingerprint found (value 1): name is \"default\" or an elide_versions name",
                None,
                MetricType::Gauge,
            )?;
            for (name, version) in &s.elides {
                let labels = ElideLabels {
                    name: name.clone(),
                    version: version.clone(),
                };
                ConstGauge::new(1i64).encode(info.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
