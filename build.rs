//! Generates the gRPC code, the proto3 JSON mapping (pbjson) and the file descriptor set that
//! server reflection serves, from `proto/chatkpi/v1/*.proto`.
//!
//! Needs `protoc` on PATH (or `PROTOC`): `scripts/setup.sh` installs Debian's protobuf-compiler.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor = out.join("chatkpi_descriptor.bin");
    let protos = [
        "proto/chatkpi/v1/events.proto",
        "proto/chatkpi/v1/metrics.proto",
        "proto/chatkpi/v1/admin.proto",
    ];

    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        // Well-known types come from pbjson-types so Timestamp has the proto3 JSON mapping.
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_protos(&protos, &["proto"])?;

    let bytes = std::fs::read(&descriptor)?;
    pbjson_build::Builder::new()
        .register_descriptors(&bytes)?
        .build(&[".chatkpi"])?;

    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
