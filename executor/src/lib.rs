//! elide-executor: the per-task shim of nomad-driver-elide (docs/executor.md).
//!
//! - [`serve`]: one shim process — spec, socket, state file, readiness, the serve loop, linger;
//! - [`shim`]: the task itself — start, reap, stop, signal, status, shutdown;
//! - [`server`]: the tonic control API on top of it; [`listener`]: its bounded accept loop;
//! - [`runtime`]: spawning the runtime (setsid, cgroup, PDEATHSIG, then `sandbox-init`);
//! - [`sandbox`]: the task sandbox (namespaces, mounts, credentials, capabilities, PID 1);
//! - [`reaper`]: the `waitpid(-1)` loop of a child subreaper;
//! - [`fifo`]: Nomad's log FIFOs (deadline, no symlinks, keep-alive reader);
//! - [`stats`]: usage samples (cgroup or `/proc`);
//! - [`cli`]: the operator's `status`, `stop` and `signal`.

pub mod cli;
mod error;
mod fifo;
mod listener;
pub mod logging;
mod reaper;
pub mod runtime;
pub mod sandbox;
pub mod serve;
mod server;
mod shim;
mod stats;

/// This build's version (`NDE_VERSION` at build time, else the workspace version) and git
/// revision: see common/build_info.rs.
pub const VERSION: &str = env!("NDE_BUILD_VERSION");
pub const REVISION: &str = env!("NDE_BUILD_REVISION");
