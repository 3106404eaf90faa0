//! Generates the Rust code for every .proto under ../proto with a vendored `protoc`, so building
//! needs no system protobuf compiler. The include root is ../proto, laid out like the Nomad repo
//! root, because Nomad's protos import each other as `plugins/...`.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let protos = [
        "plugins/shared/hclspec/hcl_spec.proto",
        "plugins/shared/structs/proto/attribute.proto",
        "plugins/shared/structs/proto/recoverable_error.proto",
        "plugins/base/proto/base.proto",
        "plugins/drivers/proto/driver.proto",
        "google/rpc/status.proto",
        "go-plugin/grpc_controller.proto",
        "go-plugin/grpc_stdio.proto",
        "go-plugin/grpc_broker.proto",
        "elide/executor/v1/executor.proto",
    ];
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // tonic-prost-build reads PROTOC.
    // SAFETY: a build script runs single-threaded, so no other thread reads the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let include = protoc_bin_vendored::include_path()?;
    let files: Vec<PathBuf> = protos.iter().map(|p| root.join(p)).collect();
    // The descriptors let a test hold the shim API to its ledger (common::shim_api).
    let descriptors = PathBuf::from(std::env::var("OUT_DIR")?).join("descriptors.bin");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(descriptors)
        .compile_protos(&files, &[root.clone(), include])?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
