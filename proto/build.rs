//! Compiles `proto/claims/v1/*.proto` into Rust and writes the file
//! descriptor set that server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("claims_v1_descriptor.bin"))
        .compile_protos(&["proto/claims/v1/claims.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
