//! The compatibility matrix: an older build (`CLAIMS_COMPAT_OLD`, the
//! directory of its binaries, as `scripts/compat.sh OLD_REF` builds it)
//! and this one in one fleet against one real etcd. Each cell publishes
//! through real ingest nodes (the nginx-rtmp hooks), moves the sessions
//! between replicas, and checks the WatchClaims history (tokens never go
//! back, one holder at a time, nothing released while published) and what
//! every node says it holds at the end. Run by `scripts/compat.sh` only:
//! without an older build there is nothing to compare.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use system_tests::checker::Checker;
use system_tests::fleet::{released, Build, Fleet};
use system_tests::*;

fn old_name() -> String {
    std::env::var("CLAIMS_COMPAT_OLD_NAME").unwrap_or_else(|_| "old".into())
}

/// A fleet of `replicas` with `nodes` (each publishing `live/{id}`, the
/// i-th attached first to replica i mod the replicas); the claims and the
/// revision after which the cell's history starts.
async fn mixed(
    name: &str,
    replicas: &[Build],
    nodes: &[Build],
) -> Result<(Fleet, BTreeMap<String, (String, i64)>, i64)> {
    let mut fleet = Fleet::start(name, replicas, &[]).await?;
    for (i, build) in nodes.iter().enumerate() {
        fleet
            .add_node(&format!("node-{i}"), *build, i % replicas.len())
            .await?;
    }
    fleet.publish_everywhere().await?;
    let claims = fleet.claims(replicas.len() - 1).await?;
    let from = fleet.revision().await? + 1;
    Ok((fleet, claims, from))
}

async fn wait_all_on(fleet: &Fleet, at: usize, replica: &str) -> Result<()> {
    let n = fleet.nodes.len();
    until(
        Duration::from_millis(100),
        async || fleet.placement(at).await,
        |p| p.len() == n && p.values().all(|r| r == replica),
    )
    .await
    .with_context(|| format!("the sessions never all went to {replica}"))?;
    Ok(())
}

/// The checks of a cell, read from replica `at`: the history since `from`
/// (tokens never go back, one holder at a time, nothing released), every
/// claim kept with its owner and token, and every node saying it holds its
/// broadcast with that token; printed as the matrix's row for `cell`, and
/// an error when any failed.
async fn judge(
    cell: &str,
    fleet: &Fleet,
    at: usize,
    from: i64,
    before: &BTreeMap<String, (String, i64)>,
) -> Result<()> {
    let checker = Checker {
        watched: fleet.changes_since(at, from).await?,
        ..Checker::default()
    };
    let mut anomalies = checker.check();
    anomalies.extend(checker.one_holder_at_a_time());
    anomalies.extend(
        released(&checker.watched)
            .into_iter()
            .map(|b| format!("released: {b}")),
    );
    let after = fleet.claims(at).await?;
    if &after != before {
        anomalies.push(format!("claims changed: {before:?} -> {after:?}"));
    }
    for (node, _) in &fleet.nodes {
        let broadcast = format!("live/{}", node.node_id);
        let want = before.get(&broadcast).map(|(_, t)| *t);
        let told = node
            .wait_broadcast(&broadcast, |c| c["claim"]["state"] == "claimed")
            .await
            .map(|c| c["claim"]["fencing_token"].as_i64());
        match told {
            Ok(token) if token == want => {}
            other => anomalies.push(format!("{} says {other:?}, not {want:?}", node.node_id)),
        }
    }
    report(cell, &anomalies)
}

fn report(cell: &str, anomalies: &[String]) -> Result<()> {
    let verdict = if anomalies.is_empty() {
        "ok".to_string()
    } else {
        format!("{} anomalies", anomalies.len())
    };
    println!("compat | {cell} | {verdict} |");
    if !anomalies.is_empty() {
        bail!("{cell}: {anomalies:#?}");
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs an older build: scripts/compat.sh OLD_REF"]
async fn old_nodes_on_new_replicas_move_with_their_claims() -> Result<()> {
    let (fleet, before, from) = mixed(
        "compat-old-nodes",
        &[Build::New, Build::New],
        &[Build::Old, Build::Old],
    )
    .await?;
    // Node 0 is on replica 0, node 1 on replica 1. The old nodes do not
    // know `move`: the stream's end sends them on.
    fleet.claimctl(1, &["drain-replica", "replica-0"])?;
    wait_all_on(&fleet, 1, "replica-1").await?;
    judge(
        &format!(
            "{} nodes, new replicas: drain-replica moves them",
            old_name()
        ),
        &fleet,
        1,
        from,
        &before,
    )
    .await
}

#[tokio::test]
#[ignore = "needs an older build: scripts/compat.sh OLD_REF"]
async fn new_nodes_on_old_replicas_fail_over_with_their_claims() -> Result<()> {
    let (mut fleet, before, from) = mixed(
        "compat-old-replicas",
        &[Build::Old, Build::Old],
        &[Build::New, Build::New],
    )
    .await?;
    // An old replica stopped with SIGTERM leaves its sessions' claims.
    fleet.stop(0).await?;
    wait_all_on(&fleet, 1, "replica-1").await?;
    judge(
        &format!(
            "new nodes, {} replicas: SIGTERM fails them over",
            old_name()
        ),
        &fleet,
        1,
        from,
        &before,
    )
    .await
}

#[tokio::test]
#[ignore = "needs an older build: scripts/compat.sh OLD_REF"]
async fn an_old_and_a_new_replica_hand_sessions_to_each_other() -> Result<()> {
    let nodes = [Build::New, Build::Old, Build::New, Build::Old];
    let (mut fleet, before, from) =
        mixed("compat-mixed", &[Build::Old, Build::New], &nodes).await?;
    // The new replica drains to the old one (which writes no record: the
    // nodes go to the next address they know).
    fleet.claimctl(1, &["drain-replica", "replica-1"])?;
    wait_all_on(&fleet, 1, "replica-0").await?;
    fleet.claimctl(1, &["drain-replica", "--undo", "replica-1"])?;
    // The old replica stops: every session comes to the new one.
    fleet.stop(0).await?;
    wait_all_on(&fleet, 1, "replica-1").await?;
    let old = old_name();
    judge(
        &format!("{old} and new replica, new and {old} nodes: sessions both ways"),
        &fleet,
        1,
        from,
        &before,
    )
    .await
}
