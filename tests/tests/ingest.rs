//! The ingest node as publishers and viewers meet it: real etcd, real
//! claim-service, real ingest nodes, a real ffmpeg publishing and decoding.

use std::time::{Duration, Instant};

use anyhow::Result;
use system_tests::v1 as pb;
use system_tests::*;

use pb::claim_event::Kind;

/// etcd, one claim-service, and ingest nodes `node-a` and `node-b`.
struct Cluster {
    stack: Stack,
    a: IngestNode,
    b: IngestNode,
}

impl Cluster {
    async fn start(name: &str) -> Result<Self> {
        let stack = Stack::start(name, &[]).await?;
        let services = vec![stack.svc.addr()];
        let a = IngestNode::start("node-a", &services, &[]).await?;
        let b = IngestNode::start("node-b", &services, &[]).await?;
        for node in [&a, &b] {
            node.wait_attached().await?;
        }
        Ok(Self { stack, a, b })
    }
}

fn claimed(entry: &serde_json::Value) -> bool {
    entry["claim"]["state"] == "claimed" && entry["fencing_token"].as_i64().is_some()
}

#[tokio::test]
async fn publish_claims_plays_redirects_and_refuses_a_second_publisher() -> Result<()> {
    let c = Cluster::start("ingest-main").await?;
    let mut publisher = Publisher::start(&c.a.rtmp_url("live/x"))?;
    let entry = c.a.wait_broadcast("live/x", claimed).await?;
    let token = entry["fencing_token"].as_i64().unwrap();
    let owner = c.stack.owner("live/x", true).await?.expect("owned");
    assert_eq!(owner.node_id, "node-a");
    assert_eq!(owner.fencing_token, token);
    let entry =
        c.a.wait_broadcast("live/x", |e| {
            e["tracks"].as_array().is_some_and(|t| t.len() == 2)
        })
        .await?;
    assert_eq!(entry["tracks"], serde_json::json!(["audio", "video"]));

    // Played from the owner: video and audio decode.
    assert_eq!(
        probe(&c.a.flv_url("live/x")).await?,
        vec!["aac,audio", "h264,video"]
    );
    assert!(decode(&c.a.flv_url("live/x"), 2).await? > 10);

    // From the other node: 302 to the owner, same path and query, marked
    // as redirected once.
    let answer = http_get(c.b.http_port, "/live/x.flv?token=abc&x=1").await?;
    assert_eq!(answer.status, 302, "{answer:?}");
    assert_eq!(
        answer.header("location"),
        Some(format!("{}?token=abc&x=1&claims_hop=1", c.a.flv_url("live/x")).as_str())
    );
    // Redirects at a non-owner cost etcd nothing: answered from node B's
    // watch-fed owner cache, no GetOwner asked of the claim service.
    let get_owner = async || -> Result<f64> {
        let text = c.stack.svc.metrics().await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("claims_rpc_requests_total") && l.contains("GetOwner"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    };
    let cached = "ingest_owner_lookups_total{source=\"cache\"}";
    // The cache has the claim once a redirect is answered from it.
    until(
        Duration::from_millis(20),
        async || {
            http_get(c.b.http_port, "/live/x.flv").await?;
            Ok(c.b.metric(cached).await.unwrap_or(0.0))
        },
        |n| *n > 0.0,
    )
    .await?;
    let (asked, from_cache) = (get_owner().await?, c.b.metric(cached).await?);
    for _ in 0..50 {
        let answer = http_get(c.b.http_port, "/live/x.flv").await?;
        assert_eq!(answer.status, 302, "{answer:?}");
    }
    assert_eq!(get_owner().await?, asked, "GetOwner asked for a redirect");
    assert_eq!(c.b.metric(cached).await?, from_cache + 50.0);
    // A request already redirected once is looked up linearizably at a
    // node that does not own the broadcast (two stale caches can never
    // send a viewer back and forth), and not marked again.
    let again = http_get(c.b.http_port, "/live/x.flv?claims_hop=1").await?;
    assert_eq!(
        again.header("location"),
        Some(format!("{}?claims_hop=1", c.a.flv_url("live/x")).as_str())
    );
    assert_eq!(get_owner().await?, asked + 1.0);
    // A client that follows it decodes.
    assert_eq!(
        probe(&format!("{}?via=b", c.b.flv_url("live/x"))).await?,
        vec!["aac,audio", "h264,video"]
    );
    // Nobody owns it: 404, from either node.
    assert_eq!(
        http_get(c.b.http_port, "/live/nobody.flv").await?.status,
        404
    );
    assert_eq!(
        http_get(c.a.http_port, "/live/nobody.flv").await?.status,
        404
    );
    assert_eq!(http_get(c.a.http_port, "/live//bad.flv").await?.status, 400);

    // A second publisher of the same name on node B is refused, told who owns it.
    let mut second = Publisher::start(&c.b.rtmp_url("live/x"))?;
    let status = second.wait_exit().await?;
    assert!(!status.success());
    let said = second.log_text();
    assert!(said.contains("owned by node node-a"), "{said}");
    assert!(said.contains(&c.a.rtmp_url("live/x")), "{said}");
    // ... and the owner's stream is undisturbed.
    assert!(publisher.alive(), "{}", publisher.log_text());
    let entry = c.a.wait_broadcast("live/x", claimed).await?;
    assert_eq!(entry["fencing_token"].as_i64(), Some(token));
    assert!(decode(&c.a.flv_url("live/x"), 1).await? > 5);
    assert!(c.b.metric("ingest_redirects_total").await? >= 2.0);
    Ok(())
}

#[tokio::test]
async fn stopping_the_publisher_releases_at_once_and_republishing_claims_again() -> Result<()> {
    let c = Cluster::start("ingest-release").await?;
    let mut watcher = Watcher::open(&c.stack.svc, "live/", 0).await?;
    let mut publisher = Publisher::start(&c.a.rtmp_url("live/r"))?;
    let first = c.a.wait_broadcast("live/r", claimed).await?;
    watcher.expect(Kind::Claimed, "live/r").await?;

    let stopped = Instant::now();
    publisher.kill();
    watcher.expect(Kind::Released, "live/r").await?;
    // Released by revoke, not by the lease running out (TTL 10 s).
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(5), "release took {took:?}");
    assert_eq!(c.stack.owner("live/r", true).await?, None);

    // Publish, stop, publish again at once: it ends claimed.
    let mut again = Publisher::start(&c.a.rtmp_url("live/r"))?;
    c.a.wait_broadcast("live/r", claimed).await?;
    again.kill();
    let mut third = Publisher::start(&c.a.rtmp_url("live/r"))?;
    let entry = c.a.wait_broadcast("live/r", claimed).await?;
    assert!(entry["fencing_token"].as_i64() > first["fencing_token"].as_i64());
    let owner = c
        .stack
        .eventually_owner("live/r", |o| {
            o.as_ref()
                .is_some_and(|o| Some(o.fencing_token) == entry["fencing_token"].as_i64())
        })
        .await?
        .unwrap();
    assert_eq!(owner.node_id, "node-a");
    assert!(third.alive(), "{}", third.log_text());
    Ok(())
}

#[tokio::test]
async fn a_publisher_keeps_ingesting_when_the_claim_service_dies_and_is_claimed_again() -> Result<()>
{
    let etcd = Etcd::start().await?;
    let prefix = test_prefix("ingest-failover");
    let mut first = ClaimService::start(&etcd.endpoint(), &prefix, &[]).await?;
    let second_port = free_port();
    let services = vec![first.addr(), format!("http://127.0.0.1:{second_port}")];
    let a = IngestNode::start("node-a", &services, &[]).await?;
    a.wait_attached().await?;
    let mut publisher = Publisher::start(&a.rtmp_url("live/f"))?;
    let entry = a.wait_broadcast("live/f", claimed).await?;
    let token = entry["fencing_token"].as_i64().unwrap();

    first.kill();
    a.wait_broadcast("live/f", |e| e["claim"]["state"] == "unknown")
        .await?;
    // Still ingesting, still playable.
    let bytes_before = a.metric("ingest_bytes_in_total").await?;
    assert!(decode(&a.flv_url("live/f"), 1).await? > 5);
    assert!(a.metric("ingest_bytes_in_total").await? > bytes_before);
    assert!(publisher.alive(), "{}", publisher.log_text());

    // A claim service is back (at the other configured address): the node
    // re-attaches and takes its broadcast back, keeping the fencing token.
    let svc = ClaimService::start_at(second_port, &etcd.endpoint(), &prefix, &[]).await?;
    let entry = a.wait_broadcast("live/f", claimed).await?;
    assert_eq!(entry["fencing_token"].as_i64(), Some(token));
    assert_eq!(entry["claim"]["adopted"], true);
    let owner = svc.owner("live/f", true).await?.expect("owned");
    assert_eq!(owner.node_id, "node-a");
    Ok(())
}

#[tokio::test]
async fn malformed_rtmp_does_not_disturb_the_node_or_other_publishers() -> Result<()> {
    use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let c = Cluster::start("ingest-malformed").await?;
    let publisher = Publisher::start(&c.a.rtmp_url("live/good"))?;
    c.a.wait_broadcast("live/good", claimed).await?;
    let frames_before = decode(&c.a.flv_url("live/good"), 1).await?;
    assert!(frames_before > 5);

    let port = c.a.rtmp_port;
    // Garbage instead of a handshake.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(&[0x42; 5000]).await?;
    drop(s);
    // A truncated handshake: C0 and half of C1, then silence, then close.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(&[3]).await?;
    s.write_all(&[0u8; 700]).await?;
    nothing_happens_for(
        Duration::from_millis(200),
        "the half handshake stays silent",
    )
    .await;
    drop(s);
    // A real handshake, then chunk-size abuse and a message that claims to
    // be 16 MiB long, then junk.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut hs = Handshake::new(PeerType::Client);
    s.write_all(
        &hs.generate_outbound_p0_and_p1()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
    )
    .await?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "server closed during the handshake");
        match hs
            .process_bytes(&buf[..n])
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
        {
            HandshakeProcessResult::InProgress { response_bytes } => {
                s.write_all(&response_bytes).await?
            }
            HandshakeProcessResult::Completed { response_bytes, .. } => {
                s.write_all(&response_bytes).await?;
                break;
            }
        }
    }
    // Set Chunk Size to 0x7fffffff on chunk stream 2.
    s.write_all(&[
        0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff,
    ])
    .await?;
    // An audio message header claiming 0xffffff bytes, then some junk.
    s.write_all(&[0x04, 0, 0, 0, 0xff, 0xff, 0xff, 8, 1, 0, 0, 0])
        .await?;
    let _ = s.write_all(&[0x55; 64 * 1024]).await;
    // Set Chunk Size 0 (illegal).
    let mut z = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut hs = Handshake::new(PeerType::Client);
    z.write_all(
        &hs.generate_outbound_p0_and_p1()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
    )
    .await?;
    drop(z);
    drop(s);

    // Every hostile connection is closed, the node is alive and the good
    // publisher's stream plays on.
    until(
        Duration::from_millis(50),
        async || c.a.metric("ingest_rtmp_connections").await,
        |open| *open == 1.0,
    )
    .await?;
    let mut a = c.a;
    assert!(a.alive(), "{}", a.log_text());
    assert_eq!(a.healthz().await?["status"], "ok");
    assert!(decode(&a.flv_url("live/good"), 1).await? > 5);
    a.wait_broadcast("live/good", claimed).await?;
    drop(publisher);
    Ok(())
}

#[tokio::test]
async fn a_node_shutting_down_says_goodbye_and_its_claims_go_at_once() -> Result<()> {
    let mut c = Cluster::start("ingest-goodbye").await?;
    let mut watcher = Watcher::open(&c.stack.svc, "live/", 0).await?;
    let _publisher = Publisher::start(&c.a.rtmp_url("live/g"))?;
    c.a.wait_broadcast("live/g", claimed).await?;
    watcher.expect(Kind::Claimed, "live/g").await?;
    let status = c.a.terminate().await?;
    assert!(status.success(), "{status}");
    watcher.expect(Kind::Released, "live/g").await?;
    // Now node B may take the name.
    let _b = Publisher::start(&c.b.rtmp_url("live/g"))?;
    c.b.wait_broadcast("live/g", claimed).await?;
    Ok(())
}

#[tokio::test]
async fn without_a_claim_service_the_policy_decides() -> Result<()> {
    let etcd = Etcd::start().await?;
    let prefix = test_prefix("ingest-policy");
    let port = free_port();
    let services = vec![format!("http://127.0.0.1:{port}")];
    let strict =
        IngestNode::start("node-s", &services, &["--on-claim-unavailable", "refuse"]).await?;
    let lenient = IngestNode::start("node-l", &services, &[]).await?;

    // refuse: the publisher is turned away, told why.
    let mut refused = Publisher::start(&strict.rtmp_url("live/p"))?;
    assert!(!refused.wait_exit().await?.success());
    let said = refused.log_text();
    assert!(said.contains("cannot be claimed now"), "{said}");

    // allow (the default): accepted, unclaimed, playable ...
    let _publisher = Publisher::start(&lenient.rtmp_url("live/p"))?;
    lenient
        .wait_broadcast("live/p", |e| {
            e["claim"]["state"] == "unknown" && e["tracks"].as_array().is_some_and(|t| t.len() == 2)
        })
        .await?;
    assert!(decode(&lenient.flv_url("live/p"), 1).await? > 5);
    // ... and claimed as soon as a claim service is back.
    let svc = ClaimService::start_at(port, &etcd.endpoint(), &prefix, &[]).await?;
    let entry = lenient.wait_broadcast("live/p", claimed).await?;
    let owner = svc.owner("live/p", true).await?.expect("owned");
    assert_eq!(owner.node_id, "node-l");
    assert_eq!(Some(owner.fencing_token), entry["fencing_token"].as_i64());
    Ok(())
}

#[tokio::test]
async fn a_stale_claim_never_redirects_a_node_to_itself() -> Result<()> {
    let c = Cluster::start("ingest-stale").await?;
    // A claim naming node A for a broadcast A does not have (as left by a
    // crash), written behind everyone's back.
    let value = serde_json::json!({
        "node_id": "node-a",
        "endpoints": {"http": format!("http://127.0.0.1:{}", c.a.http_port)},
    });
    c.stack.etcd.etcdctl(&[
        "put",
        &format!("{}broadcasts/live/stale", c.stack.prefix),
        &value.to_string(),
    ])?;
    let at_a = http_get(c.a.http_port, "/live/stale.flv").await?;
    assert_eq!(at_a.status, 404, "{at_a:?}");
    let at_b = http_get(c.b.http_port, "/live/stale.flv").await?;
    assert_eq!(at_b.status, 302);
    assert_eq!(
        at_b.header("location"),
        Some(format!("{}?claims_hop=1", c.a.flv_url("live/stale")).as_str())
    );
    Ok(())
}
