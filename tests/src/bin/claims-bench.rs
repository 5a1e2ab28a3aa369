//! Benchmark: the claim-service side by side with raw etcd-client doing the
//! same work against the same etcd, in the same run.
//!
//! 1. Claim latency: a node's `created` → `claimed`, against raw
//!    lease-grant + the same create-if-absent transaction.
//! 2. Release → watch event: a node's last `closed` → a `WatchClaims`
//!    watcher's RELEASED, against raw lease-revoke → an etcd watch's DELETE.
//! 3. Holding many claims: the service's memory and CPU, and the keep-alive
//!    streams etcd sees open, against raw etcd-client with one
//!    `lease_keep_alive` per lease.
//!
//! Run with `scripts/bench.sh`; prints a Markdown report.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use system_tests::v1 as pb;
use system_tests::*;

#[derive(Parser)]
struct Args {
    /// Sequential claims (and releases) measured on each side.
    #[arg(long, default_value_t = 500)]
    claims: usize,
    /// Claims held at once for the memory / stream measurement.
    #[arg(long, default_value_t = 10_000)]
    held: usize,
    /// How long the held claims are kept alive while CPU is sampled.
    #[arg(long, default_value = "15")]
    hold_seconds: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Summary {
    p50: Duration,
    p99: Duration,
}

fn summarize(mut v: Vec<Duration>) -> Summary {
    v.sort();
    Summary {
        p50: percentile(&v, 0.5),
        p99: percentile(&v, 0.99),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64())
}

/// Keep-alive streams etcd has open: started minus finished LeaseKeepAlive
/// calls, from etcd's own metrics.
async fn etcd_keepalive_streams(etcd: &Etcd) -> Result<i64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", etcd.client_port)).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    let sum = |name: &str| -> i64 {
        body.lines()
            .filter(|l| l.starts_with(name) && l.contains("grpc_method=\"LeaseKeepAlive\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as i64
    };
    Ok(sum("grpc_server_started_total") - sum("grpc_server_handled_total"))
}

async fn raw_claim(client: &mut etcd_client::Client, key: &str) -> Result<i64> {
    let lease = client.lease_grant(10, None).await?.id();
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            r#"{"node_id":"raw"}"#,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)]);
    let resp = client.txn(txn).await?;
    if !resp.succeeded() {
        bail!("raw claim of {key} conflicted");
    }
    Ok(lease)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let etcd = Etcd::start().await?;
    let prefix = test_prefix("bench");
    let svc = ClaimService::start(&etcd.endpoint(), &prefix, &[]).await?;
    let pid = svc.pid().context("service pid")?;
    let mut raw = etcd.client().await?;
    let raw_prefix = format!("/bench-raw-{:x}/", rand_u64());

    // --- 1 and 2: latency, interleaved so drift hits both sides alike.
    let mut node = Node::attach(&svc.addr(), hello("bench-node")).await?;
    let mut watcher = Watcher::open(&svc, "lat/", 0).await?;
    let mut raw_watch = raw
        .watch(raw_prefix.as_str(), Some(WatchOptions::new().with_prefix()))
        .await?;
    let _ = raw_watch.message().await?; // the "created" response

    // Warm up both paths.
    for i in 0..20 {
        let name = format!("warm/{i}");
        node.created(&name, "video").await?;
        node.expect_claimed(&name).await?;
        raw_claim(&mut raw, &format!("{raw_prefix}warm{i}")).await?;
    }

    let (mut svc_claim, mut raw_claim_t, mut svc_rel, mut raw_rel) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.claims {
        let name = format!("lat/b{i:05}");
        let t = Instant::now();
        node.created(&name, "video").await?;
        node.expect_claimed(&name).await?;
        svc_claim.push(t.elapsed());

        let key = format!("{raw_prefix}b{i:05}");
        let t = Instant::now();
        let lease = raw_claim(&mut raw, &key).await?;
        raw_claim_t.push(t.elapsed());

        // Skip the CLAIMED event so the next wait sees only the release.
        watcher
            .expect(pb::claim_event::Kind::Claimed, &name)
            .await?;
        let t = Instant::now();
        node.closed(&name, "video").await?;
        watcher
            .expect(pb::claim_event::Kind::Released, &name)
            .await?;
        svc_rel.push(t.elapsed());
        node.expect_released(&name).await?;

        // Skip the PUT event on the raw watch.
        loop {
            let m = raw_watch.message().await?.context("raw watch ended")?;
            if m.events().iter().any(|e| e.event_type() == EventType::Put) {
                break;
            }
        }
        let t = Instant::now();
        raw.lease_revoke(lease).await?;
        loop {
            let m = raw_watch.message().await?.context("raw watch ended")?;
            if m.events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                break;
            }
        }
        raw_rel.push(t.elapsed());
    }
    let (sc, rc, sr, rr) = (
        summarize(svc_claim),
        summarize(raw_claim_t),
        summarize(svc_rel),
        summarize(raw_rel),
    );

    eprintln!("latency done; holding {} claims", args.held);
    // --- 3: many claims held at once.
    let rss_before = proc_status_kib(pid, "VmRSS:")?;
    let mut holder = Node::attach(&svc.addr(), hello("bench-holder")).await?;
    let t = Instant::now();
    for i in 0..args.held {
        holder.created(&format!("held/h{i:05}"), "video").await?;
    }
    let mut got = 0;
    while got < args.held {
        if let Ok(pb::service_message::Msg::Claimed(_)) = holder.next().await? {
            got += 1;
        }
    }
    let claim_all = t.elapsed();
    let ticks_before = cpu_ticks(pid)?;
    let hold = Duration::from_secs(args.hold_seconds);
    tokio::time::sleep(hold).await;
    let ticks = cpu_ticks(pid)? - ticks_before;
    let clk_tck = 100.0; // Linux USER_HZ
    let cpu_pct = ticks as f64 / clk_tck / hold.as_secs_f64() * 100.0;
    let rss_held = proc_status_kib(pid, "VmRSS:")?;
    // Only the service renews leases so far: every open stream is its own.
    let svc_streams = etcd_keepalive_streams(&etcd).await?;
    let metrics = svc.metrics().await?;
    let held_gauge = metrics
        .lines()
        .find_map(|l| l.strip_prefix("claims_held "))
        .unwrap_or("?")
        .trim()
        .to_string();
    let lost = metrics
        .lines()
        .filter(|l| l.starts_with("claims_lost_total"))
        .collect::<Vec<_>>()
        .join(", ");
    holder.goodbye().await?;
    eprintln!("releasing the held claims");
    let mut released = 0;
    while released < args.held {
        if let Ok(pb::service_message::Msg::Released(_)) = holder.next().await? {
            released += 1;
        }
    }

    eprintln!(
        "baseline: {} raw leases with one keep-alive stream each",
        args.held
    );
    // Baseline: raw etcd-client, one keep-alive per lease.
    let self_pid = std::process::id();
    let self_rss_before = proc_status_kib(self_pid, "VmRSS:")?;
    let streams_before = etcd_keepalive_streams(&etcd).await?;
    let mut keepers = Vec::with_capacity(args.held);
    let t = Instant::now();
    for i in 0..args.held {
        let lease = raw_claim(&mut raw, &format!("{raw_prefix}held{i:05}")).await?;
        keepers.push(raw.lease_keep_alive(lease).await?);
    }
    let raw_claim_all = t.elapsed();
    let raw_streams = etcd_keepalive_streams(&etcd).await? - streams_before;
    let self_rss_held = proc_status_kib(self_pid, "VmRSS:")?;
    drop(keepers);

    println!("# Broadcast Claims benchmark\n");
    println!(
        "etcd 3.4 (Debian), single member on loopback; claim-service release build; {} sequential claims per side, interleaved; {} held claims.\n",
        args.claims, args.held
    );
    println!("| measure | claim-service | raw etcd-client | ratio |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| claim p50 (created → claimed / grant + txn) | {} | {} | {} |",
        ms(sc.p50),
        ms(rc.p50),
        ratio(sc.p50, rc.p50)
    );
    println!(
        "| claim p99 | {} | {} | {} |",
        ms(sc.p99),
        ms(rc.p99),
        ratio(sc.p99, rc.p99)
    );
    println!(
        "| release → watch event p50 (closed → RELEASED / revoke → DELETE) | {} | {} | {} |",
        ms(sr.p50),
        ms(rr.p50),
        ratio(sr.p50, rr.p50)
    );
    println!(
        "| release → watch event p99 | {} | {} | {} |",
        ms(sr.p99),
        ms(rr.p99),
        ratio(sr.p99, rr.p99)
    );
    println!(
        "| {} claims made, pipelined | {:.2} s | {:.2} s (sequential, one keeper each) | {} |",
        args.held,
        claim_all.as_secs_f64(),
        raw_claim_all.as_secs_f64(),
        ratio(claim_all, raw_claim_all)
    );
    println!(
        "| keep-alive streams open on etcd with {} leases | {} | {} | |",
        args.held, svc_streams, raw_streams
    );
    println!(
        "| memory with {} claims held | claim-service RSS {} MiB (was {} MiB idle) | client RSS grew {} MiB | |",
        args.held,
        rss_held / 1024,
        rss_before / 1024,
        self_rss_held.saturating_sub(self_rss_before) / 1024
    );
    println!(
        "| claim-service CPU while renewing {} leases | {:.1} % of one core over {} s | | |",
        args.held,
        cpu_pct,
        hold.as_secs()
    );
    println!(
        "\nclaims_held gauge while holding: {held_gauge}; lost: {}",
        if lost.is_empty() { "none".into() } else { lost }
    );
    Ok(())
}
