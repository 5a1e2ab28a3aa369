//! Publishers through contention and failover, as encoders meet them: real
//! etcd, real claim-service and ingest nodes, and encoders this project did
//! not write (ffmpeg, GStreamer's `rtmp2sink` and librtmp-based `rtmpsink`).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use system_tests::checker::Checker;
use system_tests::v1 as pb;
use system_tests::*;

use pb::claim_event::Kind;
use pb::node_message::Msg as NodeMsg;
use pb::service_message::Msg;

/// etcd, one claim-service, and ingest nodes `node-a` and `node-b` (with
/// `b_args`), both attached.
struct Cluster {
    stack: Stack,
    a: IngestNode,
    b: IngestNode,
}

impl Cluster {
    async fn start(name: &str, b_args: &[&str]) -> Result<Self> {
        let stack = Stack::start(name, &[]).await?;
        let services = vec![stack.svc.addr()];
        let a = IngestNode::start("node-a", &services, &[]).await?;
        let b = IngestNode::start("node-b", &services, b_args).await?;
        for node in [&a, &b] {
            node.wait_attached().await?;
        }
        Ok(Self { stack, a, b })
    }
}

fn state_is(state: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |e| e["claim"]["state"] == state
}

/// A GStreamer encoder (test pattern, H.264 in FLV) publishing to `url`
/// through `sink` (`rtmp2sink`, or librtmp's `rtmpsink`).
fn gstreamer(sink: &str, url: &str) -> Result<Daemon> {
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.args([
        "-q",
        "videotestsrc",
        "is-live=true",
        "!",
        "x264enc",
        "tune=zerolatency",
        "speed-preset=ultrafast",
        "!",
        "flvmux",
        "streamable=true",
        "!",
        sink,
        &format!("location={url}"),
    ]);
    Daemon::spawn("gst-launch-1.0", cmd)
}

#[tokio::test]
async fn every_rtmp_client_is_told_who_owns_a_broadcast_it_cannot_publish() -> Result<()> {
    let c = Cluster::start("publishers-refused", &[]).await?;
    let mut owner = Publisher::start(&c.a.rtmp_url("live/x"))?;
    let entry = c.a.wait_broadcast("live/x", state_is("claimed")).await?;
    let token = entry["fencing_token"].as_i64();
    let told = format!(
        "live/x is owned by node node-a; publish to {}",
        c.a.rtmp_url("live/x")
    );

    // ffmpeg prints the description as a server error.
    let mut ffmpeg = Publisher::start(&c.b.rtmp_url("live/x"))?;
    assert!(!ffmpeg.wait_exit().await?.success());
    let said = ffmpeg.log_text();
    assert!(said.contains(&format!("Server error: {told}")), "{said}");

    // GStreamer's rtmp2sink shows the status, code and description.
    let mut rtmp2 = gstreamer("rtmp2sink", &c.b.rtmp_url("live/x"))?;
    rtmp2.wait_exit().await?;
    let said = rtmp2.log_text();
    assert!(said.contains("NetStream.Publish.BadName"), "{said}");
    assert!(said.contains(&told), "{said}");

    // librtmp (rtmpsink) shows no server text at the default log level, but
    // stops with an error instead of dying of SIGPIPE.
    let mut librtmp = gstreamer("rtmpsink", &c.b.rtmp_url("live/x"))?;
    let status = librtmp.wait_exit().await?;
    let said = librtmp.log_text();
    assert_eq!(status.code(), Some(1), "{status:?}: {said}");
    assert!(
        said.contains("Could not open resource for writing"),
        "{said}"
    );

    // The owner's publisher is undisturbed.
    assert!(owner.alive(), "{}", owner.log_text());
    let entry = c.a.wait_broadcast("live/x", state_is("claimed")).await?;
    assert_eq!(entry["fencing_token"].as_i64(), token);
    assert_eq!(
        c.b.metric("ingest_publishes_refused_total{reason=\"owned_elsewhere\"}")
            .await?,
        3.0
    );
    Ok(())
}

#[tokio::test]
async fn a_standby_publisher_is_accepted_the_moment_the_owners_publisher_leaves() -> Result<()> {
    let c = Cluster::start(
        "publishers-standby",
        &["--duplicate-publisher", "standby", "--claim-wait", "60s"],
    )
    .await?;
    let mut watcher = Watcher::open(&c.stack.svc, "live/", 0).await?;
    let mut owner = Publisher::start(&c.a.rtmp_url("live/s"))?;
    let first = watcher.expect(Kind::Claimed, "live/s").await?;
    let mut standby = Publisher::start(&c.b.rtmp_url("live/s"))?;
    c.b.wait_broadcast("live/s", state_is("standby")).await?;
    // Held: no media accepted, nothing claimed.
    nothing_happens_for(
        Duration::from_millis(500),
        "a held publisher is neither accepted nor refused",
    )
    .await;
    assert_eq!(c.b.metric("ingest_publishers").await?, 0.0);
    assert!(standby.alive(), "{}", standby.log_text());

    owner.terminate().await?;
    let left = Instant::now();
    let moved = watcher.expect(Kind::Claimed, "live/s").await?;
    let claim = moved.claim.unwrap_or_default();
    assert_eq!(claim.node_id, "node-b");
    assert!(claim.fencing_token > first.claim.unwrap_or_default().fencing_token);
    c.b.wait_broadcast("live/s", |e| {
        state_is("claimed")(e) && e["tracks"].as_array().is_some_and(|t| t.len() >= 2)
    })
    .await?;
    eprintln!(
        "standby accepted {:?} after the owner's publisher left",
        left.elapsed()
    );
    assert!(standby.alive(), "{}", standby.log_text());
    Ok(())
}

#[tokio::test]
async fn a_takeover_moves_the_claim_fenced_and_drops_the_former_publisher() -> Result<()> {
    let c = Cluster::start(
        "publishers-takeover",
        &["--duplicate-publisher", "takeover"],
    )
    .await?;
    let mut watcher = Watcher::open(&c.stack.svc, "live/", 0).await?;
    let mut checker = Checker::default();
    let mut former = Publisher::start(&c.a.rtmp_url("live/t"))?;
    let first = watcher.expect(Kind::Claimed, "live/t").await?;
    checker.watched.push(first.clone());
    c.a.wait_broadcast("live/t", state_is("claimed")).await?;

    let asked = Instant::now();
    let mut newest = Publisher::start(&c.b.rtmp_url("live/t"))?;
    former.wait_exit().await?;
    let dropped = asked.elapsed();
    c.a.wait_log("taken over by node node-b").await?;
    let released = watcher.expect(Kind::Released, "live/t").await?;
    let moved = watcher.expect(Kind::Claimed, "live/t").await?;
    let seen = asked.elapsed();
    checker.watched.extend([released.clone(), moved.clone()]);
    let claim = moved.claim.unwrap_or_default();
    assert_eq!(claim.node_id, "node-b");
    assert!(claim.fencing_token > first.claim.unwrap_or_default().fencing_token);
    assert_eq!(checker.check(), Vec::<String>::new());
    c.b.wait_broadcast("live/t", state_is("claimed")).await?;
    assert!(newest.alive(), "{}", newest.log_text());
    assert_eq!(
        c.a.metric("ingest_publishes_refused_total{reason=\"taken_over\"}")
            .await?,
        1.0
    );
    eprintln!("takeover: former publisher dropped after {dropped:?}, new owner seen by a watcher after {seen:?}");
    Ok(())
}

async fn take_over(node: &Node, broadcast: &str, fencing_token: i64) -> Result<()> {
    node.send(NodeMsg::Takeover(pb::Takeover {
        broadcast: broadcast.into(),
        fencing_token,
    }))
    .await
}

async fn rejected(node: &mut Node, broadcast: &str) -> Result<pb::Rejected> {
    node.expect("rejected", |m| match m {
        Msg::Rejected(r) if r.broadcast == broadcast => Some(r.clone()),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn a_takeover_never_tells_two_nodes_claimed_at_once_and_is_refused_when_stale_or_off(
) -> Result<()> {
    let stack = Stack::start("publishers-takeover-plane", &[]).await?;
    let addr = stack.svc.addr();
    let mut checker = Checker::default();
    let mut a = Node::attach(&addr, hello("node-a")).await?;
    let mut b = Node::attach(&addr, hello("node-b")).await?;
    a.created("live/p", "video").await?;
    let held = a.expect_claimed("live/p").await?.claim.unwrap_or_default();
    checker.node_saw(
        "node-a",
        &Msg::Claimed(pb::Claimed {
            claim: Some(held.clone()),
            adopted: false,
        }),
    );
    b.created("live/p", "video").await?;
    let owner = b.expect_conflict("live/p").await?;
    assert_eq!(owner.fencing_token, held.fencing_token);

    // A stale token is refused; nothing moves.
    take_over(&b, "live/p", held.fencing_token - 1).await?;
    let refused = rejected(&mut b, "live/p").await?;
    assert_eq!(
        refused.code,
        tonic::Code::FailedPrecondition as i32,
        "{refused:?}"
    );

    let asked = Instant::now();
    take_over(&b, "live/p", held.fencing_token).await?;
    let reason = a.expect_lost("live/p").await?;
    let lost = asked.elapsed();
    checker.node_saw(
        "node-a",
        &Msg::Lost(pb::Lost {
            broadcast: "live/p".into(),
            reason: reason.clone(),
            taken_by: "node-b".into(),
        }),
    );
    assert!(reason.contains("taken over by node node-b"), "{reason}");
    let moved = b.expect_claimed("live/p").await?.claim.unwrap_or_default();
    checker.node_saw(
        "node-b",
        &Msg::Claimed(pb::Claimed {
            claim: Some(moved.clone()),
            adopted: false,
        }),
    );
    let claimed = asked.elapsed();
    eprintln!("takeover at the claim plane: former owner told lost after {lost:?}, new owner told claimed after {claimed:?}");
    assert!(moved.fencing_token > held.fencing_token);
    assert_eq!(checker.check(), Vec::<String>::new());
    // The former owner, still live, stands by: it claims nothing back.
    assert_eq!(a.silent_for(Duration::from_millis(500)).await, None);
    assert_eq!(
        stack.owner("live/p", true).await?.map(|c| c.node_id),
        Some("node-b".into())
    );

    // A service that does not allow takeovers says so.
    let off = ClaimService::start(
        &stack.etcd.endpoint(),
        &stack.prefix,
        &["--takeover", "deny"],
    )
    .await?;
    let mut c = Node::attach(&off.addr(), hello("node-c")).await?;
    c.created("live/p", "video").await?;
    let owner = c.expect_conflict("live/p").await?;
    take_over(&c, "live/p", owner.fencing_token).await?;
    let refused = rejected(&mut c, "live/p").await?;
    assert!(refused.reason.contains("--takeover deny"), "{refused:?}");
    Ok(())
}

/// The owner's node is killed and its encoder republishes at node B (whose
/// duplicate-publisher policy is `policy`): held there, not refused, and
/// claimed when the grace ends.
async fn failover(policy: &str) -> Result<Duration> {
    let mut c = Cluster::start(
        &format!("publishers-failover-{policy}"),
        &["--duplicate-publisher", policy],
    )
    .await?;
    let mut first = Publisher::start(&c.a.rtmp_url("live/f"))?;
    c.a.wait_broadcast("live/f", state_is("claimed")).await?;
    c.a.kill();
    let killed = Instant::now();
    first.kill();
    let owner = c
        .stack
        .eventually_owner("live/f", |o| o.as_ref().is_some_and(|o| o.detached))
        .await?
        .unwrap_or_default();
    assert!(owner.grace_ends_unix_ms > 0, "{owner:?}");

    // The encoder fails over to node B: held, not sent to the dead node.
    let mut moved = Publisher::start(&c.b.rtmp_url("live/f"))?;
    // Node B's owner cache follows the claim plane's watch and may not yet
    // have seen the detach the service already reports: until it has, B
    // still redirects to A (CI caught that gap once).
    let viewer = until(
        Duration::from_millis(20),
        async || http_get(c.b.http_port, "/live/f.flv").await,
        |answer| answer.status != 302,
    )
    .await?;
    assert_eq!(viewer.status, 503, "{viewer:?}");
    assert!(viewer.header("retry-after").is_some(), "{viewer:?}");
    c.b.wait_broadcast("live/f", state_is("claimed")).await?;
    let after = killed.elapsed();
    assert!(moved.alive(), "{}", moved.log_text());
    let refused =
        c.b.metric("ingest_publishes_refused_total{reason=\"owned_elsewhere\"}")
            .await
            .unwrap_or(0.0);
    assert_eq!(refused, 0.0, "node B refused a publisher");
    // The default detach grace is 5 s.
    assert!(
        after < Duration::from_secs(6),
        "claimed {after:?} after the kill"
    );
    eprintln!("failover ({policy}): claimed at node B {after:?} after node A was killed");
    Ok(after)
}

#[tokio::test]
async fn a_publisher_moving_from_a_dead_node_is_held_not_refused_whatever_the_policy() -> Result<()>
{
    for policy in ["refuse", "standby", "takeover"] {
        failover(policy).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_standby_behind_an_owner_that_dies_is_held_past_the_claim_wait_until_the_grace_ends(
) -> Result<()> {
    let mut c = Cluster::start(
        "publishers-standby-owner-dies",
        &["--duplicate-publisher", "standby", "--claim-wait", "2s"],
    )
    .await?;
    let mut first = Publisher::start(&c.a.rtmp_url("live/d"))?;
    c.a.wait_broadcast("live/d", state_is("claimed")).await?;
    let mut standby = Publisher::start(&c.b.rtmp_url("live/d"))?;
    c.b.wait_broadcast("live/d", state_is("standby")).await?;
    c.a.kill();
    let killed = Instant::now();
    first.kill();
    c.b.wait_broadcast("live/d", |e| {
        e["claim"]["state"] == "standby" && e["claim"]["owner_detached"] == true
    })
    .await?;
    c.b.wait_broadcast("live/d", state_is("claimed")).await?;
    let after = killed.elapsed();
    assert!(standby.alive(), "{}", standby.log_text());
    // Held past its 2 s claim wait, until the owner's 5 s grace ended.
    assert!(after > Duration::from_secs(2), "{after:?}");
    Ok(())
}

#[tokio::test]
async fn a_node_that_cannot_claim_tells_each_encoder_why() -> Result<()> {
    let services = vec![format!("http://127.0.0.1:{}", free_port())];
    let strict =
        IngestNode::start("node-s", &services, &["--on-claim-unavailable", "refuse"]).await?;
    let url = strict.rtmp_url("live/u");
    let mut rtmp2 = gstreamer("rtmp2sink", &url)?;
    rtmp2.wait_exit().await?;
    let said = rtmp2.log_text();
    assert!(said.contains("NetStream.Publish.Denied"), "{said}");
    assert!(said.contains("cannot be claimed now"), "{said}");
    let mut librtmp = gstreamer("rtmpsink", &url)?;
    let status = librtmp.wait_exit().await?;
    assert_eq!(status.code(), Some(1), "{status:?}: {}", librtmp.log_text());
    // A bad name, before any claim is asked for.
    let mut ffmpeg = Publisher::start(&strict.rtmp_url("live/../x"))?;
    assert!(!ffmpeg.wait_exit().await?.success());
    let said = ffmpeg.log_text();
    assert!(
        said.contains(r#"Server error: broadcast name "live/../x" has a ".." segment"#),
        "{said}"
    );
    Ok(())
}
