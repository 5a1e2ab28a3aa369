//! Compiles `proto/claims/v1/*.proto` into Rust and writes the file
//! descriptor set that server reflection serves; and names the commit the
//! binaries are built from (`CLAIMS_GIT_COMMIT`: as given, e.g. by an image
//! build without `.git`, else `git rev-parse`, else `unknown`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rustc-env=CLAIMS_GIT_COMMIT={}", commit());
    println!("cargo:rerun-if-env-changed=CLAIMS_GIT_COMMIT");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("claims_v1_descriptor.bin"))
        .compile_protos(&["proto/claims/v1/claims.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

/// The commit being built, and the files that change with it (so that a
/// new commit builds a new version string).
fn commit() -> String {
    if let Ok(given) = std::env::var("CLAIMS_GIT_COMMIT") {
        if !given.trim().is_empty() {
            return given.trim().to_string();
        }
    }
    let git = std::path::Path::new("../.git");
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
        println!("cargo:rerun-if-changed=../.git/HEAD");
        if let Some(branch) = head.trim().strip_prefix("ref: ") {
            let branch = git.join(branch);
            if branch.exists() {
                println!("cargo:rerun-if-changed={}", branch.display());
            }
            println!("cargo:rerun-if-changed=../.git/packed-refs");
        }
    }
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "unknown".into(),
    }
}
