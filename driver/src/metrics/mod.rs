//! The plugin's own Prometheus metrics (`telemetry { prometheus_listen = "…" }`, off by
//! default): what the driver does, not what the tasks do (Nomad's own `nomad_client_allocs_*`
//! series cover those). Names under `nomad_driver_elide_`, base units, `_total` counters,
//! histograms for latencies, and labels of bounded cardinality only — never a task or alloc id.
//!
//! - this module: the registry and the one-line hooks the lifecycle calls (always recorded:
//!   a few atomics, whether or not the endpoint is on);
//! - [`scrape`]: what is read when Prometheus scrapes — tasks by state, and the log counters
//!   every shim keeps (one Status call per shim per scrape, no wakeups in between);
//! - [`listen`]: the `prometheus_listen` address; [`server`]: the HTTP endpoint on the
//!   plugin's tokio runtime, Prometheus text format or OpenMetrics by the `Accept` header.

pub mod listen;
pub mod scrape;
pub mod server;
pub mod timed;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// Every series' name starts with this (`nomad_driver_elide_…`).
pub const PREFIX: &str = "nomad_driver_elide";

/// How a StartTask ended: started, or the step that refused it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum StartOutcome {
    started,
    /// The job's config (task config, task name, spec validation).
    config,
    /// The job's script (missing, outside the task dir, executable …).
    script,
    /// The node: Elide or the shim missing or untrusted.
    node,
    /// Launching the shim, or reaching it.
    shim,
    /// The task's sandbox could not be set up.
    sandbox,
    /// The task's cgroup (resource limits) could not be set up.
    cgroup,
    /// The runtime could not be started (exec failure, log FIFOs, state file …).
    runtime,
}

/// How a RecoverTask ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RecoveryOutcome {
    /// Reattached to the task's running shim.
    reattached,
    /// The shim was gone but had recorded the task's exit.
    exited,
    /// Already tracked by this plugin process (the agent restarted, the plugin did not).
    already_tracked,
    /// The shim died without recording an exit (it left its socket or state file): Nomad
    /// restarts the task.
    lost,
    /// The shim and its state were already gone as DestroyTask leaves them (Nomad asks
    /// again for tasks it destroyed before the restart): nothing to recover, nothing lost.
    destroyed,
    /// Refused (bad handle, another task's shim, a shim too old).
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StartLabel {
    outcome: StartOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecoveryLabel {
    outcome: RecoveryOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCodeLabel {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    revision: String,
    shim_api_level: String,
}

/// Latency buckets (seconds): 1 ms to ~65 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17)
}

fn new_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// The plugin's metrics. One per process ([`metrics`]).
pub struct Metrics {
    registry: Registry,
    starts: Family<StartLabel, Counter>,
    start_duration: Histogram,
    shim_ready_duration: Histogram,
    recoveries: Family<RecoveryLabel, Counter>,
    shims_lost: Counter,
    oom_kills: Counter,
    exec_sessions: Family<KindLabel, Counter>,
    exec_active: Gauge,
    exec_duration: Family<KindLabel, Histogram>,
    shim_calls: Family<MethodLabel, Histogram, fn() -> Histogram>,
    shim_call_errors: Family<MethodCodeLabel, Counter>,
    scrape: Arc<scrape::Snapshot>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let m = Metrics {
            starts: Family::default(),
            start_duration: new_histogram(),
            shim_ready_duration: new_histogram(),
            recoveries: Family::default(),
            shims_lost: Counter::default(),
            oom_kills: Counter::default(),
            exec_sessions: Family::default(),
            exec_active: Gauge::default(),
            exec_duration: Family::new_with_constructor(new_histogram),
            shim_calls: Family::new_with_constructor(new_histogram),
            shim_call_errors: Family::default(),
            scrape: Arc::new(scrape::Snapshot::default()),
            registry: Registry::default(),
        };
        registry.register(
            "build",
            "The plugin's build: version, git revision and the shim API level it speaks (value 1)",
            Info::new(BuildLabels {
                version: crate::VERSION.to_owned(),
                revision: crate::REVISION.to_owned(),
                shim_api_level: common::shim_api::API_LEVEL.to_string(),
            }),
        );
        registry.register(
            "task_starts",
            "StartTask calls by outcome: started, or the step that refused the task (config, script, node, shim, sandbox, cgroup, runtime)",
            m.starts.clone(),
        );
        registry.register_with_unit(
            "start_task_duration",
            "StartTask latency, from the call to the task running or refused",
            Unit::Seconds,
            m.start_duration.clone(),
        );
        registry.register_with_unit(
            "shim_ready_duration",
            "From spawning a task's elide-executor to its READY",
            Unit::Seconds,
            m.shim_ready_duration.clone(),
        );
        registry.register(
            "recoveries",
            "RecoverTask calls by outcome (reattached, exited, already_tracked, lost, destroyed, failed)",
            m.recoveries.clone(),
        );
        registry.register(
            "shims_lost",
            "Shims that died unexpectedly: gone without recording their task's exit",
            m.shims_lost.clone(),
        );
        registry.register(
            "oom_kills",
            "Tasks killed by the kernel's OOM killer (their cgroup's memory limit)",
            m.oom_kills.clone(),
        );
        registry.register(
            "exec_sessions",
            "Commands run inside tasks (nomad alloc exec: kind=\"streaming\"; ExecTask, e.g. script checks: kind=\"oneshot\")",
            m.exec_sessions.clone(),
        );
        registry.register(
            "exec_sessions_active",
            "Commands running inside tasks now",
            m.exec_active.clone(),
        );
        registry.register_with_unit(
            "exec_session_duration",
            "How long commands run inside tasks took, by kind",
            Unit::Seconds,
            m.exec_duration.clone(),
        );
        registry.register_with_unit(
            "shim_call_duration",
            "Latency of the plugin's calls to shims, by shim API method (Wait blocks until the task exits)",
            Unit::Seconds,
            m.shim_calls.clone(),
        );
        registry.register(
            "shim_call_errors",
            "Failed calls to shims, by shim API method and gRPC code",
            m.shim_call_errors.clone(),
        );
        registry.register_collector(Box::new(m.scrape.clone()));
        // Every outcome from the start, at 0: a series that appears already at 1 hides its
        // first increase from rate() and increase() (and so from the alerts).
        use StartOutcome as S;
        for outcome in [
            S::started,
            S::config,
            S::script,
            S::node,
            S::shim,
            S::sandbox,
            S::cgroup,
            S::runtime,
        ] {
            let _ = m.starts.get_or_create(&StartLabel { outcome });
        }
        use RecoveryOutcome as R;
        for outcome in [
            R::reattached,
            R::exited,
            R::already_tracked,
            R::lost,
            R::destroyed,
            R::failed,
        ] {
            let _ = m.recoveries.get_or_create(&RecoveryLabel { outcome });
        }
        for kind in ["streaming", "oneshot"] {
            let _ = m.exec_sessions.get_or_create(&KindLabel { kind });
        }
        Metrics { registry, ..m }
    }

    /// The registry, for encoding.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn snapshot(&self) -> &Arc<scrape::Snapshot> {
        &self.scrape
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Which step refused a StartTask, from its error (the messages are this crate's and the
/// shim's own: driver/src/tasks/start.rs, script.rs, executor/src/error.rs).
pub fn start_outcome(result: &Result<impl Sized, crate::tasks::TaskError>) -> StartOutcome {
    let Err(s) = result else {
        return StartOutcome::started;
    };
    let m = s.message();
    let m = m.as_str();
    if m.starts_with("script ") {
        StartOutcome::script
    } else if m.starts_with("invalid elide task config")
        || m.starts_with("cannot run this task")
        || m.starts_with("task name")
        || m.starts_with("StartTask without")
        || s.code() == tonic::Code::InvalidArgument
    {
        StartOutcome::config
    } else if m.contains("not found on this node")
        || m.starts_with("cannot run Elide")
        || m.starts_with("elide-executor not found")
        || m.starts_with("cannot run the elide-executor")
    {
        StartOutcome::node
    } else if m.starts_with("cannot start the task's elide-executor")
        || m.contains("reported ready but does not answer")
        || m.starts_with("cannot create the task state dir")
    {
        StartOutcome::shim
    } else if m.contains("resource limits cannot be enforced") || m.contains("cgroup") {
        StartOutcome::cgroup
    } else if m.contains("sandbox") {
        StartOutcome::sandbox
    } else {
        StartOutcome::runtime
    }
}

/// StartTask ended (hook in driver_service).
pub fn start_finished<T>(began: Instant, result: &Result<T, crate::tasks::TaskError>) {
    let m = metrics();
    m.start_duration.observe(began.elapsed().as_secs_f64());
    m.starts
        .get_or_create(&StartLabel {
            outcome: start_outcome(result),
        })
        .inc();
}

/// A shim said READY `took` after it was spawned.
pub fn shim_ready(took: Duration) {
    metrics().shim_ready_duration.observe(took.as_secs_f64());
}

/// RecoverTask ended with `outcome`.
pub fn recovered(outcome: RecoveryOutcome) {
    metrics()
        .recoveries
        .get_or_create(&RecoveryLabel { outcome })
        .inc();
}

/// A task's shim died without recording its exit.
pub fn shim_lost() {
    metrics().shims_lost.inc();
}

/// This process learned a task's exit (once per task).
pub fn task_exited(exit: &common::proto::executor::ExitStatus) {
    if exit.oom_killed {
        metrics().oom_kills.inc();
    }
}

/// A command run inside a task: counted now, its duration when the guard drops.
pub fn exec_session(kind: &'static str) -> ExecSession {
    let m = metrics();
    m.exec_sessions.get_or_create(&KindLabel { kind }).inc();
    m.exec_active.inc();
    ExecSession {
        kind,
        began: Instant::now(),
    }
}

/// See [`exec_session`].
pub struct ExecSession {
    kind: &'static str,
    began: Instant,
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        let m = metrics();
        m.exec_active.dec();
        m.exec_duration
            .get_or_create(&KindLabel { kind: self.kind })
            .observe(self.began.elapsed().as_secs_f64());
    }
}

/// The shim API methods, by gRPC path (a fixed set: the label stays bounded).
fn shim_method(path: &str) -> &'static str {
    const METHODS: &[&str] = &[
        "Start", "Wait", "Stop", "Signal", "Status", "Stats", "Shutdown", "Exec", "Events",
    ];
    let name = path.rsplit('/').next().unwrap_or("");
    METHODS
        .iter()
        .find(|m| **m == name)
        .copied()
        .unwrap_or("other")
}

/// gRPC code names (bounded).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

/// A call to a shim (gRPC path `path`) answered after `took`, with `code` (`Ok` for success).
pub fn shim_call(path: &str, took: Duration, code: tonic::Code) {
    let m = metrics();
    let method = shim_method(path);
    m.shim_calls
        .get_or_create(&MethodLabel { method })
        .observe(took.as_secs_f64());
    if code != tonic::Code::Ok {
        m.shim_call_errors
            .get_or_create(&MethodCodeLabel {
                method,
                code: code_name(code),
            })
            .inc();
    }
}

/// SetConfig's `telemetry.prometheus_listen`: checked always, bound (or re-bound, or
/// stopped) only in the long-lived plugin process. The error is the operator's to fix.
pub async fn configure(listen: Option<&str>, long_lived: bool) -> Result<(), String> {
    let listen = listen
        .map(listen::parse)
        .transpose()
        .map_err(|e| e.to_string())?;
    if !long_lived {
        return Ok(());
    }
    server::configure(listen).await.map_err(|e| e.to_string())
}

/// The text the endpoint serves: OpenMetrics when `openmetrics`, else Prometheus text format
/// 0.0.4 (what `promtool check metrics` and older scrapers read).
pub fn encode(openmetrics: bool) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, metrics().registry())?;
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, metrics().registry())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
