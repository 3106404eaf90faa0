//! elide-executor: the per-task shim of nomad-driver-elide (see docs/executor.md).
//!
//! `server` runs one shim process, `shim` holds its state and control API, `runtime` spawns
//! the Elide process, `fifo` opens Nomad's log FIFOs, `stats` samples usage, `cli` is the
//! operator side (status/stop/signal).

pub mod cli;
pub mod error;
pub mod fifo;
pub mod runtime;
pub mod server;
pub mod shim;
pub mod stats;
