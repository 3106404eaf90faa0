//! elide-executor: the per-task shim of nomad-driver-elide (docs/executor.md).
//!
//! - [`serve`]: one shim process — spec, socket, state file, readiness, the serve loop, linger;
//! - [`shim`]: the task itself — start, reap, stop, signal, status, shutdown;
//! - [`server`]: the tonic control API on top of it; [`listener`]: its bounded accept loop;
//! - [`runtime`]: spawning the runtime (setsid, cgroup, netns, user, PDEATHSIG);
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
pub mod serve;
mod server;
mod shim;
mod stats;
