//! Faults injected into real processes (kill -9, SIGTERM, restarts), with a
//! checker over everything users saw: what each node was told, and the full
//! WatchClaims history. After every scenario it asserts, per broadcast, that
//! fencing tokens never go back (a new claim has a larger token, an adoption
//! keeps it) and that no two nodes were told they hold a broadcast at once.
//! Scenarios run several times with randomized timing.

use std::collections::{BTreeMap, BTreeSet};

use std::time::{Duration, Instant};
use system_tests::checker::{jitter, runs, Checker, Report};

use anyhow::{bail, ensure, Result};
use system_tests::v1 as pb;
use system_tests::*;

use pb::claim_event::Kind;
use pb::service_message::Msg;

/// These scenarios load both cores (several etcd members, replicas, nodes);
/// run one at a time so a timing bound is about the system, not the crowd.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Reads a node's messages into the checker until `want` claimed answers
/// (adopted or not) arrived; returns the fencing tokens by broadcast.
async fn collect_claims(
    node: &mut Node,
    name: &str,
    want: usize,
    checker: &mut Checker,
) -> Result<BTreeMap<String, (i64, bool)>> {
    let mut got = BTreeMap::new();
    while got.len() < want {
        match node.next().await? {
            Ok(msg) => {
                checker.node_saw(name, &msg);
                if let Msg::Claimed(c) = &msg {
                    let claim = c.claim.clone().unwrap_or_default();
                    got.insert(claim.broadcast, (claim.fencing_token, c.adopted));
                }
            }
            Err(status) => bail!("{name}'s session ended: {status}"),
        }
    }
    Ok(got)
}

async fn drain_watch(watcher: &mut Watcher, checker: &mut Checker) {
    while let Some(e) = watcher.quiet_for(Duration::from_millis(300)).await {
        checker.watched.push(e);
    }
}

#[tokio::test]
async fn killing_a_node_releases_its_claims_after_the_grace() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut report =
        Report::new("kill -9 an ingest node with 200 claims (grace 2 s): all RELEASED");
    for run in 0..runs() {
        let stack = Stack::start("kill-node", &["--detach-grace", "2s"]).await?;
        let mut checker = Checker::default();
        let mut watcher = Watcher::open(&stack.svc, "", 0).await?;
        let mut node = Node::attach(&stack.svc.addr(), hello("node-k")).await?;
        let names: Vec<String> = (0..200).map(|i| format!("live/k{i:03}")).collect();
        for n in &names {
            node.created(n, "video").await?;
        }
        collect_claims(&mut node, "node-k", names.len(), &mut checker).await?;
        tokio::time::sleep(jitter(500)).await;
        let killed = Instant::now();
        node.vanish();
        checker.session_ended("node-k");
        let mut released = BTreeSet::new();
        let mut first = None;
        while released.len() < names.len() {
            let e = watcher.next().await?;
            if e.kind == Kind::Released as i32 {
                first.get_or_insert(killed.elapsed());
                released.insert(e.claim.clone().unwrap_or_default().broadcast);
            }
            checker.watched.push(e);
        }
        let all = killed.elapsed();
        let first = first.expect("at least one release");
        eprintln!(
            "run {run}: 200 claims released {:.2}-{:.2} s after the node died (grace 2 s)",
            first.as_secs_f64(),
            all.as_secs_f64()
        );
        // Held for the grace, then released: not before, and not a lease TTL later.
        ensure!(
            first >= Duration::from_millis(1900),
            "released before the grace: {first:?}"
        );
        ensure!(
            all < Duration::from_secs(8),
            "released long after the grace: {all:?}"
        );
        let anomalies = checker.check();
        report.run(all, checker.releases(), anomalies.len());
        ensure!(anomalies.is_empty(), "anomalies: {anomalies:?}");
    }
    report.write();
    Ok(())
}

#[tokio::test]
async fn killing_a_replica_moves_every_claim_without_a_release() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut report = Report::new("kill -9 a replica with 3 nodes and 1,002 claims: all adopted");
    for run in 0..runs() {
        let etcd = Etcd::start().await?;
        let prefix = test_prefix("kill-replica");
        let mut doomed = ClaimService::start(&etcd.endpoint(), &prefix, &[]).await?;
        let survivor = ClaimService::start(&etcd.endpoint(), &prefix, &[]).await?;
        let mut checker = Checker::default();
        let mut watcher = Watcher::open(&survivor, "", 0).await?;
        let mut before = BTreeMap::new();
        let mut lives = Vec::new();
        for n in 0..3 {
            let name = format!("node-{n}");
            let mut node = Node::attach(&doomed.addr(), hello(&name)).await?;
            let names: Vec<String> = (0..334).map(|i| format!("live/{n}-{i:03}")).collect();
            for b in &names {
                node.created(b, "video").await?;
                node.created(b, "audio").await?;
            }
            before.extend(collect_claims(&mut node, &name, names.len(), &mut checker).await?);
            lives.push((name, names, node));
        }
        tokio::time::sleep(jitter(1000)).await;
        let killed = Instant::now();
        doomed.kill();
        // Each node notices and re-attaches to the other replica with what
        // it still has live.
        let mut after = BTreeMap::new();
        for (name, names, node) in lives {
            let _ = tokio::time::timeout(WAIT, async {
                let mut node = node;
                node.expect_status().await
            })
            .await;
            checker.session_ended(&name);
            let mut again = hello(&name);
            for b in &names {
                again.live.push(track(b, "video"));
                again.live.push(track(b, "audio"));
            }
            let mut moved = Node::attach(&survivor.addr(), again).await?;
            after.extend(collect_claims(&mut moved, &name, names.len(), &mut checker).await?);
        }
        let took = killed.elapsed();
        drain_watch(&mut watcher, &mut checker).await;
        eprintln!(
            "run {run}: 1002 claims adopted on the other replica {:.2} s after kill -9",
            took.as_secs_f64()
        );
        ensure!(after.len() == before.len());
        for (b, (token, adopted)) in &after {
            ensure!(*adopted, "{b} was claimed anew, not adopted");
            ensure!(
                before.get(b).map(|(t, _)| t) == Some(token),
                "{b}: token changed"
            );
        }
        let anomalies = checker.check();
        report.run(took, checker.releases(), anomalies.len());
        ensure!(
            checker.releases() == 0,
            "{} RELEASED events",
            checker.releases()
        );
        ensure!(anomalies.is_empty(), "anomalies: {anomalies:?}");
    }
    report.write();
    Ok(())
}

#[tokio::test]
async fn a_rolling_restart_of_every_replica_releases_nothing() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let etcd = Etcd::start().await?;
    let prefix = test_prefix("rolling");
    let ports = [free_port(), free_port()];
    let addrs: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let mut replicas = [
        Some(ClaimService::start_at(ports[0], &etcd.endpoint(), &prefix, &[]).await?),
        Some(ClaimService::start_at(ports[1], &etcd.endpoint(), &prefix, &[]).await?),
    ];
    let mut checker = Checker::default();
    // Real ingest nodes reconnect by themselves; each knows both replicas.
    let a = IngestNode::start("node-a", &addrs, &[]).await?;
    let b = IngestNode::start("node-b", &[addrs[1].clone(), addrs[0].clone()], &[]).await?;
    let _pa = Publisher::start(&a.rtmp_url("live/ra"))?;
    let _pb = Publisher::start(&b.rtmp_url("live/rb"))?;
    let claimed = |e: &serde_json::Value| e["claim"]["state"] == "claimed";
    let ta = a.wait_broadcast("live/ra", claimed).await?["fencing_token"].clone();
    let tb = b.wait_broadcast("live/rb", claimed).await?["fencing_token"].clone();
    let mut watch_from = 0;
    let mut report = Report::new("rolling restart of both replicas, real publishers");
    let mut times = Vec::new();
    for round in 0..runs() {
        for i in 0..2 {
            let other = 1 - i;
            let observer = replicas[other].as_ref().expect("running");
            let mut watcher = Watcher::open(observer, "", watch_from).await?;
            let mut stopping = replicas[i].take().expect("running");
            tokio::time::sleep(jitter(800)).await;
            let stopped = Instant::now();
            let status = stopping.terminate().await?;
            ensure!(status.success(), "replica exited with {status}");
            drop(stopping);
            // Both broadcasts are claimed again through the other replica.
            a.wait_broadcast("live/ra", claimed).await?;
            b.wait_broadcast("live/rb", claimed).await?;
            times.push(stopped.elapsed());
            replicas[i] =
                Some(ClaimService::start_at(ports[i], &etcd.endpoint(), &prefix, &[]).await?);
            drain_watch(&mut watcher, &mut checker).await;
            watch_from = checker.watched.last().map(|e| e.revision + 1).unwrap_or(0);
            eprintln!("round {round}: replica {i} restarted");
        }
    }
    let anomalies = checker.check();
    for (i, t) in times.iter().enumerate() {
        let last = i + 1 == times.len();
        report.run(
            *t,
            if last { checker.releases() } else { 0 },
            if last { anomalies.len() } else { 0 },
        );
    }
    report.write();
    ensure!(
        checker.releases() == 0,
        "{} RELEASED events: {:?}",
        checker.releases(),
        checker.watched
    );
    let ea = a.wait_broadcast("live/ra", claimed).await?;
    let eb = b.wait_broadcast("live/rb", claimed).await?;
    ensure!(
        ea["fencing_token"] == ta && eb["fencing_token"] == tb,
        "fencing tokens changed"
    );
    let anomalies = checker.check();
    ensure!(anomalies.is_empty(), "anomalies: {anomalies:?}");
    Ok(())
}

#[test]
fn the_checker_finds_what_it_looks_for() {
    let claim = |b: &str, token: i64| pb::Claim {
        broadcast: b.into(),
        fencing_token: token,
        ..Default::default()
    };
    let claimed = |b: &str, token: i64| {
        Msg::Claimed(pb::Claimed {
            claim: Some(claim(b, token)),
            adopted: false,
        })
    };
    let mut c = Checker::default();
    c.node_saw("a", &claimed("x", 5));
    c.node_saw("b", &claimed("x", 6));
    c.watched.push(pb::ClaimEvent {
        kind: Kind::Claimed as i32,
        claim: Some(claim("y", 9)),
        revision: 9,
    });
    c.watched.push(pb::ClaimEvent {
        kind: Kind::Claimed as i32,
        claim: Some(claim("y", 8)),
        revision: 10,
    });
    c.watched.push(pb::ClaimEvent {
        kind: Kind::Adopted as i32,
        claim: Some(claim("y", 7)),
        revision: 11,
    });
    assert_eq!(c.check().len(), 3, "{:?}", c.check());

    let mut ok = Checker::default();
    ok.node_saw("a", &claimed("x", 5));
    ok.node_saw(
        "a",
        &Msg::Released(pb::Released {
            broadcast: "x".into(),
        }),
    );
    ok.node_saw("b", &claimed("x", 6));
    ok.session_ended("b");
    ok.node_saw("a", &claimed("x", 7));
    assert!(ok.check().is_empty(), "{:?}", ok.check());
}
