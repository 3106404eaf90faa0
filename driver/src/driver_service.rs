//! `Driver`: schemas, capabilities, the fingerprint and task-event streams, and the task RPCs
//! (which live in `tasks`).

use crate::config::{LogCollection, PluginConfig, TaskConfig};
use crate::fingerprint;
use crate::plugin::Plugin;
use crate::tasks::Tasks;
use common::proto::drivers::{
    driver_capabilities::{FsIsolation, MountConfigs},
    driver_server::Driver,
    network_isolation_spec::NetworkIsolationMode,
    *,
};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// How often the binaries are stat()ed to notice an install or upgrade between full checks.
const STAMP_CHECK_INTERVAL: Duration = Duration::from_secs(5);

pub struct DriverService {
    pub plugin: Arc<Plugin>,
    pub tasks: Arc<Tasks>,
}

pub fn capabilities(cfg: &PluginConfig) -> DriverCapabilities {
    DriverCapabilities {
        send_signals: true,
        // The shim runs the command inside the task's sandbox (`nomad alloc exec`, template
        // change scripts, script checks). With FS isolation NONE, Nomad asks for the
        // `alloc-node-exec` ACL capability for it.
        exec: true,
        // No chroot: the task sees the host root read-only with Nomad's and other tasks' dirs
        // hidden, and its own dirs at their host paths, so every NOMAD_*_DIR stays the host
        // path Nomad computes for NONE (docs/driver.md, "Sandbox").
        fs_isolation: FsIsolation::None as i32,
        // The shim enters the group network namespace when Nomad hands one over.
        network_isolation_modes: vec![
            NetworkIsolationMode::Host as i32,
            NetworkIsolationMode::Group as i32,
        ],
        must_create_network: false,
        // Host volumes are bound beneath the task dir inside the task's mount namespace.
        // ANY_MOUNTS: 0, an alias prost only generates under its first name.
        mount_configs: MountConfigs::UnknownMounts as i32,
        // log_collection = "executor": the shim writes the log files, so Nomad (>= 1.6) starts
        // no logmon for our tasks (it still sends StdoutPath/StderrPath, naming FIFOs nobody
        // creates). Nomad asks for the capabilities once per task runner, after SetConfig.
        disable_log_collection: cfg.log_collection == LogCollection::Executor,
        dynamic_workload_users: false,
    }
}

#[tonic::async_trait]
impl Driver for DriverService {
    /// Nomad >= 2.0.4 calls Init after SetConfig each time it dispenses the plugin, and again
    /// when a restarted agent reattaches to this process (without a new SetConfig). There is
    /// nothing left to prepare: SetConfig validated the config, and tasks come back through
    /// RecoverTask. An error would make the agent kill the plugin and mark the driver
    /// unhealthy, so this answers OK (as Go plugins without an Init do) instead of
    /// Unimplemented, which 2.0 also accepts, so the agent's log shows a plugin that knows it.
    async fn init(&self, _req: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        tracing::debug!(
            tasks = self.tasks.tracked(),
            "Nomad agent initialised the plugin"
        );
        Ok(Response::new(InitResponse {}))
    }

    /// Nomad >= 2.0.4 sends Shutdown (with a 2 s budget) when the agent stops, just before it
    /// kills the plugin through go-plugin's controller. Tasks are owned by their shims and must
    /// outlive the agent, so nothing is stopped; the plugin leaves on the controller's Shutdown.
    async fn shutdown(
        &self,
        _req: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        tracing::info!(
            tasks = self.tasks.tracked(),
            "Nomad agent is shutting down; tasks keep running in their shims"
        );
        Ok(Response::new(ShutdownResponse {}))
    }

    async fn task_config_schema(
        &self,
        _req: Request<TaskConfigSchemaRequest>,
    ) -> Result<Response<TaskConfigSchemaResponse>, Status> {
        Ok(Response::new(TaskConfigSchemaResponse {
            spec: Some(TaskConfig::schema()),
        }))
    }

    async fn capabilities(
        &self,
        _req: Request<CapabilitiesRequest>,
    ) -> Result<Response<CapabilitiesResponse>, Status> {
        Ok(Response::new(CapabilitiesResponse {
            capabilities: Some(capabilities(&self.plugin.config())),
        }))
    }

    type FingerprintStream = BoxStream<FingerprintResponse>;

    async fn fingerprint(
        &self,
        _req: Request<FingerprintRequest>,
    ) -> Result<Response<Self::FingerprintStream>, Status> {
        let plugin = self.plugin.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            loop {
                let cfg = plugin.config();
                let (fp, elides) = fingerprint::detect_elides(&cfg, &plugin.elides()).await;
                tracing::debug!(health = ?fp.health, description = %fp.description, "fingerprint");
                plugin.set_elides(elides);
                if tx.send(Ok(fp.to_proto())).await.is_err() {
                    return;
                }
                // Re-check at the period, or as soon as a binary is installed/upgraded/removed.
                let stamps = |cfg: &crate::config::PluginConfig| {
                    fingerprint::watched(cfg)
                        .into_iter()
                        .map(|p| (fingerprint::stamp(&p), p))
                        .collect::<Vec<_>>()
                };
                let before = stamps(&cfg);
                let deadline = Instant::now() + cfg.fingerprint_period;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(left.min(STAMP_CHECK_INTERVAL)) => {}
                    }
                    if stamps(&plugin.config()) != before {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type TaskEventsStream = BoxStream<DriverTaskEvent>;

    async fn task_events(
        &self,
        _req: Request<TaskEventsRequest>,
    ) -> Result<Response<Self::TaskEventsStream>, Status> {
        use tokio_stream::StreamExt;
        let stream = tokio_stream::wrappers::BroadcastStream::new(self.plugin.events.subscribe())
            .filter_map(|ev| match ev {
                Ok(ev) => Some(Ok(ev)),
                Err(e) => {
                    tracing::warn!(error = %e, "task event stream lagged; events dropped");
                    None
                }
            });
        let stream: Self::TaskEventsStream = Box::pin(stream);
        Ok(Response::new(stream))
    }

    async fn recover_task(
        &self,
        req: Request<RecoverTaskRequest>,
    ) -> Result<Response<RecoverTaskResponse>, Status> {
        let r = self.tasks.recover(req.into_inner()).await;
        crate::heap::note_activity();
        r?;
        Ok(Response::new(RecoverTaskResponse {}))
    }

    async fn start_task(
        &self,
        req: Request<StartTaskRequest>,
    ) -> Result<Response<StartTaskResponse>, Status> {
        let began = std::time::Instant::now();
        let resp = self.tasks.start(req.into_inner()).await;
        crate::metrics::start_finished(began, &resp);
        crate::heap::note_activity();
        let resp = resp?;
        Ok(Response::new(resp))
    }

    async fn wait_task(
        &self,
        req: Request<WaitTaskRequest>,
    ) -> Result<Response<WaitTaskResponse>, Status> {
        Ok(Response::new(
            self.tasks.wait(&req.into_inner().task_id).await,
        ))
    }

    async fn stop_task(
        &self,
        req: Request<StopTaskRequest>,
    ) -> Result<Response<StopTaskResponse>, Status> {
        self.tasks.stop(req.into_inner()).await?;
        Ok(Response::new(StopTaskResponse {}))
    }

    async fn destroy_task(
        &self,
        req: Request<DestroyTaskRequest>,
    ) -> Result<Response<DestroyTaskResponse>, Status> {
        let r = self.tasks.destroy(req.into_inner()).await;
        crate::heap::note_activity();
        r?;
        Ok(Response::new(DestroyTaskResponse {}))
    }

    async fn inspect_task(
        &self,
        req: Request<InspectTaskRequest>,
    ) -> Result<Response<InspectTaskResponse>, Status> {
        Ok(Response::new(
            self.tasks.inspect(&req.into_inner().task_id).await?,
        ))
    }

    type TaskStatsStream = BoxStream<TaskStatsResponse>;

    async fn task_stats(
        &self,
        req: Request<TaskStatsRequest>,
    ) -> Result<Response<Self::TaskStatsStream>, Status> {
        let stream = self.tasks.stats(req.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn signal_task(
        &self,
        req: Request<SignalTaskRequest>,
    ) -> Result<Response<SignalTaskResponse>, Status> {
        self.tasks.signal(req.into_inner()).await?;
        Ok(Response::new(SignalTaskResponse {}))
    }

    async fn exec_task(
        &self,
        req: Request<ExecTaskRequest>,
    ) -> Result<Response<ExecTaskResponse>, Status> {
        Ok(Response::new(self.tasks.exec_once(req.into_inner()).await?))
    }

    type ExecTaskStreamingStream = BoxStream<ExecTaskStreamingResponse>;

    async fn exec_task_streaming(
        &self,
        req: Request<Streaming<ExecTaskStreamingRequest>>,
    ) -> Result<Response<Self::ExecTaskStreamingStream>, Status> {
        Ok(Response::new(
            self.tasks.exec_streaming(req.into_inner()).await?,
        ))
    }

    async fn create_network(
        &self,
        _req: Request<CreateNetworkRequest>,
    ) -> Result<Response<CreateNetworkResponse>, Status> {
        Err(Status::unimplemented(
            "the elide driver does not create networks; Nomad creates the group network",
        ))
    }

    async fn destroy_network(
        &self,
        _req: Request<DestroyNetworkRequest>,
    ) -> Result<Response<DestroyNetworkResponse>, Status> {
        Err(Status::unimplemented(
            "the elide driver does not create networks; Nomad creates the group network",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nomad_runs_no_logmon_when_the_shim_writes_the_logs() {
        let mut cfg = PluginConfig::default();
        assert!(capabilities(&cfg).disable_log_collection);
        cfg.log_collection = LogCollection::Nomad;
        assert!(!capabilities(&cfg).disable_log_collection);
    }
}
