//! The plugin process: shared state and the go-plugin server that hosts every service.

use crate::goplugin::{self, Broker, Controller, Stdio};
use common::config::PluginConfig;
use common::proto::base::base_plugin_server::BasePluginServer;
use common::proto::base::ClientTopology;
use common::proto::drivers::driver_server::DriverServer;
use common::proto::drivers::DriverTaskEvent;
use common::proto::goplugin::{
    grpc_broker_server::GrpcBrokerServer, grpc_controller_server::GrpcControllerServer,
    grpc_stdio_server::GrpcStdioServer,
};
use std::io::Write;
use std::sync::{Arc, RwLock};
use tokio::sync::{broadcast, Notify};

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
    pub tasks: crate::tasks::TaskStore,
    /// (task, feature) pairs already explained by a task event (crate::shim_compat).
    refusals: std::sync::Mutex<std::collections::HashSet<(String, common::shim_api::Feature)>>,
}

impl Plugin {
    pub fn new() -> Arc<Self> {
        let (events, _) = broadcast::channel(256);
        Arc::new(Self {
            config: RwLock::new(PluginConfig::default()),
            topology_mhz: RwLock::new(None),
            elide_version: RwLock::new(None),
            events,
            tasks: crate::tasks::TaskStore::default(),
            refusals: Default::default(),
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

    /// MHz of one core: from Nomad's topology (>= 1.7) or our own fingerprint (1.6).
    pub fn mhz_per_core(&self) -> f64 {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        match self.topology_mhz() {
            Some(total) => total as f64 / cores,
            None => crate::stats::fingerprint_mhz_per_core(),
        }
    }

    /// True the first time `feature` is refused to `task_id`'s shim (one task event each).
    pub fn first_refusal(&self, task_id: &str, feature: common::shim_api::Feature) -> bool {
        self.refusals
            .lock()
            .map(|mut r| r.insert((task_id.to_owned(), feature)))
            .unwrap_or(true)
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

/// Runs the plugin: handshake, serve, exit on Shutdown or SIGTERM.
pub async fn run() -> anyhow::Result<()> {
    let app_version = match goplugin::negotiate(
        std::env::var(goplugin::MAGIC_COOKIE_KEY).ok().as_deref(),
        std::env::var("PLUGIN_PROTOCOL_VERSIONS").ok().as_deref(),
    ) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    // A Ctrl-C in the agent's terminal reaches the whole process group: go-plugin servers
    // ignore SIGINT so only the agent decides when plugins stop.
    // SAFETY: setting a signal disposition to SIG_IGN has no handler to be unsafe about.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGINT,
            nix::sys::signal::SigHandler::SigIgn,
        )?;
    }
    crate::logging::init();

    let socket = goplugin::socket_path(
        std::env::var("PLUGIN_UNIX_SOCKET_DIR").ok().as_deref(),
        std::env::var("TMPDIR").ok().as_deref(),
    )?;
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)?;
    if let Ok(group) = std::env::var("PLUGIN_UNIX_SOCKET_GROUP") {
        apply_socket_group(&socket, &group);
    }

    let plugin = Plugin::new();
    let shutdown = Arc::new(Notify::new());
    let conns = Arc::new(crate::idle::Connections::default());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("plugin", tonic_health::ServingStatus::Serving)
        .await;

    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(BasePluginServer::new(crate::base::Base {
            plugin: plugin.clone(),
        }))
        .add_service(DriverServer::new(crate::driver_service::DriverService {
            plugin: plugin.clone(),
        }))
        .add_service(GrpcControllerServer::new(Controller {
            shutdown: shutdown.clone(),
        }))
        .add_service(GrpcStdioServer::new(Stdio))
        .add_service(GrpcBrokerServer::new(Broker))
        .serve_with_incoming({
            use tokio_stream::StreamExt;
            let conns = conns.clone();
            tokio_stream::wrappers::UnixListenerStream::new(listener)
                .map(move |s| s.map(|s| conns.track(s)))
        });

    // The handshake goes out only once the socket is bound.
    {
        let mut out = std::io::stdout().lock();
        out.write_all(goplugin::handshake_line(app_version, &socket).as_bytes())?;
        out.flush()?;
    }
    tracing::debug!(socket = %socket.display(), "plugin serving");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let idle = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            if conns
                .idle_for()
                .is_some_and(|d| d >= crate::idle::IDLE_EXIT)
            {
                tracing::info!("no Nomad agent connected for 15 minutes; exiting (tasks keep running in their shims)");
                return;
            }
        }
    };
    let outcome = tokio::select! {
        _ = idle => Ok(()),
        r = server => r.map_err(anyhow::Error::from),
        _ = shutdown.notified() => {
            // Let the Shutdown reply reach the agent before the process goes away.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            Ok(())
        }
        _ = sigterm.recv() => Ok(()),
    };
    let _ = std::fs::remove_file(&socket);
    tracing::debug!("plugin exiting; tasks keep running in their shims");
    outcome
}

fn apply_socket_group(socket: &std::path::Path, group: &str) {
    use std::os::unix::fs::PermissionsExt;
    let gid = group
        .parse::<u32>()
        .ok()
        .map(nix::unistd::Gid::from_raw)
        .or_else(|| {
            nix::unistd::Group::from_name(group)
                .ok()
                .flatten()
                .map(|g| g.gid)
        });
    match gid {
        Some(gid) => {
            if let Err(e) = nix::unistd::chown(socket, None, Some(gid)) {
                tracing::warn!(error = %e, group, "cannot chown plugin socket");
            }
            let _ = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660));
        }
        None => tracing::warn!(group, "PLUGIN_UNIX_SOCKET_GROUP names no known group"),
    }
}
