//! Generates the v1 types and the collector service into OUT_DIR, plus the
//! file descriptor set that gRPC reflection serves and the serde impls of the
//! proto3 canonical JSON mapping (pbjson) that the HTTP collector speaks.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("xoflow_v1_descriptor.bin");
    let protos = [
        "xoflow/v1/event.proto",
        "xoflow/v1/enriched.proto",
        "xoflow/v1/collector.proto",
    ];
    // Well-known types come from pbjson-types so Timestamp has the RFC 3339
    // JSON form; they are the same prost messages on the wire.
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
