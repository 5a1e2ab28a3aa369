//! Benchmark of the claim plane, every figure beside a baseline measured in
//! the same run: raw etcd-client doing exactly the etcd work the claim needs.
//! See docs/PERFORMANCE.md for what each part means.
//!
//! 1. claim latency: `created` → `claimed` vs lease-grant + create-if-absent txn;
//! 2. release propagation: last `closed` → a watcher's RELEASED vs revoke →
//!    an etcd watch's DELETE;
//! 3. throughput: claim + release cycles/s at several concurrencies vs raw
//!    grant + txn + revoke at the same concurrency;
//! 4. ownership reads: GetOwner from the cache and `consistent`, vs raw get;
//! 5. held claims at scale: memory, CPU, renewals/s and keep-alive streams,
//!    vs raw etcd-client with one keep-alive per lease;
//! 6. failover: re-adopting every claim of a node on another replica after
//!    kill -9 of the one holding them, vs the same etcd work done raw (read
//!    the keys, rewrite them in checked transactions on the leases they
//!    have), and vs moving them onto new leases (a grant each) as well.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use system_tests::v1 as pb;
use system_tests::*;

use pb::ownership_client::OwnershipClient;
use pb::service_message::Msg;

#[derive(Parser)]
struct Args {
    /// Sequential claims (and releases) timed on each side.
    #[arg(long, default_value_t = 500)]
    claims: usize,
    /// Concurrencies for the throughput part.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    concurrency: Vec<usize>,
    /// Seconds each throughput / read measurement runs.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Claims held at the default 10 s lease (and re-adopted in part 6).
    #[arg(long, default_value_t = 10_000)]
    held: usize,
    /// Part 6 (failover) runs when at most this many claims are held: a
    /// re-attaching node lists them all in one `hello` (gRPC's 4 MB).
    #[arg(long, default_value_t = 120_000)]
    failover_max: usize,
    /// Skip parts 1-4 and 7 (latency, throughput, reads, fan-out): only
    /// the held claims.
    #[arg(long)]
    held_only: bool,
    /// `WatchClaims` clients on one replica in part 7 (0 skips).
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// How long held claims are kept alive while measured.
    #[arg(long, default_value_t = 30)]
    hold_seconds: u64,
    /// Keep etcd's data in memory (/dev/shm) instead of on disk.
    #[arg(long)]
    tmpfs: bool,
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}x", a / b)
}

fn row(what: &str, ours: String, raw: String, r: String) {
    println!("| {what} | {ours} | {raw} | {r} |");
}

/// Keep-alive streams etcd has open, from its own metrics.
async fn etcd_metrics(etcd: &Etcd) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", etcd.client_port)).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body)
}

/// etcd's resident memory and database size, in MiB.
async fn etcd_footprint(etcd: &Etcd) -> Result<(f64, f64)> {
    let body = etcd_metrics(etcd).await?;
    let mib = |name: &str| metric(&body, name) / (1024.0 * 1024.0);
    Ok((
        mib("process_resident_memory_bytes"),
        mib("etcd_mvcc_db_total_size_in_bytes"),
    ))
}

async fn etcd_keepalive_streams(etcd: &Etcd) -> Result<i64> {
    let body = etcd_metrics(etcd).await?;
    let sum = |name: &str| -> i64 {
        body.lines()
            .filter(|l| l.starts_with(name) && l.contains("grpc_method=\"LeaseKeepAlive\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as i64
    };
    Ok(sum("grpc_server_started_total") - sum("grpc_server_handled_total"))
}

/// Claims the replica reported lost for `reason` (0 before the first).
fn lost_for(metrics: &str, reason: &str) -> f64 {
    metric(
        metrics,
        &format!("claims_lost_total{{reason=\"{reason}\"}}"),
    )
    .max(0.0)
}

/// Claims the replica reported lost (lease expired or not renewed in time).
fn lost_total(metrics: &str) -> f64 {
    lost_for(metrics, "unrenewed") + lost_for(metrics, "expired")
}

/// The lines of `log` that contain any of `needles`.
fn matching_lines<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .collect()
}

/// Prints (to stderr) how many of the replica's log lines contain any of
/// `needles`, and the first `show` of them, under `heading`.
fn print_log_lines(svc: &ClaimService, heading: &str, needles: &[&str], show: usize) {
    let log = svc.log_text();
    let lines = matching_lines(&log, needles);
    if lines.is_empty() {
        return;
    }
    eprintln!("{heading} ({} lines):", lines.len());
    for line in lines.iter().take(show) {
        eprintln!("  {line}");
    }
}

fn metric(text: &str, name: &str) -> f64 {
    metric_value(text, name).unwrap_or(f64::NAN)
}

async fn raw_claim(client: &mut etcd_client::Client, key: &str) -> Result<i64> {
    let lease = client.lease_grant(10, None).await?.id();
    raw_claim_on(client, key, lease).await?;
    Ok(lease)
}

/// The floor of a claim: one create-if-absent transaction on a lease granted
/// beforehand (one Raft write, one round trip).
async fn raw_claim_on(client: &mut etcd_client::Client, key: &str, lease: i64) -> Result<()> {
    if !client.txn(raw_claim_txn(key, lease)).await?.succeeded() {
        bail!("raw claim of {key} conflicted");
    }
    Ok(())
}

/// The etcd work of holding `n` claims the way the service does, done
/// directly: `n` keys created on one lease, in transactions of 64 that check
/// each is absent, 16 in flight. Returns the lease and the time it took.
async fn raw_hold(client: &etcd_client::Client, prefix: &str, n: usize) -> Result<(i64, Duration)> {
    // Long enough to outlast the writes (a million take a while), revoked
    // after.
    let lease = client.clone().lease_grant(3600, None).await?.id();
    let value = claim_sized_value();
    let txns: Vec<Txn> = (0..n)
        .collect::<Vec<_>>()
        .chunks(64)
        .map(|chunk| {
            let keys: Vec<String> = chunk.iter().map(|i| format!("{prefix}{i:07}")).collect();
            Txn::new()
                .when(
                    keys.iter()
                        .map(|k| Compare::create_revision(k.as_str(), CompareOp::Equal, 0))
                        .collect::<Vec<_>>(),
                )
                .and_then(
                    keys.iter()
                        .map(|k| {
                            TxnOp::put(
                                k.as_str(),
                                value.as_str(),
                                Some(PutOptions::new().with_lease(lease)),
                            )
                        })
                        .collect::<Vec<_>>(),
                )
        })
        .collect();
    let t = Instant::now();
    run_txns(client, txns, 16, "raw hold").await?;
    Ok((lease, t.elapsed()))
}

/// A value the size of a claim record.
fn claim_sized_value() -> String {
    format!(
        r#"{{"node_id":"raw-holder","endpoints":{{"rtmp":"rtmp://raw-holder.bench:1935","http":"http://raw-holder.bench:8080"}},"session_id":"{:016x}","service_id":"{:08x}","claimed_at_unix_ms":1790000000000,"lease_ttl_ms":10000}}"#,
        rand_u64(),
        rand_u64() as u32
    )
}

/// The floor of adopting `n` keys: reading each (read-only transactions of
/// 64 gets, 64 in flight) of keys written first, untimed.
async fn raw_read_all(client: &etcd_client::Client, prefix: &str, n: usize) -> Result<Duration> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    let (_lease, _) = raw_hold(client, prefix, n).await?;
    let t = Instant::now();
    stream::iter((0..n).collect::<Vec<_>>().chunks(64).map(|c| c.to_vec()))
        .map(|chunk| {
            let mut c = client.clone();
            let txn = Txn::new().and_then(
                chunk
                    .iter()
                    .map(|i| TxnOp::get(format!("{prefix}{i:07}"), None))
                    .collect::<Vec<_>>(),
            );
            async move {
                c.txn(txn).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(t.elapsed())
}

/// `n` leases of `ttl_s` seconds, granted 256 at a time.
async fn grant_many(client: &etcd_client::Client, n: usize, ttl_s: i64) -> Result<Vec<i64>> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    stream::iter(0..n)
        .map(|_| {
            let mut c = client.clone();
            async move { anyhow::Ok(c.lease_grant(ttl_s, None).await?.id()) }
        })
        .buffer_unordered(256)
        .try_collect()
        .await
}

/// The etcd work a re-adoption needs, done directly: `n` keys left by a
/// dead holder (each on a lease of its own, written first, untimed), then
/// timed: read the keys and rewrite them in transactions of 64 that check
/// each key is unchanged, on the lease each already has (adoption in place,
/// what the claim-service does) or, with `new_leases`, on a lease granted
/// for each (256 in flight; adoption as DESIGN.md first had it).
async fn raw_adopt(
    client: &etcd_client::Client,
    prefix: &str,
    n: usize,
    new_leases: bool,
) -> Result<Duration> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    // A value the size of a claim record.
    let value = format!(
        r#"{{"node_id":"raw-holder","endpoints":{{"rtmp":"rtmp://raw-holder.bench:1935"}},"session_id":"{:032x}","service_id":"{:016x}","claimed_at_unix_ms":1790000000000,"lease_ttl_ms":10000}}"#,
        rand_u64() as u128,
        rand_u64()
    );
    let old = grant_many(client, n, 60).await?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let puts: Vec<TxnOp> = chunk
            .iter()
            .map(|&i| {
                TxnOp::put(
                    format!("{prefix}{i:06}"),
                    value.as_str(),
                    Some(PutOptions::new().with_lease(old[i])),
                )
            })
            .collect();
        client.clone().txn(Txn::new().and_then(puts)).await?;
    }
    let t = Instant::now();
    // Read 64 at a time, 64 in flight: one answer for them all would pass
    // gRPC's 4 MB.
    let kvs: Vec<etcd_client::KeyValue> =
        stream::iter((0..n).collect::<Vec<_>>().chunks(64).map(|c| c.to_vec()))
            .map(|chunk| {
                let mut c = client.clone();
                let gets: Vec<TxnOp> = chunk
                    .iter()
                    .map(|&i| TxnOp::get(format!("{prefix}{i:06}"), None))
                    .collect();
                async move {
                    let resp = c.txn(Txn::new().and_then(gets)).await?;
                    let mut kvs = Vec::new();
                    for op in resp.op_responses() {
                        if let etcd_client::TxnOpResponse::Get(g) = op {
                            kvs.extend(g.kvs().iter().cloned());
                        }
                    }
                    anyhow::Ok(kvs)
                }
            })
            .buffer_unordered(64)
            .try_collect::<Vec<Vec<_>>>()
            .await?
            .into_iter()
            .flatten()
            .collect();
    let leases: Vec<i64> = if new_leases {
        grant_many(client, kvs.len(), 10).await?
    } else {
        kvs.iter().map(|kv| kv.lease()).collect()
    };
    let moves: Vec<_> = kvs.iter().zip(leases).collect();
    let txns: Vec<Txn> = moves
        .chunks(64)
        .map(|chunk| {
            Txn::new()
                .when(
                    chunk
                        .iter()
                        .map(|(kv, _)| {
                            Compare::mod_revision(kv.key(), CompareOp::Equal, kv.mod_revision())
                        })
                        .collect::<Vec<_>>(),
                )
                .and_then(
                    chunk
                        .iter()
                        .map(|(kv, lease)| {
                            TxnOp::put(
                                kv.key(),
                                kv.value(),
                                Some(PutOptions::new().with_lease(*lease)),
                            )
                        })
                        .collect::<Vec<_>>(),
                )
        })
        .collect();
    run_txns(client, txns, 64, "raw adoption").await?;
    Ok(t.elapsed())
}

/// Reads a raw watch until an event of `kind`.
async fn skip_to(w: &mut etcd_client::WatchStream, kind: EventType) -> Result<()> {
    loop {
        let m = w.message().await?.context("raw watch ended")?;
        if m.events().iter().any(|e| e.event_type() == kind) {
            return Ok(());
        }
    }
}

/// Claims `names` on a node session, pipelined (sent from a task of their
/// own while the answers are read); returns when all are claimed.
async fn claim_all(node: &mut Node, names: &[String]) -> Result<Duration> {
    let t = Instant::now();
    let tx = node.sender();
    let sending = names.to_vec();
    let sender = tokio::spawn(async move {
        for n in sending {
            let created = pb::node_message::Msg::Created(track(&n, "video"));
            tx.send(pb::NodeMessage { msg: Some(created) }).await?;
        }
        anyhow::Ok(())
    });
    let mut got = 0;
    while got < names.len() {
        match node.next().await? {
            Ok(Msg::Claimed(_)) => got += 1,
            Ok(Msg::Conflict(c)) => bail!("conflict on {}", c.broadcast),
            Ok(_) => {}
            Err(s) => bail!("session ended: {s}"),
        }
    }
    sender.await??;
    Ok(t.elapsed())
}

struct Setup {
    etcd: Etcd,
    svc: ClaimService,
    prefix: String,
}

/// One simulated node drives the whole load, far past a real node's event
/// rate, and part 7's thousand watchers come from one address: the
/// per-session and per-peer limits are lifted so that they are not measured.
const UNLIMITED: [&str; 6] = [
    "--max-events-per-second",
    "0",
    "--max-claims-per-node",
    "2000000",
    "--max-watches-per-peer",
    "4096",
];

/// etcd's RangeRequest with the one field a get of one key sets.
#[derive(Clone, PartialEq, prost::Message)]
struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
}

/// Requests per second and p99 of one h2load run.
struct H2loadRun {
    rate: f64,
    p99: Duration,
}

impl std::fmt::Display for H2loadRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} ({})", self.rate, ms(self.p99))
    }
}

async fn h2load_installed() -> bool {
    tokio::process::Command::new("h2load")
        .arg("--version")
        .output()
        .await
        .is_ok_and(|o| o.status.success())
}

/// Sends the gRPC request `body` to `url` with h2load for `seconds`: one
/// connection, `in_flight` requests at a time. Fails unless every answer
/// carried a message: a gRPC error is an HTTP 200 with trailers only, so
/// h2load alone would count it a success.
async fn h2load(url: &str, body: &[u8], in_flight: usize, seconds: u64) -> Result<H2loadRun> {
    let dir = std::env::temp_dir().join(format!("claims-bench-h2load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (body_file, log_file) = (dir.join("body"), dir.join("log"));
    std::fs::write(&body_file, body)?;
    let out = tokio::process::Command::new("h2load")
        .args(["-D", &seconds.to_string(), "-c", "1", "-t", "1"])
        .args(["-m", &in_flight.to_string()])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("-d")
        .arg(&body_file)
        .arg("--log-file")
        .arg(&log_file)
        .arg(url)
        .output()
        .await
        .context("running h2load")?;
    let report = String::from_utf8_lossy(&out.stdout);
    let line = |start: &str| {
        report
            .lines()
            .find(|l| l.starts_with(start))
            .with_context(|| format!("h2load printed no `{start}` line:\n{report}"))
    };
    // "requests: N total, N started, N done, N succeeded, 0 failed, ..."
    let counts: Vec<u64> = line("requests:")?
        .split(',')
        .filter_map(|part| part.split_whitespace().find_map(|w| w.parse().ok()))
        .collect();
    let (Some(&done), Some(&succeeded)) = (counts.get(2), counts.get(3)) else {
        bail!("h2load's request counts:\n{report}");
    };
    // "traffic: ... total, ... headers (...), 1.59MB (1670658) data"
    let data: u64 = line("traffic:")?
        .rsplit('(')
        .next()
        .and_then(|t| t.split(')').next())
        .and_then(|n| n.parse().ok())
        .context("h2load's data bytes")?;
    if !out.status.success() || done == 0 || succeeded != done || data < 6 * done {
        bail!("h2load against {url}: {done} done, {succeeded} succeeded, {data} bytes of messages:\n{report}");
    }
    // The log: start (us since the epoch), HTTP status, duration (us).
    let mut durations: Vec<Duration> = std::fs::read_to_string(&log_file)?
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.parse().ok())
        .map(Duration::from_micros)
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    if durations.is_empty() {
        bail!("h2load against {url} logged no request:\n{report}");
    }
    let seconds_run: f64 = line("finished in")?
        .trim_start_matches("finished in ")
        .split('s')
        .next()
        .and_then(|t| t.parse().ok())
        .context("h2load's run time")?;
    Ok(H2loadRun {
        rate: done as f64 / seconds_run,
        p99: percentile(&mut durations, 0.99),
    })
}

/// etcd's own account of its slow work (requests that took too long, slow
/// fsyncs and commits), for when the replica lost claims.
fn print_etcd_stalls(etcd: &Etcd) {
    let log = etcd.log_text();
    let slow = matching_lines(&log, &["took too long", "slow"]);
    eprintln!(
        "etcd logged {} slow operations; the last of them:",
        slow.len()
    );
    for line in slow.iter().rev().take(12).rev() {
        eprintln!("  {line}");
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.tmpfs {
        std::env::set_var("TMPDIR", "/dev/shm");
    }
    let etcd = Etcd::start().await?;
    let prefix = test_prefix("bench");
    let svc = ClaimService::start(&etcd.endpoint(), &prefix, &UNLIMITED).await?;
    let setup = Setup { etcd, svc, prefix };
    let mut raw = setup.etcd.client().await?;
    let raw_prefix = format!("/bench-raw-{:x}/", rand_u64());

    println!("# Broadcast Claims benchmark\n");
    println!(
        "etcd 3.4 (Debian), one member on loopback, data {}; claim-service release build; 2 shared cores. Baseline: raw etcd-client against the same etcd in the same run.\n",
        if args.tmpfs { "in /dev/shm" } else { "on disk" }
    );
    println!("| measure | claim-service | raw etcd-client | ratio |");
    println!("| --- | --- | --- | --- |");

    // 1 + 2: latency, interleaved so drift hits both sides alike.
    eprintln!("latency: {} claims per side", args.claims);
    let mut node = Node::attach(&setup.svc.addr(), hello("bench-node")).await?;
    let mut watcher = Watcher::open(&setup.svc, "lat/", 0).await?;
    let mut raw_watch = raw
        .watch(raw_prefix.as_str(), Some(WatchOptions::new().with_prefix()))
        .await?;
    let _ = raw_watch.message().await?;
    for i in 0..20 {
        let name = format!("warm/{i}");
        node.created(&name, "video").await?;
        node.expect_claimed(&name).await?;
        node.closed(&name, "video").await?;
        node.expect_released(&name).await?;
        let lease = raw_claim(&mut raw, &format!("{raw_prefix}warm{i}")).await?;
        raw.lease_revoke(lease).await?;
    }
    let (mut sc, mut rc, mut sr, mut rr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut pc, mut rd) = (Vec::new(), Vec::new());
    let pregranted = raw.lease_grant(600, None).await?.id();
    let claims = if args.held_only { 0 } else { args.claims };
    for i in 0..claims {
        let name = format!("lat/b{i:05}");
        let t = Instant::now();
        node.created(&name, "video").await?;
        node.expect_claimed(&name).await?;
        sc.push(t.elapsed());
        let key = format!("{raw_prefix}b{i:05}");
        let t = Instant::now();
        let lease = raw_claim(&mut raw, &key).await?;
        rc.push(t.elapsed());
        let on_lease = format!("{raw_prefix}p{i:05}");
        let t = Instant::now();
        raw_claim_on(&mut raw, &on_lease, pregranted).await?;
        pc.push(t.elapsed());
        watcher
            .expect(pb::claim_event::Kind::Claimed, &name)
            .await?;
        let t = Instant::now();
        node.closed(&name, "video").await?;
        watcher
            .expect(pb::claim_event::Kind::Released, &name)
            .await?;
        sr.push(t.elapsed());
        node.expect_released(&name).await?;
        skip_to(&mut raw_watch, EventType::Put).await?;
        skip_to(&mut raw_watch, EventType::Put).await?;
        let t = Instant::now();
        raw.lease_revoke(lease).await?;
        skip_to(&mut raw_watch, EventType::Delete).await?;
        rr.push(t.elapsed());
        let t = Instant::now();
        raw.delete(on_lease.as_str(), None).await?;
        skip_to(&mut raw_watch, EventType::Delete).await?;
        rd.push(t.elapsed());
    }
    if args.held_only {
        return held(args, setup, raw, raw_prefix).await;
    }
    // Unread, its events would pile up on the raw client's connection until
    // h2's flood guard ends it.
    drop(raw_watch);
    let (sc50, sc99, rc50, rc99) = (
        percentile(&mut sc, 0.5),
        percentile(&mut sc, 0.99),
        percentile(&mut rc, 0.5),
        percentile(&mut rc, 0.99),
    );
    let (sr50, sr99, rr50, rr99) = (
        percentile(&mut sr, 0.5),
        percentile(&mut sr, 0.99),
        percentile(&mut rr, 0.5),
        percentile(&mut rr, 0.99),
    );
    row(
        "1. claim latency p50 (`created` → `claimed` / grant + txn)",
        ms(sc50),
        ms(rc50),
        ratio(sc50.as_secs_f64(), rc50.as_secs_f64()),
    );
    row(
        "1. claim latency p99",
        ms(sc99),
        ms(rc99),
        ratio(sc99.as_secs_f64(), rc99.as_secs_f64()),
    );
    let (pc50, pc99) = (percentile(&mut pc, 0.5), percentile(&mut pc, 0.99));
    row(
        "1. claim latency p50 against the floor (txn on a lease granted before)",
        ms(sc50),
        ms(pc50),
        ratio(sc50.as_secs_f64(), pc50.as_secs_f64()),
    );
    row(
        "1. … p99",
        ms(sc99),
        ms(pc99),
        ratio(sc99.as_secs_f64(), pc99.as_secs_f64()),
    );
    row(
        "2. release → watch event p50 (`closed` → RELEASED / revoke → DELETE)",
        ms(sr50),
        ms(rr50),
        ratio(sr50.as_secs_f64(), rr50.as_secs_f64()),
    );
    row(
        "2. release → watch event p99",
        ms(sr99),
        ms(rr99),
        ratio(sr99.as_secs_f64(), rr99.as_secs_f64()),
    );
    let (rd50, rd99) = (percentile(&mut rd, 0.5), percentile(&mut rd, 0.99));
    row(
        "2. release → watch event p50 against a raw delete → DELETE",
        ms(sr50),
        ms(rd50),
        ratio(sr50.as_secs_f64(), rd50.as_secs_f64()),
    );
    row(
        "2. … p99",
        ms(sr99),
        ms(rd99),
        ratio(sr99.as_secs_f64(), rd99.as_secs_f64()),
    );

    // 3: throughput.
    for &c in &args.concurrency {
        eprintln!("throughput at {c}");
        let window = Duration::from_secs(args.seconds);
        // Ours: c broadcasts in flight on one session, each cycling claim → release.
        let names: Vec<String> = (0..c).map(|i| format!("tp{c}/b{i:04}")).collect();
        for n in &names {
            node.created(n, "video").await?;
        }
        let t = Instant::now();
        let mut cycles = 0u64;
        let mut closing = 0usize;
        loop {
            match node.next().await? {
                Ok(Msg::Claimed(cl)) => {
                    let b = cl.claim.map(|c| c.broadcast).unwrap_or_default();
                    node.closed(&b, "video").await?;
                }
                Ok(Msg::Released(r)) => {
                    cycles += 1;
                    if t.elapsed() < window {
                        node.created(&r.broadcast, "video").await?;
                    } else {
                        closing += 1;
                        if closing == c {
                            break;
                        }
                    }
                }
                Ok(_) => {}
                Err(s) => bail!("session ended: {s}"),
            }
        }
        let ours = cycles as f64 / t.elapsed().as_secs_f64();
        // Raw: c tasks each cycling grant + txn + revoke.
        let count = Arc::new(AtomicU64::new(0));
        let t = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..c {
            // A connection of its own per task, as separate clients would have.
            let mut client = setup.etcd.client().await?;
            let count = count.clone();
            let key = format!("{raw_prefix}tp{c}/{i}");
            tasks.push(tokio::spawn(async move {
                while t.elapsed() < window {
                    let lease = raw_claim(&mut client, &key).await?;
                    client.lease_revoke(lease).await?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        let theirs = count.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();
        row(
            &format!("3. claim + release cycles/s, {c} concurrent"),
            format!("{ours:.0}"),
            format!("{theirs:.0}"),
            ratio(ours, theirs),
        );
    }

    // 4: reads.
    node.created("read/x", "video").await?;
    node.expect_claimed("read/x").await?;
    // The cache follows etcd's watch: wait until it has the claim.
    let mut reader = setup.svc.ownership().await?;
    until(
        Duration::from_millis(10),
        async || {
            Ok(reader
                .get_owner(pb::GetOwnerRequest {
                    broadcast: "read/x".into(),
                    consistent: false,
                })
                .await
                .is_ok())
        },
        |cached| *cached,
    )
    .await?;
    let key = format!("{}broadcasts/read/x", setup.prefix);
    let channel = setup.svc.channel().await?;
    for c in [1usize, 64] {
        let mut results = Vec::new();
        for mode in ["cache", "consistent", "raw"] {
            eprintln!("reads: {mode} at {c}");
            let window = Duration::from_secs(args.seconds);
            let t = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..c {
                let mut client = OwnershipClient::new(channel.clone());
                let mut etcd = setup.etcd.client().await?;
                let key = key.clone();
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while t.elapsed() < window {
                        let s = Instant::now();
                        match mode {
                            "raw" => {
                                etcd.get(key.as_str(), None).await?;
                            }
                            _ => {
                                client
                                    .get_owner(pb::GetOwnerRequest {
                                        broadcast: "read/x".into(),
                                        consistent: mode == "consistent",
                                    })
                                    .await?;
                            }
                        }
                        lat.push(s.elapsed());
                    }
                    anyhow::Ok(lat)
                }));
            }
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await??);
            }
            let rate = all.len() as f64 / t.elapsed().as_secs_f64();
            results.push((mode, rate, percentile(&mut all, 0.99)));
        }
        let (cache, consistent, rawr) = (results[0], results[1], results[2]);
        row(
            &format!("4. GetOwner/s from the cache vs raw get, {c} callers (p99)"),
            format!("{:.0} ({})", cache.1, ms(cache.2)),
            format!("{:.0} ({})", rawr.1, ms(rawr.2)),
            ratio(cache.1, rawr.1),
        );
        row(
            &format!("4. GetOwner/s `consistent` vs raw get, {c} callers (p99)"),
            format!("{:.0} ({})", consistent.1, ms(consistent.2)),
            format!("{:.0} ({})", rawr.1, ms(rawr.2)),
            ratio(consistent.1, rawr.1),
        );
        row(
            &format!("4. cache vs `consistent`, {c} callers"),
            format!("{:.0}", cache.1),
            format!("{:.0} (consistent)", consistent.1),
            ratio(cache.1, consistent.1),
        );
    }

    // 4, again with a load generator in C (h2load), which leaves the shared
    // cores to the servers: what the service itself can answer.
    let service_url = format!("{}/claims.v1.Ownership/GetOwner", setup.svc.addr());
    let etcd_url = format!("{}/etcdserverpb.KV/Range", setup.etcd.endpoint());
    let request = |consistent| {
        grpc_frame(&pb::GetOwnerRequest {
            broadcast: "read/x".into(),
            consistent,
        })
    };
    let get = grpc_frame(&RangeRequest {
        key: key.clone().into_bytes(),
    });
    let lean_reads: &[usize] = if h2load_installed().await {
        &[1, 64]
    } else {
        row(
            "4. GetOwner by h2load",
            "h2load not installed (Debian nghttp2-client)".into(),
            "–".into(),
            "–".into(),
        );
        &[]
    };
    for &c in lean_reads {
        eprintln!("reads by h2load at {c}");
        let cache = h2load(&service_url, &request(false), c, args.seconds).await?;
        let consistent = h2load(&service_url, &request(true), c, args.seconds).await?;
        let raw = h2load(&etcd_url, &get, c, args.seconds).await?;
        row(
            &format!("4. h2load: GetOwner/s from the cache vs raw Range, {c} in flight (p99)"),
            cache.to_string(),
            raw.to_string(),
            ratio(cache.rate, raw.rate),
        );
        row(
            &format!("4. h2load: GetOwner/s `consistent` vs raw Range, {c} in flight (p99)"),
            consistent.to_string(),
            raw.to_string(),
            ratio(consistent.rate, raw.rate),
        );
        row(
            &format!("4. h2load: cache vs `consistent`, {c} in flight"),
            format!("{:.0}", cache.rate),
            format!("{:.0} (consistent)", consistent.rate),
            ratio(cache.rate, consistent.rate),
        );
    }

    if args.watchers > 0 {
        fan_out(&setup, &mut node, &raw_prefix, args.watchers, 50).await?;
    }
    held(args, setup, raw, raw_prefix).await
}

/// When each watcher first saw each round's change, by round; told to
/// whoever waits on them.
#[derive(Default)]
struct Seen {
    rounds: std::sync::Mutex<Vec<std::collections::HashMap<usize, Instant>>>,
    news: tokio::sync::Notify,
}

type Sightings = Arc<Seen>;

fn saw(sightings: &Sightings, round: usize, watcher: usize) {
    let mut s = sightings.rounds.lock().unwrap();
    if s.len() <= round {
        s.resize(round + 1, Default::default());
    }
    s[round].entry(watcher).or_insert_with(Instant::now);
    drop(s);
    sightings.news.notify_waiters();
}

/// Waits until `n` watchers saw `round` (or `within`).
async fn all_saw(
    sightings: &Sightings,
    round: usize,
    n: usize,
    within: Duration,
) -> Result<Vec<Instant>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        // Registered before looking, so no sighting in between is missed.
        let news = sightings.news.notified();
        let seen: Vec<Instant> = sightings
            .rounds
            .lock()
            .unwrap()
            .get(round)
            .map(|m| m.values().copied().collect())
            .unwrap_or_default();
        if seen.len() >= n {
            return Ok(seen);
        }
        if tokio::time::timeout_at(deadline, news).await.is_err() {
            bail!("round {round}: {} of {n} watchers saw it", seen.len());
        }
    }
}

/// Part 7: `watchers` `WatchClaims` clients on one replica (over 10
/// connections) see each of `rounds` releases: from `closed` sent to each
/// seeing RELEASED; against as many raw etcd watchers (10 clients) seeing a
/// raw delete.
async fn fan_out(
    setup: &Setup,
    node: &mut Node,
    raw_prefix: &str,
    watchers: usize,
    rounds: usize,
) -> Result<()> {
    eprintln!("fan-out: {watchers} watchers, {rounds} releases");
    let ours: Sightings = Default::default();
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(setup.svc.channel().await?);
    }
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let mut client = OwnershipClient::new(channels[w % channels.len()].clone());
        let mut stream = client
            .watch_claims(pb::WatchClaimsRequest {
                prefix: "fan/".into(),
                start_revision: 0,
            })
            .await?
            .into_inner();
        let ours = ours.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(e)) = stream.message().await {
                let name = e.claim.map(|c| c.broadcast).unwrap_or_default();
                let Some(round) = name.strip_prefix("fan/r").and_then(|r| r.parse().ok()) else {
                    continue;
                };
                if e.kind == pb::claim_event::Kind::Released as i32 {
                    saw(&ours, round, w);
                }
            }
        }));
    }
    let theirs: Sightings = Default::default();
    let mut raw_clients = Vec::new();
    for _ in 0..10 {
        raw_clients.push(setup.etcd.client().await?);
    }
    let fan_prefix = format!("{raw_prefix}fan/");
    for w in 0..watchers {
        let mut c = raw_clients[w % raw_clients.len()].clone();
        let mut stream = c
            .watch(fan_prefix.as_str(), Some(WatchOptions::new().with_prefix()))
            .await?;
        let theirs = theirs.clone();
        let fan_prefix = fan_prefix.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(m)) = stream.message().await {
                for e in m.events() {
                    let Some(kv) = e.kv() else { continue };
                    let name = kv.key_str().unwrap_or_default();
                    let Some(round) = name
                        .strip_prefix(fan_prefix.as_str())
                        .and_then(|r| r.strip_prefix('r'))
                        .and_then(|r| r.parse().ok())
                    else {
                        continue;
                    };
                    if e.event_type() == EventType::Delete {
                        saw(&theirs, round, w);
                    }
                }
            }
        }));
    }
    let mut raw = setup.etcd.client().await?;
    let (mut ours_lat, mut theirs_lat) = (Vec::new(), Vec::new());
    // Round 0 is repeated until every stream is seen open; not counted.
    let settle = Duration::from_secs(30);
    for round in 0..=rounds {
        let name = format!("fan/r{round}");
        let key = format!("{fan_prefix}r{round}");
        let (mut seen, mut seen_raw);
        let (mut t, mut t_raw);
        let mut tries = 0;
        loop {
            tries += 1;
            node.created(&name, "video").await?;
            node.expect_claimed(&name).await?;
            t = Instant::now();
            node.closed(&name, "video").await?;
            let within = if round == 0 {
                Duration::from_secs(2)
            } else {
                settle
            };
            seen = all_saw(&ours, round, watchers, within).await;
            node.expect_released(&name).await?;
            raw.put(key.as_str(), "x", None).await?;
            t_raw = Instant::now();
            raw.delete(key.as_str(), None).await?;
            seen_raw = all_saw(&theirs, round, watchers, within).await;
            if (seen.is_ok() && seen_raw.is_ok()) || round > 0 || tries > 10 {
                break;
            }
        }
        let (seen, seen_raw) = (seen?, seen_raw?);
        if round > 0 {
            ours_lat.extend(seen.iter().map(|s| s.duration_since(t)));
            theirs_lat.extend(seen_raw.iter().map(|s| s.duration_since(t_raw)));
        }
    }
    for t in tasks {
        t.abort();
    }
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        let (a, b) = (percentile(&mut ours_lat, q), percentile(&mut theirs_lat, q));
        row(
            &format!("7. {watchers} watchers on one replica: release → each sees it, {label}"),
            ms(a),
            format!("{} ({watchers} raw etcd watchers)", ms(b)),
            ratio(a.as_secs_f64(), b.as_secs_f64()),
        );
    }
    Ok(())
}

/// Parts 5 and 6: claims held at the default lease, their failover, and a
/// replica dying with its nodes.
async fn held(
    args: Args,
    setup: Setup,
    raw: etcd_client::Client,
    raw_prefix: String,
) -> Result<()> {
    // 5: held claims, 10 s lease, beside raw doing the same etcd work.
    let pid = setup.svc.pid().context("service pid")?;
    let idle_rss = proc_status_kib(pid, "VmRSS:")?;
    eprintln!("holding {} claims at 10 s", args.held);
    let mut holder = Node::attach(&setup.svc.addr(), hello("bench-holder")).await?;
    let names: Vec<String> = (0..args.held).map(|i| format!("held/h{i:07}")).collect();
    let took = claim_all(&mut holder, &names).await?;
    let m0 = setup.svc.metrics().await?;
    let t0 = cpu_ticks(pid)?;
    tokio::time::sleep(Duration::from_secs(args.hold_seconds)).await;
    let m1 = setup.svc.metrics().await?;
    // % of a core (ticks are 1/100 s).
    let cpu = (cpu_ticks(pid)? - t0) as f64 / args.hold_seconds as f64;
    let renewals = (metric(&m1, "claims_keepalive_renewals_total")
        - metric(&m0, "claims_keepalive_renewals_total"))
        / args.hold_seconds as f64;
    let lost = lost_total(&m1);
    let rss = proc_status_kib(pid, "VmRSS:")?;
    let streams = etcd_keepalive_streams(&setup.etcd).await?;
    let (etcd_rss, etcd_db) = etcd_footprint(&setup.etcd).await?;
    let mut etcd = setup.etcd.client().await?;
    let held_key = format!("{}broadcasts/held/", setup.prefix);
    let still = count_keys(&mut etcd, &held_key).await?;
    let per_claim = (rss.saturating_sub(idle_rss) as f64 * 1024.0) / args.held as f64;
    if lost > 0.0 {
        eprintln!(
            "{lost} claims lost: {} expired (etcd answered a renewal with TTL 0), {} unrenewed (no renewal confirmed within the TTL)",
            lost_for(&m1, "expired"),
            lost_for(&m1, "unrenewed"),
        );
        print_log_lines(&setup.svc, "the losses", &["lease lost", "keep-alive"], 10);
        print_etcd_stalls(&setup.etcd);
    }
    row(
        "5. … memory per claim (claim-service)",
        format!(
            "{per_claim:.0} B (RSS {} MiB, idle {} MiB)",
            rss / 1024,
            idle_rss / 1024
        ),
        String::new(),
        String::new(),
    );
    row(
        &format!(
            "5. … keep-alive streams / renewals per s / lost over {} s / still in etcd",
            args.hold_seconds
        ),
        format!("{streams} / {renewals:.1} / {lost} / {still}"),
        String::new(),
        String::new(),
    );
    row(
        "5. … claim-service CPU / etcd RSS / etcd db size",
        format!("{cpu:.1} % of a core / {etcd_rss:.0} MiB / {etcd_db:.0} MiB"),
        String::new(),
        String::new(),
    );
    eprintln!("raw baseline: {} keys on one lease", args.held);
    let (raw_lease, raw_took) = raw_hold(&raw, &format!("{raw_prefix}held/"), args.held).await?;
    raw.clone().lease_revoke(raw_lease).await?;
    row(
        &format!(
            "5. {} claims held at 10 s lease: time to claim all",
            args.held
        ),
        format!("{:.1} s", took.as_secs_f64()),
        format!(
            "{:.1} s (keys on one lease, 64 per txn)",
            raw_took.as_secs_f64()
        ),
        ratio(took.as_secs_f64(), raw_took.as_secs_f64()),
    );
    if args.held > args.failover_max {
        eprintln!(
            "part 6 skipped: {} claims are more than --failover-max",
            args.held
        );
        return Ok(());
    }

    // 6: failover of those claims to another replica.
    eprintln!("failover of {} claims", args.held);
    let other_flags = [&UNLIMITED[..], &["--service-id", "bench-other"]].concat();
    let other = ClaimService::start(&setup.etcd.endpoint(), &setup.prefix, &other_flags).await?;
    let mut svc = setup.svc;
    svc.kill();
    let t = Instant::now();
    let mut moved = readopt(&other.addr(), &names).await?;
    let failover = t.elapsed();
    drop(holder);
    print_log_lines(&other, "re-adoption: claims retried", &["retrying"], 1);
    eprintln!("raw baseline: reading {} keys", args.held);
    let raw_read = raw_read_all(&raw, &format!("{raw_prefix}read/"), args.held).await?;
    eprintln!("raw baseline: rewriting {} keys in place", args.held);
    let raw_rewrite = raw_adopt(&raw, &format!("{raw_prefix}adopted/"), args.held, false).await?;
    row(
        &format!(
            "6. re-adopting {} claims on another replica after kill -9 (every one `claimed`, adopted)",
            args.held
        ),
        format!("{:.2} s", failover.as_secs_f64()),
        format!("{:.2} s (read each key)", raw_read.as_secs_f64()),
        ratio(failover.as_secs_f64(), raw_read.as_secs_f64()),
    );
    row(
        "6. … against rewriting each in place (the model before: a lease per claim)",
        format!("{:.2} s", failover.as_secs_f64()),
        format!("{:.2} s", raw_rewrite.as_secs_f64()),
        ratio(failover.as_secs_f64(), raw_rewrite.as_secs_f64()),
    );

    // 6, planned: the same claims moved on purpose. `other` is drained
    // (`claimctl drain-replica`): the node is told where to go, goes there
    // and is adopted; against the crash failover above.
    eprintln!("draining the replica that holds {} claims", args.held);
    let token_file =
        std::env::temp_dir().join(format!("claims-bench-token-{}", std::process::id()));
    std::fs::write(&token_file, format!("{BENCH_TOKEN}\n"))?;
    let port = free_port();
    let advertise = format!("http://127.0.0.1:{port}");
    let token = token_file.to_string_lossy().to_string();
    let third_flags = [
        &UNLIMITED[..],
        &[
            "--service-id",
            "bench-third",
            "--advertise",
            &advertise,
            "--admin-token-file",
            &token,
        ],
    ]
    .concat();
    let third =
        ClaimService::start_at(port, &setup.etcd.endpoint(), &setup.prefix, &third_flags).await;
    let _ = std::fs::remove_file(&token_file);
    let mut third = third?;
    let t = Instant::now();
    system_tests::fleet::claimctl_as_admin(
        &third.addr(),
        BENCH_TOKEN,
        &["drain-replica", "bench-other"],
    )?;
    let to = loop {
        match moved.next().await? {
            Ok(Msg::Move(m)) => break m.to,
            Ok(_) => {}
            Err(s) => bail!("session ended before it was told to move: {s}"),
        }
    };
    if to != advertise {
        bail!("told to move to {to:?}, not to the other replica {advertise}");
    }
    let told = t.elapsed();
    drop(moved);
    let moved = readopt(&third.addr(), &names).await?;
    let drain = t.elapsed();
    row(
        &format!(
            "6. … moved on purpose: {} claims off a drained replica (`drain-replica` → every one `claimed`, adopted, at the replica named)",
            args.held
        ),
        format!(
            "{:.2} s (told to move after {:.2} s)",
            drain.as_secs_f64(),
            told.as_secs_f64()
        ),
        format!("{:.2} s (kill -9, above)", failover.as_secs_f64()),
        ratio(drain.as_secs_f64(), failover.as_secs_f64()),
    );
    row(
        "6. … of which re-adopting at the replica named (from the move)",
        format!("{:.2} s", (drain - told).as_secs_f64()),
        format!("{:.2} s (kill -9, above)", failover.as_secs_f64()),
        ratio((drain - told).as_secs_f64(), failover.as_secs_f64()),
    );
    drop(other);

    // 6, the worst case: the replica and its node die together. Nobody
    // renews the node's lease; etcd expires it, with every claim on it.
    eprintln!("replica and node killed together");
    let t = Instant::now();
    third.kill();
    drop(moved);
    let gone = until(
        Duration::from_millis(20),
        async || count_keys(&mut etcd, &held_key).await,
        |n| *n == 0,
    )
    .await;
    row(
        &format!(
            "6. … replica and node killed together: all {} claims gone from etcd after",
            args.held
        ),
        match gone {
            Ok(_) => format!("{:.2} s", t.elapsed().as_secs_f64()),
            Err(e) => format!("not all: {e}"),
        },
        "goal: TTL + 1 s = 11 s".into(),
        String::new(),
    );
    drop(svc);
    Ok(())
}

/// The admin token of the replica part 6 drains through.
const BENCH_TOKEN: &str = "bench-admin-token-0123";

/// The held claims' node attaching at `addr` with every one of `names`
/// live: the session once each is `claimed` again, adopted.
async fn readopt(addr: &str, names: &[String]) -> Result<Node> {
    let mut again = hello("bench-holder");
    again.live = names.iter().map(|n| track(n, "video")).collect();
    let mut node = Node::attach(addr, again).await?;
    let mut adopted = 0;
    while adopted < names.len() {
        match node.next().await? {
            Ok(Msg::Claimed(c)) if c.adopted => adopted += 1,
            Ok(Msg::Claimed(c)) => bail!(
                "{:?} claimed anew, not adopted",
                c.claim.map(|c| c.broadcast)
            ),
            Ok(_) => {}
            Err(s) => bail!("session ended: {s}"),
        }
    }
    Ok(node)
}

/// How many keys etcd has under `prefix`.
async fn count_keys(etcd: &mut etcd_client::Client, prefix: &str) -> Result<i64> {
    Ok(etcd
        .get(
            prefix,
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await?
        .count())
}
