//! Several claim-service replicas on one etcd: a node moving between them,
//! a replica that is paused and wakes up late. What users see: who owns what,
//! what a watcher saw, what a node was told.

use std::time::Duration;

use anyhow::Result;
use system_tests::checker::Report;
use system_tests::v1 as pb;
use system_tests::*;

use pb::claim_event::Kind;

/// These scenarios load both cores (several etcd members, replicas, nodes);
/// run one at a time so a timing bound is about the system, not the crowd.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn a_newer_session_on_another_replica_supersedes_the_older() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let etcd = Etcd::start().await?;
    let prefix = test_prefix("cross-supersede");
    let one = ClaimService::start(&etcd.endpoint(), &prefix, &[]).await?;
    let two = ClaimService::start(&etcd.endpoint(), &prefix, &[]).await?;
    let mut watcher = Watcher::open(&two, "", 0).await?;
    let mut old = Node::attach(&one.addr(), hello("node-a")).await?;
    old.created("live/x", "video").await?;
    let x = old.expect_claimed("live/x").await?.claim.unwrap();
    watcher.expect(Kind::Claimed, "live/x").await?;

    // The same node id shows up on replica two (its old connection half-open).
    let mut again = hello("node-a");
    again.live.push(track("live/x", "video"));
    let mut new = Node::attach(&two.addr(), again).await?;
    let adopted = new.expect_claimed("live/x").await?;
    assert!(adopted.adopted);
    assert_eq!(
        adopted.claim.as_ref().unwrap().fencing_token,
        x.fencing_token
    );
    let status = old.expect_status().await?;
    assert_eq!(status.code(), tonic::Code::Aborted, "{status}");

    // The old session's grace runs out on replica one without touching it.
    one.wait_log("detach grace over; claims a newer session of the node holds were left to it")
        .await?;
    let owner = two.owner("live/x", true).await?.expect("owned");
    assert_eq!(owner.lease_id, adopted.claim.unwrap().lease_id);
    while let Some(e) = watcher.quiet_for(Duration::from_millis(200)).await {
        assert_ne!(e.kind, Kind::Released as i32, "{e:?}");
    }
    Ok(())
}

/// A node's claims are on its session's lease. A newer session of the node
/// (here on another replica) adopts them there, as they are. When the older
/// session's grace runs out it deletes none of them (its releases are
/// fenced by the node record, now the newer session's) and does not revoke
/// the lease they are on; the newer session revokes that lease once it has
/// released the last claim on it, not later, and not before.
#[tokio::test]
async fn an_adopted_lease_outlives_the_older_session_and_goes_with_its_last_claim() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let etcd = Etcd::start().await?;
    let prefix = test_prefix("adopted-lease");
    let one = ClaimService::start(&etcd.endpoint(), &prefix, &["--detach-grace", "4s"]).await?;
    let two = ClaimService::start(&etcd.endpoint(), &prefix, &[]).await?;
    let mut old = Node::attach(&one.addr(), hello("node-a")).await?;
    old.created("live/x", "video").await?;
    old.created("live/y", "video").await?;
    let x = old.expect_claimed("live/x").await?.claim.unwrap();
    let y = old.expect_claimed("live/y").await?.claim.unwrap();
    assert_eq!(x.lease_id, y.lease_id, "one lease per session");

    let mut again = hello("node-a");
    again.live.push(track("live/x", "video"));
    again.live.push(track("live/y", "video"));
    let mut new = Node::attach(&two.addr(), again).await?;
    for _ in 0..2 {
        let adopted = new.expect_any_claimed().await?;
        assert!(adopted.adopted);
        assert_eq!(
            adopted.claim.unwrap().lease_id,
            x.lease_id,
            "adopted in place"
        );
    }
    let status = old.expect_status().await?;
    assert_eq!(status.code(), tonic::Code::Aborted, "{status}");
    new.created("live/z", "video").await?;
    let z = new.expect_claimed("live/z").await?.claim.unwrap();
    assert_ne!(
        z.lease_id, x.lease_id,
        "new claims on the new session's lease"
    );

    // The old session's grace runs out on replica one: every claim stands,
    // and the lease the adopted ones are on is alive.
    one.wait_log("detach grace over; claims a newer session of the node holds were left to it")
        .await?;
    for claim in [&x, &y, &z] {
        let owner = two
            .owner(&claim.broadcast, true)
            .await?
            .unwrap_or_else(|| panic!("{} released\n{}", claim.broadcast, one.log_text()));
        assert_eq!(
            owner.fencing_token, claim.fencing_token,
            "{}",
            claim.broadcast
        );
        assert_eq!(owner.lease_id, claim.lease_id, "{}", claim.broadcast);
    }
    let mut etcd_client = etcd.client().await?;
    let ttl = etcd_client
        .lease_time_to_live(x.lease_id, None)
        .await?
        .ttl();
    assert!(ttl > 0, "the adopted claims' lease is gone: {ttl}");

    // Released one by one on replica two: the lease stays while y is on
    // it, and goes with y.
    new.closed("live/x", "video").await?;
    new.expect_released("live/x").await?;
    let ttl = etcd_client
        .lease_time_to_live(x.lease_id, None)
        .await?
        .ttl();
    assert!(ttl > 0, "revoked with a claim still on it: {ttl}");
    assert!(two.owner("live/y", true).await?.is_some());
    new.closed("live/y", "video").await?;
    new.expect_released("live/y").await?;
    until(
        Duration::from_millis(50),
        async || {
            Ok(etcd_client
                .lease_time_to_live(x.lease_id, None)
                .await?
                .ttl())
        },
        |ttl| *ttl < 0,
    )
    .await?;
    assert!(two.owner("live/z", true).await?.is_some(), "z stands");
    Ok(())
}

#[tokio::test]
async fn a_replica_paused_past_the_lease_cannot_take_back_what_moved() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let etcd = Etcd::start().await?;
    let prefix = test_prefix("paused");
    let mut one = ClaimService::start(&etcd.endpoint(), &prefix, &SHORT_LEASE).await?;
    let two = ClaimService::start(&etcd.endpoint(), &prefix, &SHORT_LEASE).await?;
    let mut watcher = Watcher::open(&two, "", 0).await?;
    let mut a = Node::attach(&one.addr(), hello("node-a")).await?;
    a.created("live/p", "video").await?;
    let first = a.expect_claimed("live/p").await?.claim.unwrap();
    watcher.expect(Kind::Claimed, "live/p").await?;

    // Replica one freezes. The node gives up on it and moves to replica two
    // within the lease, adopting its claim.
    let pid = one.pid().expect("running").to_string();
    let stopped = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()?;
    a.vanish();
    let mut again = hello("node-a");
    again.live.push(track("live/p", "video"));
    let mut moved = Node::attach(&two.addr(), again).await?;
    let adopted = moved.expect_claimed("live/p").await?;
    assert!(adopted.adopted);
    let adopted = adopted.claim.unwrap();
    assert_eq!(adopted.fencing_token, first.fencing_token);
    let moved_in = stopped.elapsed();

    // Replica one wakes up long after its leases' TTL: whatever it tries,
    // the claim stays where it moved.
    nothing_happens_for(
        Duration::from_secs(7),
        "replica one stays stopped past its leases' TTL (5 s)",
    )
    .await;
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()?;
    // Woken, it finds the node's record written by the newer session and
    // ends its own, whose grace then runs out. Whether it first lost what
    // it held (no renewal confirmed while it slept) or left it to the newer
    // session, it says which, never "released".
    one.wait_log("detach grace over;").await?;
    let said = one.log_text();
    assert!(
        said.contains("detach grace over; nothing was left to release")
            || said.contains("were left to it"),
        "{said}"
    );
    let owner = two.owner("live/p", true).await?.expect("owned");
    assert_eq!(owner.lease_id, adopted.lease_id, "{}", one.log_text());
    assert_eq!(owner.fencing_token, first.fencing_token);
    while let Some(e) = watcher.quiet_for(Duration::from_millis(200)).await {
        assert_ne!(e.kind, Kind::Released as i32, "{e:?}\n{}", one.log_text());
    }
    assert!(moved.silent_for(Duration::from_millis(200)).await.is_none());
    one.kill();
    let mut report = Report::new(
        "SIGSTOP a replica past the lease (TTL 5 s): node moves, woken replica changes nothing",
    );
    report.run(moved_in, 0, 0);
    report.write();
    Ok(())
}

#[tokio::test]
async fn losing_the_etcd_leader_of_three_loses_no_claim() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = EtcdCluster::start(3).await?;
    let prefix = test_prefix("leader");
    let svc = ClaimService::start(&cluster.endpoints(), &prefix, &[]).await?;
    let mut watcher = Watcher::open(&svc, "", 0).await?;
    let mut a = Node::attach(&svc.addr(), hello("node-a")).await?;
    let names: Vec<String> = (0..50).map(|i| format!("live/l{i:02}")).collect();
    for n in &names {
        a.created(n, "video").await?;
    }
    let mut tokens = std::collections::BTreeMap::new();
    for n in &names {
        let c = a.expect_claimed(n).await?.claim.unwrap();
        tokens.insert(n.clone(), c.fencing_token);
    }
    let leader = cluster.leader()?;
    let killed = std::time::Instant::now();
    cluster.members[leader].kill();
    // Longer than a lease TTL: renewals must have gone through the others.
    let said = a.silent_for(Duration::from_secs(12)).await;
    assert!(said.is_none(), "the node was told {said:?}");
    for n in &names {
        let owner = svc.owner(n, true).await?.expect("still owned");
        assert_eq!(Some(&owner.fencing_token), tokens.get(n));
    }
    while let Some(e) = watcher.quiet_for(Duration::from_millis(300)).await {
        assert_ne!(e.kind, Kind::Released as i32, "{e:?}");
    }
    // And the cluster of two still takes new claims.
    a.created("live/after", "video").await?;
    a.expect_claimed("live/after").await?;
    let mut report = Report::new(
        "kill the leader of a 3-member etcd cluster: no claim lost (time: until checked)",
    );
    report.run(killed.elapsed(), 0, 0);
    report.write();
    Ok(())
}
