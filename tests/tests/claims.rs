//! The claim rules as a user sees them: a real etcd, the real claim-service
//! binary, nodes and watchers speaking gRPC.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Result;
use system_tests::v1 as pb;
use system_tests::*;

use pb::claim_event::Kind;
use pb::node_message::Msg as NodeMsg;
use pb::service_message::Msg as ServiceMsg;

#[tokio::test]
async fn first_created_claims_and_get_owner_names_the_node() -> Result<()> {
    let stack = Stack::start("first", &[]).await?;
    let mut a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    assert_eq!(a.welcome.lease_ttl_ms, 10_000);
    a.created("live/cam1", "video").await?;
    let claimed = a.expect_claimed("live/cam1").await?;
    let claim = claimed.claim.expect("claimed carries the claim");
    assert!(!claimed.adopted);
    assert_eq!(claim.node_id, "node-a");
    assert_ne!(claim.lease_id, 0);
    assert!(claim.fencing_token > 0);
    assert_eq!(claim.endpoints["rtmp"], "rtmp://node-a.test:1935");

    let consistent = stack.owner("live/cam1", true).await?.expect("owned");
    assert_eq!(consistent.node_id, "node-a");
    assert_eq!(consistent.fencing_token, claim.fencing_token);
    let cached = stack
        .eventually_owner("live/cam1", |o| o.is_some())
        .await?
        .expect("owned");
    assert_eq!(cached, consistent);
    assert_eq!(stack.owner("live/none", true).await?, None);
    assert_eq!(stack.owner("live/none", false).await?, None);

    // The layout is readable with etcdctl: one lease-bound key per claim.
    let raw = stack.etcd.etcdctl(&[
        "get",
        &format!("{}broadcasts/live/cam1", stack.prefix),
        "--print-value-only",
    ])?;
    let value: serde_json::Value = serde_json::from_str(raw.trim())?;
    assert_eq!(value["node_id"], "node-a");
    Ok(())
}

#[tokio::test]
async fn tracks_share_one_claim_released_with_the_last() -> Result<()> {
    let stack = Stack::start("tracks", &[]).await?;
    let mut watcher = Watcher::open(&stack.svc, "", 0).await?;
    let mut a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    a.created("live/x", "video").await?;
    a.created("live/x", "audio").await?;
    let claim = a.expect_claimed("live/x").await?.claim.unwrap();
    let ev = watcher.expect(Kind::Claimed, "live/x").await?;
    assert_eq!(ev.claim.unwrap().fencing_token, claim.fencing_token);

    // Closing video alone keeps the claim; nothing is said.
    a.closed("live/x", "video").await?;
    assert_eq!(a.silent_for(Duration::from_millis(300)).await, None);
    assert_eq!(
        stack.owner("live/x", true).await?.map(|c| c.fencing_token),
        Some(claim.fencing_token)
    );
    // Closing audio releases it; a watcher sees it at once, not after a TTL.
    a.closed("live/x", "audio").await?;
    a.expect_released("live/x").await?;
    let ev = watcher.expect(Kind::Released, "live/x").await?;
    assert_eq!(ev.claim.unwrap().node_id, "node-a");
    assert_eq!(stack.owner("live/x", true).await?, None);

    // Exactly one claim was ever made for the broadcast.
    let metrics = stack.svc.metrics().await?;
    assert!(
        metrics.contains("claims_granted_total{how=\"created\"} 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn second_node_conflicts_then_takes_over_as_standby() -> Result<()> {
    let stack = Stack::start("standby", &[]).await?;
    let mut a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    let mut b = Node::attach(&stack.svc.addr(), hello("node-b")).await?;
    a.created("live/x", "video").await?;
    let first = a.expect_claimed("live/x").await?.claim.unwrap();

    b.created("live/x", "video").await?;
    let owner = b.expect_conflict("live/x").await?;
    assert_eq!(owner.node_id, "node-a");
    assert_eq!(owner.endpoints["rtmp"], "rtmp://node-a.test:1935");
    assert_eq!(owner.endpoints["http"], "http://node-a.test:8080");
    assert_eq!(owner.fencing_token, first.fencing_token);

    a.closed("live/x", "video").await?;
    a.expect_released("live/x").await?;
    let second = b.expect_claimed("live/x").await?.claim.unwrap();
    assert_eq!(second.node_id, "node-b");
    assert!(
        second.fencing_token > first.fencing_token,
        "{} > {}",
        second.fencing_token,
        first.fencing_token
    );
    assert_eq!(
        stack.owner("live/x", true).await?.unwrap().node_id,
        "node-b"
    );
    Ok(())
}

#[tokio::test]
async fn goodbye_releases_everything_at_once() -> Result<()> {
    let stack = Stack::start("goodbye", &[]).await?;
    let mut watcher = Watcher::open(&stack.svc, "", 0).await?;
    let mut a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    let names: Vec<String> = (0..20).map(|i| format!("live/g{i:02}")).collect();
    for n in &names {
        a.created(n, "video").await?;
        a.created(n, "audio").await?;
    }
    for n in &names {
        a.expect_claimed(n).await?;
    }
    a.goodbye().await?;
    let mut released = BTreeSet::new();
    while released.len() < names.len() {
        let ev = watcher.next().await?;
        if ev.kind == Kind::Released as i32 {
            released.insert(ev.claim.unwrap().broadcast);
        }
    }
    assert_eq!(released, names.iter().cloned().collect());
    let mut client = stack.svc.ownership().await?;
    let left = client
        .list_claims(pb::ListClaimsRequest::default())
        .await?
        .into_inner();
    // The view may trail etcd by a moment; etcd itself has nothing left.
    let raw = stack.etcd.etcdctl(&[
        "get",
        "--prefix",
        &format!("{}broadcasts/", stack.prefix),
        "--keys-only",
    ])?;
    assert_eq!(raw.trim(), "", "left in etcd: {raw}; view had {left:?}");
    Ok(())
}

#[tokio::test]
async fn lease_revoked_behind_the_service_is_lost_then_claimed_again() -> Result<()> {
    let stack = Stack::start("lost", &[]).await?;
    let mut a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    a.created("live/x", "video").await?;
    let claim = a.expect_claimed("live/x").await?.claim.unwrap();
    stack
        .etcd
        .etcdctl(&["lease", "revoke", &format!("{:x}", claim.lease_id)])?;
    let reason = a.expect_lost("live/x").await?;
    assert!(reason.contains("expired"), "{reason}");
    // The track is still live, so the service claims it again.
    let again = a.expect_claimed("live/x").await?.claim.unwrap();
    assert!(again.fencing_token > claim.fencing_token);
    assert_ne!(again.lease_id, claim.lease_id);
    let metrics = stack.svc.metrics().await?;
    assert!(
        metrics.contains("claims_lost_total{reason=\"expired\"} 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_the_documented_answers_and_changes_nothing() -> Result<()> {
    let stack = Stack::start("bad", &[]).await?;
    let addr = stack.svc.addr();
    let mut a = Node::attach(&addr, hello("node-a")).await?;
    a.created("live/keep", "video").await?;
    let kept = a.expect_claimed("live/keep").await?.claim.unwrap();

    // A message before hello.
    let err = Node::open(&addr, NodeMsg::Created(track("live/x", "video")))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("before hello"), "{err}");

    // Bad node ids and endpoints in hello.
    for bad in ["Node_A", "", &"n".repeat(64)] {
        let err = Node::open(&addr, NodeMsg::Hello(hello(bad)))
            .await
            .err()
            .expect("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}: {err}");
        assert!(err.message().contains("node id"), "{err}");
    }
    let mut bad_live = hello("node-c");
    bad_live.live.push(track("live/../x", "video"));
    let err = Node::open(&addr, NodeMsg::Hello(bad_live))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("\"..\" segment"), "{err}");

    // A bad name inside a session is answered, not fatal.
    a.created("live//x", "video").await?;
    let reason = a
        .expect("rejected", |m| match m {
            ServiceMsg::Rejected(r) => Some(r.reason.clone()),
            _ => None,
        })
        .await?;
    assert!(reason.contains("empty segment"), "{reason}");
    a.created("live/ok", "bad track!").await?;
    a.expect("rejected", |m| {
        matches!(m, ServiceMsg::Rejected(_)).then_some(())
    })
    .await?;
    // An unknown closed changes nothing.
    a.closed("live/never", "video").await?;
    a.closed("live/keep", "audio").await?;
    // The session still works, and the earlier claim is intact.
    a.created("live/after", "video").await?;
    a.expect_claimed("live/after").await?;
    let owner = stack.owner("live/keep", true).await?.expect("still owned");
    assert_eq!(owner.fencing_token, kept.fencing_token);
    assert_eq!(owner.lease_id, kept.lease_id);

    // A second hello is a protocol error that ends the session; its claims
    // are kept for the detach grace, not dropped.
    a.send(NodeMsg::Hello(hello("node-a"))).await?;
    let status = a.expect_status().await?;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(stack.owner("live/keep", true).await?.is_some());

    // Read-side validation.
    let mut client = stack.svc.ownership().await?;
    let err = client
        .get_owner(pb::GetOwnerRequest {
            broadcast: "a b".into(),
            consistent: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client
        .list_claims(pb::ListClaimsRequest {
            page_token: "forged".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let mut stream = client
        .watch_claims(pb::WatchClaimsRequest {
            prefix: String::new(),
            start_revision: -1,
        })
        .await;
    if let Ok(s) = &mut stream {
        let first = s.get_mut().message().await;
        assert!(first.is_err(), "negative start_revision accepted");
    } else {
        assert_eq!(stream.unwrap_err().code(), tonic::Code::InvalidArgument);
    }
    Ok(())
}

#[tokio::test]
async fn watch_from_an_old_revision_replays_what_happened() -> Result<()> {
    let stack = Stack::start("replay", &[]).await?;
    let start = {
        let mut c = stack.svc.ownership().await?;
        c.list_claims(pb::ListClaimsRequest::default())
            .await?
            .into_inner()
            .revision
    };
    let mut a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    a.created("live/r1", "video").await?;
    let c1 = a.expect_claimed("live/r1").await?.claim.unwrap();
    a.created("live/r2", "video").await?;
    a.expect_claimed("live/r2").await?;
    a.closed("live/r1", "video").await?;
    a.expect_released("live/r1").await?;
    a.created("other/r3", "video").await?;
    a.expect_claimed("other/r3").await?;

    // Everything since `start`, in order, filtered to the prefix.
    let mut watcher = Watcher::open(&stack.svc, "live/", start + 1).await?;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = watcher.next().await?;
        seen.push((
            Kind::try_from(e.kind)?,
            e.claim.unwrap().broadcast,
            e.revision,
        ));
    }
    assert_eq!(
        seen.iter()
            .map(|(k, b, _)| (*k, b.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (Kind::Claimed, "live/r1"),
            (Kind::Claimed, "live/r2"),
            (Kind::Released, "live/r1")
        ]
    );
    assert_eq!(seen[0].2, c1.fencing_token);
    assert!(seen.windows(2).all(|w| w[0].2 < w[1].2));
    assert!(watcher
        .quiet_for(Duration::from_millis(300))
        .await
        .is_none());

    // That replay came from the replica's own recent history. History
    // neither etcd nor the replica has any more is refused, saying what is
    // left: a replica started after the compaction has only etcd's.
    let rev = stack
        .svc
        .ownership()
        .await?
        .list_claims(pb::ListClaimsRequest::default())
        .await?
        .into_inner()
        .revision;
    stack.etcd.etcdctl(&["compact", &rev.to_string()])?;
    let later = ClaimService::start(&stack.etcd.endpoint(), &stack.prefix, &[]).await?;
    let mut old = Watcher::open(&later, "", start + 1).await?;
    let err = old.next().await.unwrap_err().to_string();
    assert!(err.contains("compacted"), "{err}");
    // Recent history the replica keeps is replayed even so.
    let mut recent = Watcher::open(&stack.svc, "live/", start + 1).await?;
    let e = recent.next().await?;
    assert_eq!(e.claim.unwrap().broadcast, "live/r1");
    Ok(())
}

#[tokio::test]
async fn list_claims_pages_cover_every_claim_exactly_once() -> Result<()> {
    let stack = Stack::start("pages", &[]).await?;
    let mut a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    let mut b = Node::attach(&stack.svc.addr(), hello("node-b")).await?;
    let mut want_a = BTreeSet::new();
    let mut want_b = BTreeSet::new();
    for i in 0..60 {
        let name = format!("live/p{i:03}");
        if i % 3 == 0 {
            b.created(&name, "video").await?;
            want_b.insert(name);
        } else {
            a.created(&name, "video").await?;
            want_a.insert(name);
        }
    }
    b.created("other/q", "video").await?;
    for n in &want_a {
        a.expect_claimed(n).await?;
    }
    for n in &want_b {
        b.expect_claimed(n).await?;
    }
    b.expect_claimed("other/q").await?;
    let mut client = stack.svc.ownership().await?;
    let list = |node: &str, page_size: u32| pb::ListClaimsRequest {
        prefix: "live/".into(),
        node_id: node.into(),
        page_size,
        page_token: String::new(),
    };
    // The view catches up with the watch; wait for all 60.
    until(
        Duration::from_millis(20),
        async || {
            Ok(client
                .clone()
                .list_claims(list("", 1000))
                .await?
                .into_inner()
                .claims
                .len())
        },
        |seen| *seen >= 60,
    )
    .await?;
    for (node, want, size) in [
        ("", None, 7u32),
        ("node-a", Some(&want_a), 5),
        ("node-b", Some(&want_b), 100),
    ] {
        let mut seen = Vec::new();
        let mut req = list(node, size);
        loop {
            let page = client.list_claims(req.clone()).await?.into_inner();
            assert!(page.claims.len() <= size as usize);
            seen.extend(page.claims.into_iter().map(|c| c.broadcast));
            if page.next_page_token.is_empty() {
                break;
            }
            req.page_token = page.next_page_token;
        }
        let unique: BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "a claim was listed twice");
        let expected: BTreeSet<String> = match want {
            Some(w) => w.clone(),
            None => want_a.union(&want_b).cloned().collect(),
        };
        assert_eq!(unique, expected, "node filter {node:?}");
    }
    let nodes = client
        .list_nodes(pb::ListNodesRequest {})
        .await?
        .into_inner();
    let counts: Vec<(String, u32)> = nodes
        .nodes
        .into_iter()
        .map(|n| (n.node_id, n.claims))
        .collect();
    assert_eq!(counts, vec![("node-a".into(), 40), ("node-b".into(), 21)]);
    Ok(())
}

#[tokio::test]
async fn health_follows_etcd_and_claims_survive_a_short_restart() -> Result<()> {
    let mut stack = Stack::start("health", &[]).await?;
    let mut a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    a.created("live/x", "video").await?;
    let claim = a.expect_claimed("live/x").await?.claim.unwrap();
    stack.etcd.kill();
    stack.svc.wait_serving(false).await?;
    stack.etcd.restart().await?;
    stack.svc.wait_serving(true).await?;
    // A restart shorter than the TTL loses nothing.
    assert_eq!(a.silent_for(Duration::from_secs(3)).await, None);
    let owner = stack.owner("live/x", true).await?.expect("still owned");
    assert_eq!(owner.fencing_token, claim.fencing_token);
    // And the session still works.
    a.created("live/y", "video").await?;
    a.expect_claimed("live/y").await?;
    Ok(())
}

#[tokio::test]
async fn a_crashed_node_keeps_its_claims_for_the_grace_and_can_take_them_back() -> Result<()> {
    let stack = Stack::start("grace", &["--detach-grace", "2s"]).await?;
    let mut watcher = Watcher::open(&stack.svc, "", 0).await?;
    let mut a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    a.created("live/x", "video").await?;
    a.created("live/y", "video").await?;
    let x = a.expect_claimed("live/x").await?.claim.unwrap();
    a.expect_claimed("live/y").await?;
    // Both claims run at once: their CLAIMED events may come in any order.
    let mut claimed = BTreeSet::new();
    while claimed.len() < 2 {
        let ev = watcher.next().await?;
        assert_eq!(Kind::try_from(ev.kind)?, Kind::Claimed);
        claimed.insert(ev.claim.unwrap().broadcast);
    }
    a.vanish();

    // Back within the grace with only live/x: it is adopted in place, with
    // its fencing token and its lease; live/y, no longer live, is released.
    // Watchers see both adopted (the new session's record makes every
    // claim of the node its own), then live/y released.
    let mut again = hello("node-a");
    again.live.push(track("live/x", "video"));
    let mut a2 = Node::attach(&stack.svc.addr(), again).await?;
    let claim = a2.expect_adopted("live/x").await?;
    assert_eq!(claim.fencing_token, x.fencing_token);
    assert_eq!(claim.lease_id, x.lease_id);
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let ev = watcher.next().await?;
        seen.insert((Kind::try_from(ev.kind)?, ev.claim.unwrap().broadcast));
    }
    assert_eq!(
        seen,
        BTreeSet::from([
            (Kind::Adopted, "live/x".into()),
            (Kind::Adopted, "live/y".into()),
            (Kind::Released, "live/y".into())
        ])
    );
    // The old session's grace runs out without touching the adopted claim.
    stack
        .svc
        .wait_log("detach grace over; claims a newer session of the node holds were left to it")
        .await?;
    let owner = stack.owner("live/x", true).await?.expect("still owned");
    assert_eq!(owner.lease_id, claim.lease_id);

    // Gone for longer than the grace: released.
    a2.vanish();
    watcher.expect(Kind::Released, "live/x").await?;
    Ok(())
}

/// A node back asking for another lease TTL keeps its adopted claim on the
/// lease it is on, renewed on that lease's own schedule (its TTL as
/// granted), with its fencing token; its new claims go on the new
/// session's lease, of the TTL asked for.
#[tokio::test]
async fn a_node_back_with_another_ttl_keeps_adopted_claims_on_their_own_lease() -> Result<()> {
    let stack = Stack::start("ttl-change", &[]).await?;
    let mut a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    a.created("live/x", "video").await?;
    let x = a.expect_claimed("live/x").await?.claim.unwrap();
    assert_eq!(x.lease_ttl_ms, 10_000);
    a.vanish();

    let mut again = hello("node-a");
    again.lease_ttl_ms = 5_000;
    again.live.push(track("live/x", "video"));
    let mut a2 = Node::attach(&stack.svc.addr(), again).await?;
    let claim = a2.expect_adopted("live/x").await?;
    assert_eq!(claim.fencing_token, x.fencing_token);
    assert_eq!(claim.lease_id, x.lease_id);
    assert_eq!(claim.lease_ttl_ms, 10_000);
    a2.created("live/y", "video").await?;
    let y = a2.expect_claimed("live/y").await?.claim.unwrap();
    assert_eq!(y.lease_ttl_ms, 5_000);
    assert_ne!(y.lease_id, x.lease_id);
    let mut etcd = stack.etcd.client().await?;
    let lease = etcd.lease_time_to_live(x.lease_id, None).await?;
    assert_eq!(lease.granted_ttl(), 10);
    let lease = etcd.lease_time_to_live(y.lease_id, None).await?;
    assert_eq!(lease.granted_ttl(), 5);
    // Renewed on its own schedule: nothing lost past its TTL.
    assert_eq!(a2.silent_for(Duration::from_secs(12)).await, None);
    assert_eq!(
        stack.owner("live/x", true).await?.map(|c| c.fencing_token),
        Some(x.fencing_token)
    );
    Ok(())
}

#[tokio::test]
async fn a_newer_session_of_a_node_supersedes_the_older() -> Result<()> {
    let stack = Stack::start("supersede", &[]).await?;
    let mut old = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    old.created("live/x", "video").await?;
    let x = old.expect_claimed("live/x").await?.claim.unwrap();
    let mut again = hello("node-a");
    again.live.push(track("live/x", "video"));
    let mut new = Node::attach(&stack.svc.addr(), again).await?;
    let status = old.expect_status().await?;
    assert_eq!(status.code(), tonic::Code::Aborted, "{status}");
    let adopted = new.expect_claimed("live/x").await?;
    assert!(adopted.adopted);
    assert_eq!(adopted.claim.unwrap().fencing_token, x.fencing_token);
    Ok(())
}

#[tokio::test]
async fn sigterm_leaves_claims_for_another_replica_to_adopt() -> Result<()> {
    let mut stack = Stack::start("sigterm", &[]).await?;
    let other = ClaimService::start(&stack.etcd.endpoint(), &stack.prefix, &[]).await?;
    let mut watcher = Watcher::open(&other, "", 0).await?;
    let mut a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    a.created("live/x", "video").await?;
    let x = a.expect_claimed("live/x").await?.claim.unwrap();
    watcher.expect(Kind::Claimed, "live/x").await?;

    let status = stack.svc.terminate().await?;
    assert!(status.success(), "{status}");
    let ended = a.expect_status().await?;
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended}");

    let mut again = hello("node-a");
    again.live.push(track("live/x", "video"));
    let mut a2 = Node::attach(&other.addr(), again).await?;
    let adopted = a2.expect_claimed("live/x").await?;
    assert!(adopted.adopted);
    assert_eq!(adopted.claim.unwrap().fencing_token, x.fencing_token);
    let ev = watcher.next().await?;
    assert_eq!(Kind::try_from(ev.kind)?, Kind::Adopted, "{ev:?}");
    Ok(())
}

#[tokio::test]
async fn thousands_of_claims_share_a_handful_of_keepalive_streams() -> Result<()> {
    let stack = Stack::start("many", &[]).await?;
    let mut a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    const N: usize = 2_000;
    for i in 0..N {
        a.created(&format!("live/m{i:05}"), "video").await?;
    }
    let mut claimed = 0;
    while claimed < N {
        if let ServiceMsg::Claimed(_) = a.next().await?.map_err(|s| anyhow::anyhow!("{s}"))? {
            claimed += 1;
        }
    }
    let metrics = stack.svc.metrics().await?;
    let streams: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("claims_keepalive_streams "))
        .expect("keepalive stream gauge exported")
        .trim()
        .parse()?;
    assert!(
        (1.0..=2.0).contains(&streams),
        "{streams} keep-alive streams for {N} leases"
    );
    assert!(metrics.contains(&format!("claims_held {N}")), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn etcd_gone_longer_than_the_ttl_is_lost_then_claimed_again() -> Result<()> {
    let mut stack = Stack::start("outage", &SHORT_LEASE).await?;
    let mut a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    a.created("live/x", "video").await?;
    let before = a.expect_claimed("live/x").await?.claim.unwrap();
    let serving =
        async |svc: &ClaimService| Ok(metric_value(&svc.metrics().await?, "claims_serving"));
    until(
        Duration::from_millis(100),
        async || serving(&stack.svc).await,
        |v| *v == Some(1.0),
    )
    .await?;
    stack.etcd.kill();
    // The replica says it cannot make claims (what the alert rules watch).
    until(
        Duration::from_millis(100),
        async || serving(&stack.svc).await,
        |v| *v == Some(0.0),
    )
    .await?;
    // No renewal can be confirmed for a whole TTL: the node is told.
    let reason = a.expect_lost("live/x").await?;
    assert!(reason.contains("whole TTL"), "{reason}");
    // The track is live, so the service keeps trying and says so.
    a.expect("retrying", |m| {
        matches!(m, ServiceMsg::Retrying(r) if r.broadcast == "live/x").then_some(())
    })
    .await?;
    stack.etcd.restart().await?;
    // etcd restores leases on restart, so the old key may still name this
    // node (adopted, same token) or be gone (a fresh claim, larger token).
    let again = a.expect_claimed("live/x").await?;
    let claim = again.claim.unwrap();
    if again.adopted {
        assert_eq!(claim.fencing_token, before.fencing_token);
    } else {
        assert!(claim.fencing_token > before.fencing_token);
    }
    let owner = stack.owner("live/x", true).await?.expect("owned again");
    assert_eq!(owner.lease_id, claim.lease_id);
    until(
        Duration::from_millis(100),
        async || serving(&stack.svc).await,
        |v| *v == Some(1.0),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn oversized_names_are_refused_and_say_why() -> Result<()> {
    let stack = Stack::start("oversized", &[]).await?;
    let mut a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    a.created(&"x".repeat(1000), "video").await?;
    let reason = a
        .expect("rejected", |m| match m {
            ServiceMsg::Rejected(r) => Some(r.reason.clone()),
            _ => None,
        })
        .await?;
    assert!(reason.contains("1000 bytes long"), "{reason}");
    let mut huge = hello("node-b");
    huge.endpoints
        .insert("rtmp".into(), format!("rtmp://{}", "h".repeat(5000)));
    let err = Node::open(&stack.svc.addr(), NodeMsg::Hello(huge))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("at most 1024 bytes"), "{err}");
    // A message past the size limit is refused by the transport with a status.
    let mut flood = hello("node-c");
    flood.live = (0..200_000)
        .map(|i| track(&format!("live/f{i:06}"), "video"))
        .collect();
    let err = Node::open(&stack.svc.addr(), NodeMsg::Hello(flood))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(
            err.code(),
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{err}"
    );
    // Nothing was claimed by any of it.
    let mut client = stack.svc.ownership().await?;
    let all = client
        .list_claims(pb::ListClaimsRequest::default())
        .await?
        .into_inner();
    assert!(all.claims.is_empty(), "{:?}", all.claims);
    Ok(())
}

/// Reads `n` claim answers (claimed or conflict), by broadcast.
async fn answers(node: &mut Node, n: usize) -> Result<HashMap<String, ServiceMsg>> {
    let mut got = HashMap::new();
    while got.len() < n {
        let m = match node.next().await? {
            Ok(m) => m,
            Err(status) => anyhow::bail!("session ended: {status}"),
        };
        let broadcast = match &m {
            ServiceMsg::Claimed(c) => c.claim.as_ref().unwrap().broadcast.clone(),
            ServiceMsg::Conflict(c) => c.broadcast.clone(),
            _ => continue,
        };
        assert!(
            got.insert(broadcast.clone(), m).is_none(),
            "{broadcast} answered twice"
        );
    }
    Ok(got)
}

/// A hello listing hundreds of tracks is made in batches (one create and one
/// adopt transaction for many keys); each broadcast still gets exactly the
/// answer it would get alone: the node's earlier claims adopted with their
/// fencing tokens and leases, another node's a conflict naming it and left
/// untouched, the rest claimed anew, every one on a lease of its own.
#[tokio::test]
async fn a_hello_of_hundreds_of_tracks_gets_each_broadcast_its_own_answer() -> Result<()> {
    let stack = Stack::start("batched", &["--detach-grace", "8s"]).await?;
    let names = |tag: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("mix/{i:03}-{tag}")).collect()
    };
    let (ours, theirs, new) = (names("a", 150), names("b", 20), names("n", 50));

    let mut b = Node::attach(&stack.svc.addr(), hello("node-b")).await?;
    for name in &theirs {
        b.created(name, "video").await?;
    }
    let b_claims = answers(&mut b, theirs.len()).await?;
    let mut a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    for name in &ours {
        a.created(name, "video").await?;
    }
    let a_claims = answers(&mut a, ours.len()).await?;
    let claim_of = |m: &ServiceMsg| match m {
        ServiceMsg::Claimed(c) => c.claim.clone().unwrap(),
        other => panic!("expected claimed, got {other:?}"),
    };
    a.vanish();

    // Back with all of them live, in name order so every batch mixes the
    // three kinds.
    let mut again = hello("node-a");
    let mut all: Vec<&String> = ours.iter().chain(&theirs).chain(&new).collect();
    all.sort();
    again.live = all.iter().map(|n| track(n, "video")).collect();
    let mut a2 = Node::attach(&stack.svc.addr(), again).await?;
    let got = answers(&mut a2, all.len()).await?;
    let mut leases = BTreeSet::new();
    let mut new_leases = BTreeSet::new();
    for name in &ours {
        let ServiceMsg::Claimed(c) = &got[name] else {
            panic!("{name}: {:?}", got[name]);
        };
        let (claim, before) = (c.claim.clone().unwrap(), claim_of(&a_claims[name]));
        assert!(c.adopted, "{name} not adopted");
        assert_eq!(claim.fencing_token, before.fencing_token, "{name}");
        assert_eq!(
            claim.lease_id, before.lease_id,
            "{name} not adopted in place"
        );
        leases.insert(claim.lease_id);
    }
    for name in &theirs {
        let ServiceMsg::Conflict(c) = &got[name] else {
            panic!("{name}: {:?}", got[name]);
        };
        let (owner, b_claim) = (c.owner.clone().unwrap(), claim_of(&b_claims[name]));
        assert_eq!(owner.node_id, "node-b");
        assert_eq!(owner.fencing_token, b_claim.fencing_token);
    }
    for name in &new {
        let ServiceMsg::Claimed(c) = &got[name] else {
            panic!("{name}: {:?}", got[name]);
        };
        assert!(!c.adopted, "{name} adopted");
        new_leases.insert(c.claim.as_ref().unwrap().lease_id);
    }
    // One lease per session: the earlier session's, kept for what it
    // adopted, and the new session's for what it claimed anew.
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(new_leases.len(), 1, "{new_leases:?}");
    assert!(leases.is_disjoint(&new_leases));

    // etcd holds exactly that: node-a's keys on the leases it was told,
    // node-b's unchanged.
    let mut etcd = stack.etcd.client().await?;
    let kvs = etcd
        .get(
            format!("{}broadcasts/mix/", stack.prefix),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?
        .kvs()
        .to_vec();
    assert_eq!(kvs.len(), all.len());
    for kv in kvs {
        let name = kv
            .key_str()?
            .rsplit_once("broadcasts/")
            .unwrap()
            .1
            .to_string();
        let expected = match &got[&name] {
            ServiceMsg::Claimed(c) => c.claim.clone().unwrap(),
            ServiceMsg::Conflict(_) => claim_of(&b_claims[&name]),
            other => panic!("{other:?}"),
        };
        assert_eq!(kv.lease(), expected.lease_id, "{name}");
        assert_eq!(kv.create_revision(), expected.fencing_token, "{name}");
    }
    Ok(())
}

/// `WatchNodes` lists every node with a record, then says when one is
/// marked detached (its session broke: grace end given) and when it is
/// gone (the grace ran out): what a node's owner cache needs to send
/// nobody to a dead node.
#[tokio::test]
async fn watch_nodes_lists_nodes_then_tells_detached_and_gone() -> Result<()> {
    let stack = Stack::start("watch-nodes", &["--detach-grace", "2s"]).await?;
    let a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    let mut client = stack.svc.ownership().await?;
    // The record is written just after the welcome: listed, or told.
    let mut events = client
        .watch_nodes(pb::WatchNodesRequest {})
        .await?
        .into_inner();
    let mut next = async || -> Result<pb::NodeEvent> {
        match tokio::time::timeout(WAIT, events.message()).await {
            Ok(Ok(Some(e))) => Ok(e),
            other => anyhow::bail!("no node event: {other:?}"),
        }
    };
    let attached = loop {
        let e = next().await?;
        if e.node.as_ref().is_some_and(|n| n.node_id == "node-a") {
            break e;
        }
    };
    assert!(!attached.gone, "{attached:?}");
    assert!(!attached.node.unwrap().detached);
    a.vanish();
    // (A change that came just before the list may be told once more.)
    let detached = loop {
        let e = next().await?;
        if e.node.as_ref().is_some_and(|n| n.detached) || e.gone {
            break e;
        }
    };
    let node = detached.node.clone().unwrap();
    assert!(
        node.node_id == "node-a" && node.grace_ends_unix_ms > 0 && !detached.gone,
        "{detached:?}"
    );
    let gone = next().await?;
    assert!(gone.gone, "{gone:?}");
    assert_eq!(gone.node.unwrap().node_id, "node-a");
    Ok(())
}
