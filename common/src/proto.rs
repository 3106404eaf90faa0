//! Code generated from `proto/` (see `build.rs`). Package paths mirror the proto packages.

#![allow(clippy::all, missing_docs, non_camel_case_types)]

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// go-plugin's own services (package `plugin`): controller, stdio and broker.
pub mod goplugin {
    tonic::include_proto!("plugin");
}

pub mod hashicorp {
    pub mod nomad {
        pub mod plugins {
            pub mod base {
                pub mod proto {
                    tonic::include_proto!("hashicorp.nomad.plugins.base.proto");
                }
            }
            pub mod drivers {
                pub mod proto {
                    tonic::include_proto!("hashicorp.nomad.plugins.drivers.proto");
                }
            }
            pub mod shared {
                pub mod hclspec {
                    tonic::include_proto!("hashicorp.nomad.plugins.shared.hclspec");
                }
                pub mod structs {
                    tonic::include_proto!("hashicorp.nomad.plugins.shared.structs");
                }
            }
        }
    }
}

/// The shim's control API.
pub mod executor {
    tonic::include_proto!("elide.executor.v1");
}

pub use hashicorp::nomad::plugins::base::proto as base;
pub use hashicorp::nomad::plugins::drivers::proto as drivers;
pub use hashicorp::nomad::plugins::shared::hclspec;
pub use hashicorp::nomad::plugins::shared::structs;
