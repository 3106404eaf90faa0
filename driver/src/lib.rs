//! The nomad-driver-elide plugin: go-plugin transport, Nomad's BasePlugin and Driver services,
//! fingerprinting, and the task lifecycle through per-task `elide-executor` shims.
//!
//! `server` hosts everything; `plugin` is the state the services share; `base` and
//! `driver_service` are Nomad's two services; `tasks` is the lifecycle (docs/architecture.md).

mod base;
mod driver_service;
mod fingerprint;
mod goplugin;
mod idle;
mod logging;
mod plugin;
pub mod server;
mod stats;
mod tasks;
