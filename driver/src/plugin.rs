//! The plugin's shared state: configuration, what the fingerprint and Nomad's topology told
//! us, and the task-event fan-out. (The process that hosts the services is `serve`; the tasks
//! themselves are `tasks`.)

use crate::config::PluginConfig;
use common::proto::base::ClientTopology;
use common::proto::drivers::DriverTaskEvent;
use std::sync::{Arc, RwLock};
use tokio::sync::broadcast;

/// State shared by all services. Only a cache: everything needed to serve a task again is in
/// the task's `driver_state` and its shim, so a new plugin process loses nothing.
pub struct Plugin {
    config: RwLock<PluginConfig>,
    /// MHz of one core from Nomad >= 1.7's topology; None on 1.6 (we fingerprint it).
    topology_mhz_per_core: RwLock<Option<f64>>,
    /// The Elide binaries the last fingerprint checked (with their versions, for task
    /// events).
    elides: RwLock<crate::fingerprint::Elides>,
    /// Fan-out of task events to every open TaskEvents stream.
    pub events: broadcast::Sender<DriverTaskEvent>,
    /// (task, feature) pairs already explained by a task event (crate::shim_compat).
    #[allow(dead_code)]
    refusals: std::sync::Mutex<std::collections::HashSet<(String, common::shim_api::Feature)>>,
}

impl Plugin {
    pub fn new() -> Arc<Self> {
        let (events, _) = broadcast::channel(256);
        Arc::new(Self {
            config: RwLock::new(PluginConfig::default()),
            topology_mhz_per_core: RwLock::new(None),
            elides: RwLock::new(Default::default()),
            events,
            refusals: Default::default(),
        })
    }

    pub fn config(&self) -> PluginConfig {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn set_config(&self, cfg: PluginConfig, topology_mhz_per_core: Option<f64>) {
        match self.config.write() {
            Ok(mut c) => *c = cfg,
            Err(p) => *p.into_inner() = cfg,
        }
        if let Ok(mut t) = self.topology_mhz_per_core.write() {
            *t = topology_mhz_per_core;
        }
    }

    pub fn set_elides(&self, v: crate::fingerprint::Elides) {
        match self.elides.write() {
            Ok(mut e) => *e = v,
            Err(p) => *p.into_inner() = v,
        }
    }

    pub fn elides(&self) -> crate::fingerprint::Elides {
        self.elides
            .read()
            .map(|e| e.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// MHz of one core: from Nomad's topology (>= 1.7) or our own fingerprint (1.6, which
    /// reads /sys and /proc: call it off the async runtime).
    pub fn mhz_per_core(&self) -> f64 {
        match self.topology_mhz_per_core.read().ok().and_then(|t| *t) {
            Some(mhz) => mhz,
            None => crate::stats::fingerprint_mhz_per_core(),
        }
    }

    /// True the first time `feature` is refused to `task_id`'s shim (one task event each).
    #[allow(dead_code)]
    pub fn first_refusal(&self, task_id: &str, feature: common::shim_api::Feature) -> bool {
        common::sync::lock(&self.refusals).insert((task_id.to_owned(), feature))
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

/// MHz of one core from Nomad >= 1.7's client topology, as Nomad's own executors compute
/// "ticks" (numalib `Topology.Compute()`): total compute (`cpu_total_compute` override, else
/// every core's base speed, falling back to max then guessed speed; disabled cores count too)
/// divided by the number of cores in the topology. None when it tells nothing.
pub fn mhz_per_core_from_topology(t: &ClientTopology) -> Option<f64> {
    let cores = t.cores.len();
    if cores == 0 {
        return None;
    }
    let total = if t.override_total_compute > 0 {
        t.override_total_compute
    } else {
        t.cores
            .iter()
            .map(|c| {
                if c.base_speed > 0 {
                    c.base_speed
                } else if c.max_speed > 0 {
                    c.max_speed
                } else {
                    c.guess_speed
                }
            })
            .fold(0u64, u64::saturating_add)
    };
    (total > 0).then(|| total as f64 / cores as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::proto::base::ClientTopologyCore;

    fn core(base: u64, max: u64, guess: u64, disable: bool) -> ClientTopologyCore {
        ClientTopologyCore {
            base_speed: base,
            max_speed: max,
            guess_speed: guess,
            disable,
            ..Default::default()
        }
    }

    #[test]
    fn topology_compute_matches_nomads_numalib() {
        // Base speed first (not max), disabled cores still count, divided by all cores.
        let t = ClientTopology {
            cores: vec![
                core(2000, 3500, 0, false),
                core(0, 3000, 0, false),
                core(0, 0, 1000, true),
                core(2000, 0, 0, true),
            ],
            ..Default::default()
        };
        assert_eq!(mhz_per_core_from_topology(&t), Some(8000.0 / 4.0));
        // cpu_total_compute overrides the sum, withheld compute does not change ticks.
        let t = ClientTopology {
            override_total_compute: 10_000,
            override_withold_compute: 4_000,
            ..t
        };
        assert_eq!(mhz_per_core_from_topology(&t), Some(2500.0));
        assert_eq!(mhz_per_core_from_topology(&ClientTopology::default()), None);
        let huge = ClientTopology {
            cores: vec![core(u64::MAX, 0, 0, false), core(u64::MAX, 0, 0, false)],
            ..Default::default()
        };
        assert_eq!(
            mhz_per_core_from_topology(&huge),
            Some(u64::MAX as f64 / 2.0)
        );
    }
}
