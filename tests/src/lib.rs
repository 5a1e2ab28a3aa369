//! Harness for system tests and benchmarks: a real etcd on free loopback
//! ports, the real `claim-service` binary, and gRPC clients that speak
//! `claims.v1` as an ingest node or a watcher would.
//!
//! Every process is killed by its PID when its handle drops; every wait has a
//! deadline, so a broken build fails instead of hanging.
//!
//! - [`etcd`]: a real etcd, one member or a cluster;
//! - [`processes`]: the workspace's binaries, daemons, `/proc` readings;
//! - [`claim_service`]: the `claim-service` binary, alone or with its etcd;
//! - [`clients`]: a node's session and a watcher, over gRPC;
//! - [`ingest`]: the `ingest-node` binary, HTTP to it, ffmpeg against it;
//! - [`checker`]: the fault suite's history checker; [`hostile`]: clients
//!   that misbehave on purpose; [`netns`]: hosts of their own; [`pki`]:
//!   certificates; [`rtmp_client`]: a bare RTMP client; [`fuzz`]: the fuzz
//!   targets; [`bench`]: what benchmarks report; [`nginx`], [`real_servers`]:
//!   real nginx-rtmp, SRS, MediaMTX and OvenMediaEngine.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

pub use claims_proto::v1;

pub mod bench;
pub mod browser;
pub mod checker;
pub mod claim_service;
pub mod clients;
pub mod etcd;
pub mod fleet;
pub mod fuzz;
pub mod hostile;
pub mod ingest;
pub mod netem;
pub mod netns;
pub mod nginx;
pub mod pki;
pub mod processes;
pub mod real_servers;
pub mod rtmp_client;
pub mod soak;

pub use bench::*;
pub use claim_service::*;
pub use clients::*;
pub use etcd::*;
pub use ingest::*;
pub use processes::*;

/// Lets `period` pass where a test must show that nothing happens for a
/// while (a claim stays through a whole lease TTL, a stopped process stays
/// stopped past its leases, a client stays silent): the one fixed wait
/// tests have, named for what it shows. Everything else waits for an event.
pub async fn nothing_happens_for(period: Duration, what: &str) {
    eprintln!("letting {period:?} pass: {what}");
    tokio::time::sleep(period).await;
}

/// How long any single expectation may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

pub use claims_proto::client::error_chain;

/// A loopback port free now, never handed out before in this process:
/// the OS may give a port it just gave again once that listener is
/// closed, and two parts of one test (the compose stack's nine published
/// ports, a replica's gRPC and metrics ports) would then collide.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("the OS hands out a free loopback port");
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Waits (up to [`WAIT`]) until `check` holds, polling every
/// `every`; the last value seen when it never does.
pub async fn until<T: std::fmt::Debug>(
    every: Duration,
    probe: impl AsyncFnMut() -> Result<T>,
    check: impl Fn(&T) -> bool,
) -> Result<T> {
    until_for(WAIT, every, probe, check).await
}

/// [`until`] with a bound of its own (a stack that builds images, a
/// process that takes its time to stop).
pub async fn until_for<T: std::fmt::Debug>(
    bound: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> Result<T>,
    check: impl Fn(&T) -> bool,
) -> Result<T> {
    let deadline = Instant::now() + bound;
    loop {
        let value = probe().await?;
        if check(&value) {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(anyhow!("still {value:?} after {bound:?}"));
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `probe` every `every` until its value passes `check` or `bound`
/// has passed: the last value, and how long it took when it passed. For
/// waits whose bound is not [`WAIT`] and whose outcome is a finding, not
/// an error (the soak's).
pub async fn within<T>(
    bound: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> T,
    check: impl Fn(&T) -> bool,
) -> (T, Option<Duration>) {
    let start = Instant::now();
    loop {
        let value = probe().await;
        if check(&value) {
            return (value, Some(start.elapsed()));
        }
        if start.elapsed() > bound {
            return (value, None);
        }
        tokio::time::sleep(every).await;
    }
}

/// The value of the metric `name` (with its labels, if any) in Prometheus
/// text, if it is there.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// A gRPC request body as it goes on the wire: a flag (not compressed), the
/// message's length (big-endian), the message.
pub fn grpc_frame(msg: &impl prost::Message) -> Vec<u8> {
    let message = msg.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend((message.len() as u32).to_be_bytes());
    frame.extend(message);
    frame
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}
