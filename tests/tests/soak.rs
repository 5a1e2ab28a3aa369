//! The soak's short run (scripts/soak.sh runs the long one): two minutes of
//! overlapping faults from a fixed seed on a whole stack with real
//! publishers, each process on a host of its own, then the accounting; no
//! anomaly allowed. Skipped, saying why, where network namespaces cannot be
//! made (not root, no `ip`/`iptables`).

use std::time::Duration;

use anyhow::{ensure, Result};
use system_tests::soak::{run, Plan};

#[tokio::test]
async fn two_minutes_under_the_nemesis_leave_no_anomaly() -> Result<()> {
    if let Err(why) = system_tests::netns::Lab::start() {
        eprintln!("SKIPPED: cannot make network namespaces here ({why})");
        return Ok(());
    }
    let out = system_tests::workspace_root().join("target/soak-short");
    let outcome = run(Plan {
        duration: Duration::from_secs(120),
        // A seed whose faults in the first 95 s include every kind (found
        // by replaying the schedule, not by running it).
        seed: 19,
        out,
    })
    .await?;
    eprintln!("{}", std::fs::read_to_string(&outcome.report)?);
    ensure!(
        outcome.anomalies.is_empty(),
        "anomalies (report {}): {:#?}",
        outcome.report.display(),
        outcome.anomalies
    );
    Ok(())
}
