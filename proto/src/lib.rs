//! The `claims.v1` wire contract, generated from `proto/claims/v1/claims.proto`.
//!
//! This crate is the only place generated code comes from: the claim-service,
//! the ingest node and the system tests all speak through these types.

pub mod v1 {
    tonic::include_proto!("claims.v1");
}

/// What `--version` says: the workspace's version and the commit built.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CLAIMS_GIT_COMMIT"),
    ")"
);

/// The encoded `FileDescriptorSet` of `claims.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("claims_v1_descriptor");

pub mod client;
#[cfg(feature = "listen")]
pub mod listen;
pub mod names;
