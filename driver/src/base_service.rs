//! `BasePlugin`: identity, config schema and SetConfig.

use crate::config::PluginConfig;
use crate::plugin::Plugin;
use common::proto::base::{
    base_plugin_server::BasePlugin, ConfigSchemaRequest, ConfigSchemaResponse, PluginInfoRequest,
    PluginInfoResponse, PluginType, SetConfigRequest, SetConfigResponse,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The driver name jobs use (`driver = "elide"`).
pub const DRIVER_NAME: &str = "elide";
/// Nomad's driver plugin API version.
pub const PLUGIN_API_VERSION: &str = "0.1.0";

pub struct Base {
    pub plugin: Arc<Plugin>,
}

#[tonic::async_trait]
impl BasePlugin for Base {
    async fn plugin_info(
        &self,
        _req: Request<PluginInfoRequest>,
    ) -> Result<Response<PluginInfoResponse>, Status> {
        Ok(Response::new(PluginInfoResponse {
            r#type: PluginType::Driver as i32,
            plugin_api_versions: vec![PLUGIN_API_VERSION.to_owned()],
            plugin_version: crate::VERSION.to_owned(),
            name: DRIVER_NAME.to_owned(),
        }))
    }

    async fn config_schema(
        &self,
        _req: Request<ConfigSchemaRequest>,
    ) -> Result<Response<ConfigSchemaResponse>, Status> {
        Ok(Response::new(ConfigSchemaResponse {
            spec: Some(PluginConfig::schema()),
        }))
    }

    async fn set_config(
        &self,
        req: Request<SetConfigRequest>,
    ) -> Result<Response<SetConfigResponse>, Status> {
        let req = req.into_inner();
        let cfg = PluginConfig::from_msgpack(&req.msgpack_config).map_err(|e| {
            tracing::error!(error = %e, "invalid plugin config");
            // The agent refuses to start on this error and exits without stopping this
            // process: leave by ourselves once the error has been delivered, so no plugin is
            // orphaned. (A process with an invalid config is never used for tasks.)
            tokio::spawn(async {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                tracing::debug!("exiting after a rejected config");
                std::process::exit(1);
            });
            Status::invalid_argument(format!("invalid plugin \"nomad-driver-elide\" config: {e}"))
        })?;
        let long_lived = req.nomad_config.is_some();
        crate::metrics::configure(cfg.prometheus_listen.as_deref(), long_lived)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "invalid plugin config");
                // As above: the agent refuses to start; do not outlive it.
                tokio::spawn(async {
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    std::process::exit(1);
                });
                Status::invalid_argument(format!(
                    "invalid plugin \"nomad-driver-elide\" config: {e}"
                ))
            })?;
        let topology_mhz = req
            .nomad_config
            .as_ref()
            .and_then(|n| n.driver.as_ref())
            .and_then(|d| d.topology.as_ref())
            .map(crate::plugin::mhz_per_core_from_topology);
        tracing::info!(
            enabled = cfg.enabled,
            runtime_dir = %cfg.runtime_dir.display(),
            guest_env = cfg.guest_env.as_str(),
            validation_only = !long_lived,
            api_version = %req.plugin_api_version,
            "plugin configured"
        );
        self.plugin.set_config(cfg, topology_mhz.flatten());
        Ok(Response::new(SetConfigResponse {}))
    }
}
