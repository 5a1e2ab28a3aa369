//! Links cut between hosts (network namespaces this test makes), not only
//! processes killed. Skipped, saying why, where namespaces cannot be made
//! (not root, no `ip`/`iptables`). Each scenario runs `CLAIMS_FAULT_RUNS`
//! times with randomized timing, under the checker.

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};
use system_tests::checker::{jitter, runs, Checker, Report};
use system_tests::netns::Lab;
use system_tests::v1 as pb;
use system_tests::*;

use pb::claim_event::Kind;
use pb::service_message::Msg;

/// These scenarios load both cores (several etcd members, replicas, nodes);
/// run one at a time so a timing bound is about the system, not the crowd.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn lab() -> Option<Lab> {
    match Lab::start() {
        Ok(lab) => Some(lab),
        Err(why) => {
            eprintln!("SKIPPED: cannot make network namespaces here ({why})");
            None
        }
    }
}

#[tokio::test]
async fn a_node_cut_off_from_the_claim_service_is_released_then_claims_again() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut report = Report::new(
        "partition an ingest node from the claim service: released after the grace, claimed after heal",
    );
    for _ in 0..runs() {
        let Some(mut lab) = lab() else { return Ok(()) };
        node_cut(&mut lab, &mut report).await?;
    }
    report.write();
    Ok(())
}

async fn node_cut(lab: &mut Lab, report: &mut Report) -> Result<()> {
    let (e, c, n) = (lab.host("etcd")?, lab.host("claims")?, lab.host("node")?);
    let etcd = Etcd::start_in(&e).await?;
    let prefix = test_prefix("cut-node");
    let svc =
        ClaimService::start_in(&c, &etcd.endpoint(), &prefix, &["--detach-grace", "3s"]).await?;
    let node = IngestNode::start_in(&n, "node-n", &[svc.addr()], &[]).await?;
    // The publisher runs on the node's own host: the cut leaves it connected.
    let mut publisher = Publisher::start_in(&n, "rtmp://127.0.0.1:1935/live/cut")?;
    let claimed = |e: &serde_json::Value| e["claim"]["state"] == "claimed";
    let first = node.wait_broadcast("live/cut", claimed).await?;
    let mut watcher = Watcher::open(&svc, "", 0).await?;
    let mut checker = Checker::default();

    tokio::time::sleep(jitter(1000)).await;
    let cut = Instant::now();
    lab.cut(&n, &c.ip)?;
    // The service notices the dead session (HTTP/2 keep-alive), keeps the
    // claim for the grace, then releases it.
    checker
        .watched
        .push(watcher.expect(Kind::Released, "live/cut").await?);
    let released = cut.elapsed();
    ensure!(
        publisher.alive(),
        "the publisher was disturbed: {}",
        publisher.log_text()
    );

    lab.heal(&n)?;
    let healed = Instant::now();
    let again = node.wait_broadcast("live/cut", claimed).await?;
    checker
        .watched
        .push(watcher.expect(Kind::Claimed, "live/cut").await?);
    eprintln!(
        "released {:.1} s after the cut (keep-alive detection + 3 s grace); claimed again {:.1} s after healing",
        released.as_secs_f64(),
        healed.elapsed().as_secs_f64()
    );
    let anomalies = checker.check();
    report.run(released, checker.releases(), anomalies.len());
    ensure!(anomalies.is_empty(), "anomalies: {anomalies:?}");
    ensure!(
        again["fencing_token"].as_i64() > first["fencing_token"].as_i64(),
        "{again} after {first}"
    );
    ensure!(
        released >= Duration::from_secs(3),
        "released before the grace: {released:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_replica_cut_off_from_etcd_tells_its_nodes_lost_before_anyone_else_claims() -> Result<()>
{
    let _one = ONE_AT_A_TIME.lock().await;
    let mut report = Report::new(
        "partition a replica from etcd, not its nodes (TTL 5 s): lost, then a standby claims",
    );
    for _ in 0..runs() {
        let Some(mut lab) = lab() else { return Ok(()) };
        replica_cut(&mut lab, &mut report).await?;
    }
    report.write();
    Ok(())
}

async fn replica_cut(lab: &mut Lab, report: &mut Report) -> Result<()> {
    let (e, c1, c2) = (lab.host("etcd")?, lab.host("c1")?, lab.host("c2")?);
    let etcd = Etcd::start_in(&e).await?;
    let prefix = test_prefix("cut-replica");
    let one = ClaimService::start_in(&c1, &etcd.endpoint(), &prefix, &SHORT_LEASE).await?;
    let two = ClaimService::start_in(&c2, &etcd.endpoint(), &prefix, &SHORT_LEASE).await?;
    let mut a = Node::attach(&one.addr(), hello("node-a")).await?;
    let mut b = Node::attach(&two.addr(), hello("node-b")).await?;
    let mut checker = Checker::default();
    a.created("live/x", "video").await?;
    let held = a.expect_claimed("live/x").await?;
    checker.node_saw("node-a", &Msg::Claimed(held));
    b.created("live/x", "video").await?;
    assert_eq!(b.expect_conflict("live/x").await?.node_id, "node-a");

    tokio::time::sleep(jitter(1000)).await;
    let cut = Instant::now();
    lab.cut(&c1, &e.ip)?;
    // Both ends are watched at once; whichever comes first is recorded first.
    let (mut a_lost, mut b_claimed) = (None, None);
    let deadline = Instant::now() + WAIT * 2;
    while (a_lost.is_none() || b_claimed.is_none()) && Instant::now() < deadline {
        tokio::select! {
            m = a.next(), if a_lost.is_none() => {
                if let Ok(msg) = m? {
                    checker.node_saw("node-a", &msg);
                    if matches!(&msg, Msg::Lost(l) if l.broadcast == "live/x") {
                        a_lost = Some(cut.elapsed());
                    }
                }
            }
            m = b.next(), if b_claimed.is_none() => {
                if let Ok(msg) = m? {
                    checker.node_saw("node-b", &msg);
                    if matches!(&msg, Msg::Claimed(c) if c.claim.as_ref().is_some_and(|c| c.broadcast == "live/x")) {
                        b_claimed = Some(cut.elapsed());
                    }
                }
            }
        }
    }
    let a_lost = a_lost.ok_or_else(|| anyhow!("node-a was never told lost"))?;
    let b_claimed = b_claimed.ok_or_else(|| anyhow!("node-b never took over"))?;
    eprintln!(
        "node-a told lost {:.2} s after the cut; node-b claimed {:.2} s after it (TTL 5 s)",
        a_lost.as_secs_f64(),
        b_claimed.as_secs_f64()
    );
    let anomalies = checker.check();
    report.run(b_claimed, checker.releases(), anomalies.len());
    ensure!(anomalies.is_empty(), "anomalies: {anomalies:?}");
    ensure!(
        a_lost <= Duration::from_secs(6),
        "lost later than TTL + 1 s: {a_lost:?}"
    );
    ensure!(
        a_lost <= b_claimed,
        "node-b was told claimed before node-a was told lost"
    );
    Ok(())
}
