//! Benchmark of the media-server hooks front end: publish → accepted
//! through nginx-rtmp whose `on_publish` asks the sidecar (which claims the
//! broadcast first), side by side in the same run with an nginx-rtmp that
//! asks nobody — the hook round trip's cost, claim included.
//!
//! Run with `scripts/bench.sh`; prints a Markdown report.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use system_tests::nginx::NginxRtmp;
use system_tests::rtmp_client::RtmpClient;
use system_tests::*;
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// Publishes timed on each side.
    #[arg(long, default_value_t = 100)]
    publishes: usize,
}

/// Connects to `port`, asks to publish `key`, and times the answer.
async fn publish(port: u16, key: &str) -> Result<Duration> {
    let socket = TcpStream::connect(("127.0.0.1", port)).await?;
    socket.set_nodelay(true)?;
    let mut client = RtmpClient::connect(socket, "live", false).await?;
    let t = Instant::now();
    client.publish(key).await?;
    Ok(t.elapsed())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let etcd = Etcd::start().await?;
    let prefix = test_prefix("hooks-bench");
    let svc = ClaimService::start(&etcd.endpoint(), &prefix, &[]).await?;
    let hooks_port = free_port();
    let hooked = NginxRtmp::start(&format!("http://127.0.0.1:{hooks_port}/nginx-rtmp"), 30).await?;
    let plain = NginxRtmp::start_plain().await?;
    let _sidecar =
        system_tests::nginx::sidecar("bench-sidecar", &svc.addr(), &hooked, hooks_port, &[])
            .await?;

    eprintln!("timing {} publishes on each side", args.publishes);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..args.publishes + 10 {
        let took = publish(hooked.rtmp_port, &format!("h{i}")).await?;
        let base = publish(plain.rtmp_port, &format!("p{i}")).await?;
        if i >= 10 {
            with.push(took);
            without.push(base);
        }
    }
    let (w50, w99, p50, p99) = (
        percentile(&mut with, 0.5),
        percentile(&mut with, 0.99),
        percentile(&mut without, 0.5),
        percentile(&mut without, 0.99),
    );
    println!(
        "## Media-server hooks (nginx-rtmp), {} publishes each\n",
        args.publishes
    );
    println!("| publish → accepted | p50 | p99 |");
    println!("| --- | --- | --- |");
    println!(
        "| nginx-rtmp, on_publish → sidecar (claims first) | {} | {} |",
        ms(w50),
        ms(w99)
    );
    println!(
        "| nginx-rtmp, no hooks (baseline) | {} | {} |",
        ms(p50),
        ms(p99)
    );
    println!(
        "\nThe hook round trip with its claim costs {} at the median ({:.1}x the bare publish).",
        ms(w50.saturating_sub(p50)),
        w50.as_secs_f64() / p50.as_secs_f64().max(1e-9)
    );
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
