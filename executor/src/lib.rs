//! elide-executor: the per-task shim of nomad-driver-elide (docs/executor.md).
//!
//! - [`serve`]: one shim process — spec, socket, state file, readiness, the serve loop, linger;
//! - [`shim`]: the task itself — start, reap, stop, signal, status, shutdown;
//! - [`service`]: the tonic control API (the gRPC service) on top of it; [`listener`]: its bounded accept loop;
//! - [`runtime`]: spawning the runtime (setsid, cgroup, PDEATHSIG, then `sandbox-init`);
//!   [`users`]: the task user from /etc/passwd and /etc/group;
//! - [`sandbox`]: the task sandbox (namespaces, mounts, credentials, capabilities, PID 1);
//! - [`exec`]: running a command inside the task (`nomad alloc exec`, ExecTask: the Exec RPC
//!   and the `sandbox-exec` process that enters the sandbox);
//! - [`reaper`]: the `waitpid(-1)` loop of a child subreaper, and the registry of the other
//!   children whose exits are awaited;
//! - [`logs`]: the task's output: Nomad's rotated log files written by the shim itself
//!   (`logs::rotator`, `logs::pump`), or Nomad's log FIFOs ([`fifo`]: deadline, no symlinks,
//!   keep-alive reader);
//! - [`events`]: what the shim tells the plugin about its task (the Events RPC); [`signals`]:
//!   signals read from a signalfd;
//! - [`stats`]: usage samples (cgroup or `/proc`); [`memory`]: stack pages given back after start;
//! - [`cli`]: the operator's `status`, `stop`, `signal` and `exec`; [`args`]: the command line.

pub mod args;
pub mod cli;
mod coverage;
mod error;
mod events;
pub mod exec;
mod fifo;
mod listener;
pub mod logging;
mod logs;
pub mod memory;
mod reaper;
pub mod runtime;
pub mod sandbox;
pub mod serve;
mod service;
mod shim;
mod signals;
mod stats;
mod users;

/// This build's version (`NDE_VERSION` at build time, else the workspace version) and git
/// revision: see common/build_info.rs.
pub const VERSION: &str = env!("NDE_BUILD_VERSION");
pub const REVISION: &str = env!("NDE_BUILD_REVISION");
