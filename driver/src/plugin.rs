//! The plugin's shared state: configuration, what the fingerprint and Nomad's topology told
//! us, and the task-event fan-out. (The server that hosts the services is `server`; the tasks
//! themselves are `tasks`.)

use common::config::PluginConfig;
use common::proto::base::ClientTopology;
use common::proto::drivers::DriverTaskEvent;
use std::sync::{Arc, RwLock};
use tokio::sync::broadcast;

/// State shared by all services. Only a cache: everything needed to serve a task again is in
/// the task's `driver_state` and its shim, so a new plugin process loses nothing.
pub struct Plugin {
    config: RwLock<PluginConfig>,
    /// Node compute (MHz) from Nomad >= 1.7's topology; None on 1.6 (we fingerprint it).
    topology_mhz: RwLock<Option<u64>>,
    /// The Elide version from the last fingerprint, for task events.
    elide_version: RwLock<Option<String>>,
    /// Fan-out of task events to every open TaskEvents stream.
    pub events: broadcast::Sender<DriverTaskEvent>,
}

impl Plugin {
    pub fn new() -> Arc<Self> {
        let (events, _) = broadcast::channel(256);
        Arc::new(Self {
            config: RwLock::new(PluginConfig::default()),
            topology_mhz: RwLock::new(None),
            elide_version: RwLock::new(None),
            events,
        })
    }

    pub fn config(&self) -> PluginConfig {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn set_config(&self, cfg: PluginConfig, topology_mhz: Option<u64>) {
        match self.config.write() {
            Ok(mut c) => *c = cfg,
            Err(p) => *p.into_inner() = cfg,
        }
        if let Ok(mut t) = self.topology_mhz.write() {
            *t = topology_mhz;
        }
    }

    pub fn topology_mhz(&self) -> Option<u64> {
        self.topology_mhz.read().ok().and_then(|t| *t)
    }

    pub fn set_elide_version(&self, v: Option<String>) {
        if let Ok(mut e) = self.elide_version.write() {
            *e = v;
        }
    }

    pub fn elide_version(&self) -> Option<String> {
        self.elide_version.read().ok().and_then(|e| e.clone())
    }

    /// MHz of one core: from Nomad's topology (>= 1.7) or our own fingerprint (1.6, which
    /// reads /sys and /proc: call it off the async runtime).
    pub fn mhz_per_core(&self) -> f64 {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        match self.topology_mhz() {
            Some(total) => total as f64 / cores,
            None => crate::stats::fingerprint_mhz_per_core(),
        }
    }

    /// Publishes a task event (a `Driver` event in `nomad alloc status`).
    pub fn emit(&self, task_id: &str, alloc_id: &str, task_name: &str, message: String) {
        tracing::info!(task_id, message = %message, "task event");
        let _ = self.events.send(DriverTaskEvent {
            task_id: task_id.to_owned(),
            alloc_id: alloc_id.to_owned(),
            task_name: task_name.to_owned(),
            timestamp: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            message,
            annotations: Default::default(),
        });
    }
}

/// Total usable compute (MHz) from Nomad >= 1.7's client topology.
pub fn total_compute_from_topology(t: &ClientTopology) -> Option<u64> {
    if t.override_total_compute > 0 {
        return Some(t.override_total_compute);
    }
    let sum: u64 = t
        .cores
        .iter()
        .filter(|c| !c.disable)
        .map(|c| {
            if c.max_speed > 0 {
                c.max_speed
            } else if c.base_speed > 0 {
                c.base_speed
            } else {
                c.guess_speed
            }
        })
        .sum();
    (sum > 0).then_some(sum)
}
