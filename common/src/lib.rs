//! Shared building blocks of nomad-driver-elide: the generated protocol code (Nomad's plugin
//! wire contract, go-plugin's services and the shim's own API) and the types that the plugin
//! and the `elide-executor` shim both read and write.

pub mod beneath;
pub mod capabilities;
pub mod cgroup;
pub mod client;
pub mod dns;
pub mod duration;
pub mod env;
pub mod error;
pub mod hosts;
pub mod notify;
pub mod paths;
pub mod proc;
pub mod proto;
pub mod remains;
pub mod sandbox;
pub mod seccomp;
pub mod shim_api;
pub mod signals;
pub mod spec;
pub mod state;
pub mod sync;
#[doc(hidden)]
pub mod testing;
pub mod usage;
