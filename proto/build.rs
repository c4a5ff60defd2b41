//! Compiles the tillgate.v1 protos with protox (pure Rust, so a fresh machine needs no protoc)
//! and writes the encoded descriptor set that the daemon serves through gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/tillgate/v1/model.proto",
        "proto/tillgate/v1/policy.proto",
        "proto/tillgate/v1/login.proto",
        "proto/tillgate/v1/sync.proto",
        "proto/tillgate/v1/devices.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let encoded = prost::Message::encode_to_vec(&descriptors);
    std::fs::write(out_dir.join("tillgate_descriptor.bin"), encoded)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
