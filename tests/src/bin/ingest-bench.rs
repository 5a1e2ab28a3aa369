//! Benchmark of the ingest node, with baselines measured in the same run.
//!
//! 1. Publish → accepted: an RTMP client (rml_rtmp) asks to publish and
//!    times the answer, which waits for the claim; side by side with raw
//!    etcd-client doing lease-grant + the claim transaction.
//! 2. HTTP-FLV fan-out: a real ffmpeg publishes; the node's CPU and memory
//!    with no viewers, then with many viewers reading at once.
//!
//! Run with `scripts/bench.sh`; prints a Markdown report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use system_tests::rtmp_client::RtmpClient;
use system_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// Publishes timed on each side.
    #[arg(long, default_value_t = 200)]
    publishes: usize,
    /// Viewers reading one broadcast at once.
    #[arg(long, default_value_t = 100)]
    viewers: usize,
    /// Seconds each fan-out phase is measured.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// Lease-grant + the claim transaction, timed; the revoke after it is not.
async fn raw_claim(client: &mut etcd_client::Client, key: &str) -> Result<Duration> {
    let t = Instant::now();
    let lease = client.lease_grant(10, None).await?.id();
    let txn = raw_claim_txn(key, lease);
    anyhow::ensure!(client.txn(txn).await?.succeeded(), "raw claim conflicted");
    let took = t.elapsed();
    client.lease_revoke(lease).await?;
    Ok(took)
}

/// CPU (% of one core) and RSS (MiB) of `pid` over `secs`.
async fn sample(pid: u32, secs: u64) -> Result<(f64, u64)> {
    let t0 = cpu_ticks(pid)?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let ticks = cpu_ticks(pid)? - t0;
    Ok((
        ticks as f64 / 100.0 / secs as f64 * 100.0,
        proc_status_kib(pid, "VmRSS:")? / 1024,
    ))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let etcd = Etcd::start().await?;
    let prefix = test_prefix("ingest-bench");
    let svc = ClaimService::start(&etcd.endpoint(), &prefix, &[]).await?;
    let node = IngestNode::start("bench-a", &[svc.addr()], &[]).await?;
    node.wait_attached().await?;
    let mut raw = etcd.client().await?;

    // 1. Publish → accepted, interleaved with the raw claim.
    eprintln!("timing {} publishes", args.publishes);
    let (mut node_t, mut raw_t) = (Vec::new(), Vec::new());
    for i in 0..args.publishes + 10 {
        let socket = TcpStream::connect(("127.0.0.1", node.rtmp_port)).await?;
        socket.set_nodelay(true)?;
        let mut client = RtmpClient::connect(socket, "live", false).await?;
        let t = Instant::now();
        client.publish(&format!("p{i}")).await?;
        let took = t.elapsed();
        drop(client);
        let raw_took = raw_claim(&mut raw, &format!("/bench-raw/p{i}")).await?;
        if i >= 10 {
            node_t.push(took);
            raw_t.push(raw_took);
        }
    }
    let (n50, n99, r50, r99) = (
        percentile(&mut node_t, 0.5),
        percentile(&mut node_t, 0.99),
        percentile(&mut raw_t, 0.5),
        percentile(&mut raw_t, 0.99),
    );

    // 2. Fan-out.
    eprintln!("fan-out: publisher alone, then {} viewers", args.viewers);
    let _publisher = Publisher::start(&node.rtmp_url("live/fan"))?;
    node.wait_broadcast("live/fan", |e| e["claim"]["state"] == "claimed")
        .await?;
    // Let the encoder settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = node.pid().context("node pid")?;
    let (cpu0, rss0) = sample(pid, args.seconds).await?;

    let received = Arc::new(AtomicU64::new(0));
    let mut viewers = Vec::new();
    for _ in 0..args.viewers {
        let port = node.http_port;
        let received = received.clone();
        viewers.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
            s.write_all(b"GET /live/fan.flv HTTP/1.0\r\nHost: x\r\n\r\n")
                .await?;
            let mut buf = vec![0u8; 65536];
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, anyhow::Error>(());
                }
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = received.load(Ordering::Relaxed);
    let (cpu1, rss1) = sample(pid, args.seconds).await?;
    let got = received.load(Ordering::Relaxed) - before;
    let connected = node.metric("ingest_viewers").await?;
    let dropped = node.metric("ingest_viewers_dropped_total").await?;
    for v in &viewers {
        v.abort();
    }

    println!("# Ingest node benchmark\n");
    println!(
        "etcd 3.4, claim-service and ingest-node release builds on loopback; {} publishes per side; fan-out of one ffmpeg test pattern (320x240, 25 fps, H.264 + AAC).\n",
        args.publishes
    );
    println!("| measure | ingest node | baseline | ratio |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| publish request → accepted (claim held), p50 | {} | {} (raw grant + txn) | {:.2}x |",
        ms(n50),
        ms(r50),
        n50.as_secs_f64() / r50.as_secs_f64()
    );
    println!(
        "| same, p99 | {} | {} | {:.2}x |",
        ms(n99),
        ms(r99),
        n99.as_secs_f64() / r99.as_secs_f64()
    );
    println!(
        "| node CPU, publisher + {} viewers vs publisher alone | {:.1} % | {:.1} % | {:.2}x |",
        args.viewers,
        cpu1,
        cpu0,
        cpu1 / cpu0.max(0.1)
    );
    println!(
        "| node RSS, publisher + {} viewers vs publisher alone | {} MiB | {} MiB | {:.2}x |",
        args.viewers,
        rss1,
        rss0,
        rss1 as f64 / rss0.max(1) as f64
    );
    println!(
        "| viewers still connected after {} s / dropped as slow | {connected} / {dropped} | | |",
        args.seconds
    );
    println!(
        "| bytes delivered to viewers | {:.1} MiB/s in all | | |",
        got as f64 / 1048576.0 / args.seconds as f64
    );
    Ok(())
}
