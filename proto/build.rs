//! Generates the v1 types and the collector service into OUT_DIR, plus the
//! file descriptor set that gRPC reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "xoflow/v1/event.proto",
        "xoflow/v1/enriched.proto",
        "xoflow/v1/collector.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("xoflow_v1_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
