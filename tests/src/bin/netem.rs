//! `netem`: delay, jitter and reordering of the packets a host queues to it
//! (`system_tests::netem`), for a while; the soak runs it inside a host.

use std::time::Duration;

use clap::Parser;
use system_tests::netem::{run, Shape};

/// Holds the packets iptables queues here (NFQUEUE) for a delay ± jitter,
/// letting a share go at once (reordering); after --seconds lets every
/// held packet go and exits.
#[derive(Parser)]
struct Args {
    /// The netfilter queue the host's rule sends packets to.
    #[arg(long, default_value_t = 0)]
    queue: u16,
    #[arg(long)]
    delay_ms: u64,
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Percent of packets that go at once, overtaking the held ones.
    #[arg(long, default_value_t = 0)]
    reorder_percent: u64,
    /// Which packets are held how long follows from this.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long it shapes the link before letting everything go.
    #[arg(long)]
    seconds: f64,
}

fn main() {
    let args = Args::parse();
    let shape = Shape {
        delay: Duration::from_millis(args.delay_ms),
        jitter: Duration::from_millis(args.jitter_ms),
        reorder_percent: args.reorder_percent.min(100),
    };
    match run(
        args.queue,
        shape,
        args.seed,
        Duration::from_secs_f64(args.seconds.max(0.0)),
    ) {
        Ok(stats) => eprintln!("netem: {shape:?}: {stats:?}"),
        Err(e) => {
            eprintln!("netem: {e:#}");
            std::process::exit(1);
        }
    }
}
