//! Fuzz targets: each takes arbitrary bytes and panics when an invariant
//! breaks. `tests/tests/fuzz.rs` runs them under proptest and over the kept
//! corpus (`fuzz/corpus/`) in every test run; `scripts/fuzz.sh` runs them
//! under libFuzzer (cargo fuzz) for as long as you like.
//!
//! - [`session`]: arbitrary sequences of `NodeMessage`s from two nodes
//!   (structured ones and raw protobuf bytes) through the session's intake
//!   and claim rules, against a model of etcd's claim transaction and node
//!   records (fencing), with other sessions taking a node over, records
//!   and leases expiring, operators forcing releases and the view lagging;
//! - [`names`]: arbitrary bytes through the name rules;
//! - [`rtmp`]: arbitrary bytes after an RTMP handshake into the ingest
//!   node's RTMP front end;
//! - [`hooks`]: arbitrary bytes as the hook bodies and API listings of the
//!   media servers the sidecar speaks to.

mod hooks;
mod names;
mod rtmp;
mod session;

pub use hooks::hooks;
pub use names::names;
pub use rtmp::{rtmp, rtmp_seed};
pub use session::session;
