//! The nomad-driver-elide plugin: go-plugin transport, Nomad's BasePlugin and Driver services,
//! fingerprinting, and the task lifecycle through per-task `elide-executor` shims.
//!
//! `server` hosts everything; `plugin` is the state the services share; `base` and
//! `driver_service` are Nomad's two services; `tasks` is the lifecycle (docs/architecture.md).

/// This build's version (`NDE_VERSION` at build time, else the workspace version) and git
/// revision: see common/build_info.rs.
pub const VERSION: &str = env!("NDE_BUILD_VERSION");
pub const REVISION: &str = env!("NDE_BUILD_REVISION");

mod base;
mod driver_service;
mod fingerprint;
mod goplugin;
mod idle;
mod logging;
pub mod metrics;
mod plugin;
pub mod server;
mod shim_compat;
mod stats;
mod tasks;
