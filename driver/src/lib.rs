//! The nomad-driver-elide plugin: go-plugin transport, Nomad's BasePlugin and Driver services,
//! fingerprinting, and the task lifecycle through per-task `elide-executor` shims.
//!
//! Words: a *service* is a gRPC API implementation (`base_service`, `driver_service`); `serve`
//! is the plugin process that hosts them. `plugin` is the state the services share; `tasks` is
//! the lifecycle; `config` (with `cty`, `hclspec`, `runtime_args`) reads the agent's and the
//! jobs' configs (docs/architecture.md).

/// This build's version (`NDE_VERSION` at build time, else the workspace version) and git
/// revision: see common/build_info.rs.
pub const VERSION: &str = env!("NDE_BUILD_VERSION");
pub const REVISION: &str = env!("NDE_BUILD_REVISION");

mod base_service;
pub mod config;
pub mod cty;
mod driver_service;
mod fingerprint;
mod goplugin;
pub mod hclspec;
mod heap;
mod idle;
mod logging;
pub mod metrics;
pub mod model_ref;
pub mod models;
mod nofile;
mod plugin;
pub mod runtime_args;
pub mod serve;
mod shim_compat;
mod stats;
mod tasks;
