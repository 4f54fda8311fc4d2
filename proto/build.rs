//! Generates the v1 types and the collector service into OUT_DIR, plus the
//! file descriptor set that gRPC reflection serves, and the serde
//! implementations of the proto3 canonical JSON mapping (pbjson).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "xoflow/v1/event.proto",
        "xoflow/v1/enriched.proto",
        "xoflow/v1/collector.proto",
        "xoflow/v1/state.proto",
        "xoflow/v1/alert.proto",
    ];
    let descriptor_path = out.join("xoflow_v1_descriptor.bin");
    // Well-known types come from pbjson-types, which implement the proto3
    // canonical JSON mapping (RFC 3339 timestamps) that the HTTP API,
    // NDJSON import and `xoflow gen` speak.
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_protos(&protos, &["."])?;
    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .build(&[".xoflow"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
