//! `soak`: the randomized soak of `system_tests::soak` from the command
//! line (scripts/soak.sh runs it): exit 0 with no anomaly, 1 with any (the
//! report says which), 2 when the stack could not run.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// A whole stack under overlapping faults for a while, then an accounting
/// of every claim.
#[derive(Parser)]
struct Args {
    /// How long the nemesis runs, in minutes (then every fault heals and
    /// the accounting runs).
    #[arg(long, default_value_t = 60.0)]
    minutes: f64,
    /// The seed every fault and publisher choice follows from; a failure
    /// is tried again with the same seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where history.jsonl, samples.csv and report.md go.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let plan = system_tests::soak::Plan {
        duration: Duration::from_secs_f64(args.minutes * 60.0),
        seed: args.seed,
        out: args.out,
    };
    match system_tests::soak::run(plan).await {
        Ok(outcome) => {
            println!("report: {}", outcome.report.display());
            for a in &outcome.anomalies {
                println!("anomaly: {a}");
            }
            std::process::exit(i32::from(!outcome.anomalies.is_empty()));
        }
        Err(e) => {
            eprintln!("soak could not run: {e:#}");
            std::process::exit(2);
        }
    }
}
