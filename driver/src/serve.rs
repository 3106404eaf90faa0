//! The plugin process: go-plugin handshake, the gRPC server hosting every service, and the
//! ways it ends (Shutdown, SIGTERM, no agent for a long time).

use crate::goplugin::{self, Broker, Controller, Stdio};
use crate::plugin::Plugin;
use crate::tasks::Tasks;
use common::proto::base::base_plugin_server::BasePluginServer;
use common::proto::drivers::driver_server::DriverServer;
use common::proto::goplugin::{
    grpc_broker_server::GrpcBrokerServer, grpc_controller_server::GrpcControllerServer,
    grpc_stdio_server::GrpcStdioServer,
};
use std::io::Write;
use std::sync::Arc;
use tokio::sync::Notify;

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
    crate::nofile::raise_and_log();

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
    let tasks = Arc::new(Tasks::new(plugin.clone()));
    crate::metrics::scrape::set_source(tasks.clone());
    let tasks_at_exit = tasks.clone();
    let shutdown = Arc::new(Notify::new());
    let conns = Arc::new(crate::idle::Connections::default());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("plugin", tonic_health::ServingStatus::Serving)
        .await;

    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(BasePluginServer::new(crate::base_service::Base {
            plugin: plugin.clone(),
        }))
        .add_service(DriverServer::new(crate::driver_service::DriverService {
            plugin: plugin.clone(),
            tasks,
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
    tasks_at_exit.remove_notify_socket();
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
