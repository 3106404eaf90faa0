//! The nomad-driver-elide plugin: go-plugin transport, Nomad's BasePlugin and Driver services,
//! fingerprinting, and the task lifecycle through per-task `elide-executor` shims.

pub mod base;
pub mod driver_service;
pub mod fingerprint;
pub mod goplugin;
pub mod idle;
pub mod logging;
pub mod plugin;
pub mod stats;
pub mod tasks;
