//! The nomad-driver-elide plugin: go-plugin transport, Nomad's BasePlugin and Driver services,
//! fingerprinting, and the task lifecycle through per-task `elide-executor` shims.

/// This build's version (`NDE_VERSION` at build time, else the workspace version) and git
/// revision: see common/build_info.rs.
pub const VERSION: &str = env!("NDE_BUILD_VERSION");
pub const REVISION: &str = env!("NDE_BUILD_REVISION");

pub mod base;
pub mod driver_service;
pub mod fingerprint;
pub mod goplugin;
pub mod idle;
pub mod logging;
pub mod plugin;
pub mod shim_compat;
pub mod stats;
pub mod tasks;
