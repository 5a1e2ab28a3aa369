//! What a hostile or careless neighbour costs another node's claims, each
//! beside the same measure with no neighbour, in the same run:
//!
//! 1. A node's claim cycles (created → claimed, closed → released) while
//!    another node's hello of N live tracks is being claimed.
//! 2. The same cycles with watches open that never read (live and
//!    replaying etcd's history), and the replica's memory meanwhile.
//! 3. The same cycles while thousands of watches are opened and cancelled.
//!
//! Run with `scripts/bench.sh`; prints a Markdown report (medians, p99,
//! ratios to the quiet run).

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use system_tests::hostile::StalledWatches;
use system_tests::v1 as pb;
use system_tests::*;

#[derive(Parser)]
struct Args {
    /// Claim cycles timed in each phase.
    #[arg(long, default_value_t = 300)]
    cycles: usize,
    /// Live tracks in the neighbour's hello.
    #[arg(long, default_value_t = 10_000)]
    hello: usize,
    /// Watches that never read (half of them replaying history).
    #[arg(long, default_value_t = 100)]
    stalled: usize,
    /// Watches opened and cancelled during phase 3.
    #[arg(long, default_value_t = 5_000)]
    cancelled: usize,
}

/// One claim cycle of `node` on `broadcast`: how long the claim took.
async fn cycle(node: &mut Node, broadcast: &str) -> Result<Duration> {
    let t = Instant::now();
    node.created(broadcast, "video").await?;
    node.expect_claimed(broadcast).await?;
    let took = t.elapsed();
    node.closed(broadcast, "video").await?;
    node.expect_released(broadcast).await?;
    Ok(took)
}

/// Claim latencies of `node` until `cycles` are done or `until` says stop.
async fn cycles(
    node: &mut Node,
    tag: &str,
    cycles: usize,
    mut until: impl FnMut() -> bool,
) -> Result<Vec<Duration>> {
    let mut took = Vec::with_capacity(cycles);
    for i in 0..cycles {
        if until() {
            break;
        }
        took.push(cycle(node, &format!("{tag}/{}", i % 16)).await?);
    }
    Ok(took)
}

fn summary(samples: &mut [Duration]) -> (Duration, Duration) {
    (percentile(samples, 0.5), percentile(samples, 0.99))
}

fn row(what: &str, quiet: (Duration, Duration), loaded: (Duration, Duration), n: usize) {
    println!(
        "| {what} | {} / {} | {} / {} | {:.2}x / {:.2}x | {n} |",
        ms(loaded.0),
        ms(loaded.1),
        ms(quiet.0),
        ms(quiet.1),
        loaded.0.as_secs_f64() / quiet.0.as_secs_f64(),
        loaded.1.as_secs_f64() / quiet.1.as_secs_f64(),
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let etcd = Etcd::start().await?;
    let prefix = test_prefix("neighbours");
    let svc = ClaimService::start(&etcd.endpoint(), &prefix, &[]).await?;
    let pid = svc.pid().expect("the service runs");
    let mut node = Node::attach(&svc.addr(), hello("bench-small")).await?;
    cycles(&mut node, "warm", 50, || false).await?;

    println!("# Neighbours benchmark\n");
    println!("etcd 3.4 (Debian), one member on loopback; claim-service release build, default limits; 2 shared cores. Each phase beside the same node's claims with no neighbour (the quiet run), in the same run.\n");
    println!("| claim latency with | p50 / p99 | quiet p50 / p99 | ratio | cycles |");
    println!("| --- | --- | --- | --- | --- |");

    eprintln!("quiet: {} cycles", args.cycles);
    let mut quiet = cycles(&mut node, "quiet", args.cycles, || false).await?;
    let quiet = summary(&mut quiet);

    // 1. Another node's hello of many live tracks, claimed meanwhile.
    eprintln!("hello of {} tracks beside the cycles", args.hello);
    let mut big = hello("bench-big");
    big.live = (0..args.hello)
        .map(|i| track(&format!("big/{i:06}"), "video"))
        .collect();
    let started = Instant::now();
    let mut big_node = Node::attach(&svc.addr(), big).await?;
    let counter = tokio::spawn(async move {
        for _ in 0..args.hello {
            big_node
                .expect("claimed", |m| match m {
                    pb::service_message::Msg::Claimed(_) => Some(()),
                    _ => None,
                })
                .await?;
        }
        anyhow::Ok((started.elapsed(), big_node))
    });
    let mut beside = cycles(&mut node, "beside-hello", args.cycles, || {
        counter.is_finished()
    })
    .await?;
    let (hello_took, big_node) = counter.await??;
    let n = beside.len();
    row(
        &format!(
            "a {}-track hello being claimed ({} s)",
            args.hello,
            hello_took.as_secs_f64().round()
        ),
        quiet,
        summary(&mut beside),
        n,
    );
    big_node.goodbye().await?;

    // 2. Watches that never read.
    eprintln!("{} stalled watches", args.stalled);
    let addr = format!("127.0.0.1:{}", svc.port);
    let rss_before = rss(pid)?;
    let live = StalledWatches::open(&addr, args.stalled / 2, 0).await?;
    let replaying = StalledWatches::open(&addr, args.stalled - args.stalled / 2, 1).await?;
    let mut stalled = cycles(&mut node, "stalled", args.cycles, || false).await?;
    let n = stalled.len();
    row(
        &format!("{} watches that never read", args.stalled),
        quiet,
        summary(&mut stalled),
        n,
    );
    let grown = rss(pid)?.saturating_sub(rss_before);
    drop((live, replaying));
    // The replica lets them go once it sees their connections close: wait
    // for that, so that phase 3's replays find their slots free.
    until(
        Duration::from_millis(50),
        async || Ok(metric_value(&svc.metrics().await?, "claims_watches_open").unwrap_or(0.0)),
        |open| *open == 0.0,
    )
    .await?;

    // 3. Watches opened and cancelled in a tight loop beside the cycles.
    eprintln!("{} cancelled watches", args.cancelled);
    let mut reader = svc.ownership().await?;
    let churn_watches = tokio::spawn(async move {
        for i in 0..args.cancelled {
            let watch = reader
                .watch_claims(pb::WatchClaimsRequest {
                    prefix: "nomatch/".into(),
                    start_revision: if i % 4 == 0 { 1 } else { 0 },
                })
                .await?;
            drop(watch);
        }
        anyhow::Ok(())
    });
    let mut cancelling = cycles(&mut node, "cancelling", args.cycles, || {
        churn_watches.is_finished()
    })
    .await?;
    churn_watches.await??;
    let n = cancelling.len();
    row(
        &format!("{} watches opened and cancelled", args.cancelled),
        quiet,
        summary(&mut cancelling),
        n,
    );
    println!(
        "\nReplica memory with the stalled watches open: +{:.1} MiB.",
        grown as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}
