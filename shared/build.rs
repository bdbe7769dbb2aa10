//! Compiles `proto/maestro/v1/*.proto` with protox (pure Rust, no `protoc` needed).

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let dir = proto_root.join("maestro/v1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed={}", dir.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Reflection serves the same descriptors the code is generated from.
    let descriptors = fds.encode_to_vec();
    std::fs::write(out_dir.join("maestro_descriptor.bin"), &descriptors)?;
    tonic_prost_build::configure().compile_fds(fds)?;
    // Canonical proto3 JSON for every message: what `--output json` prints.
    pbjson_build::Builder::new().register_descriptors(&descriptors)?.build(&[".maestro.v1"])?;
    Ok(())
}
