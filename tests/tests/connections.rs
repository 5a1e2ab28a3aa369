//! Connection hygiene on every listener, tried from outside against the
//! real binaries: connections that say nothing, too many from one address,
//! HTTP headers that never end, RTMP peers that trickle bytes, hoard a
//! declared message, or publish without media; and a huge hello that must
//! not hold up another node's claim.

use std::net::SocketAddr;

use anyhow::{bail, ensure, Result};
use system_tests::rtmp_client::RtmpClient;
use system_tests::v1 as pb;
use system_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// `count` TCP connections to `port` from loopback address `ip`, sending
/// nothing; each reports its index on `closed` once the server closed it.
async fn silent(
    ip: &str,
    port: u16,
    count: usize,
    closed: mpsc::UnboundedSender<usize>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let target: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut readers = Vec::new();
    for i in 0..count {
        let socket = TcpSocket::new_v4()?;
        socket.bind(format!("{ip}:0").parse()?)?;
        let mut stream = socket.connect(target).await?;
        let closed = closed.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            let _ = closed.send(i);
        }));
    }
    Ok(readers)
}

/// Waits for `count` reports on `closed`; their indexes.
async fn closures(closed: &mut mpsc::UnboundedReceiver<usize>, count: usize) -> Result<Vec<usize>> {
    let mut seen = Vec::new();
    while seen.len() < count {
        match tokio::time::timeout(WAIT, closed.recv()).await {
            Ok(Some(i)) => seen.push(i),
            _ => bail!(
                "only {} of {count} connections were closed within {WAIT:?}",
                seen.len()
            ),
        }
    }
    Ok(seen)
}

/// Opens a plain TCP connection, writes `bytes`, and waits for the server
/// to close it (bounded by [`WAIT`]).
async fn closed_after_writing(port: u16, bytes: &[u8]) -> Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(bytes).await?;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Err(_) => bail!("the server kept a connection with unfinished headers for {WAIT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn grpc_connections_over_a_peers_cap_or_silent_are_closed() -> Result<()> {
    let stack = Stack::start(
        "grpc-connections",
        &[
            "--handshake-timeout",
            "3s",
            "--max-connections-per-peer",
            "40",
        ],
    )
    .await?;
    let (tx, mut closed) = mpsc::unbounded_channel();
    let _held = silent("127.0.0.2", stack.svc.port, 50, tx).await?;

    // The ten over the cap are closed at once; the forty stay open until
    // their first-bytes deadline.
    let first = closures(&mut closed, 10).await?;
    ensure!(closed.try_recv().is_err(), "more than ten closed at once");
    assert_eq!(first.len(), 10);

    // Another address is not held up by them.
    let mut node = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    node.created("live/a", "video").await?;
    node.expect_claimed("live/a").await?;
    stack.svc.wait_log("too many connections; refusing").await?;

    // Silent connections do not stay.
    closures(&mut closed, 40).await?;
    assert!(stack.svc.serving().await?);
    Ok(())
}

#[tokio::test]
async fn out_of_file_descriptors_the_accept_loop_waits_instead_of_spinning() -> Result<()> {
    let etcd = Etcd::start().await?;
    let prefix = test_prefix("emfile");
    let svc = ClaimService::start_with_file_limit(
        &etcd.endpoint(),
        &prefix,
        &["--handshake-timeout", "2s"],
        128,
    )
    .await?;
    // More silent connections than the process has descriptors for: those
    // it cannot take wait in the kernel's backlog until the first ones are
    // cut at their deadline.
    let (tx, mut closed) = mpsc::unbounded_channel();
    let _held = silent("127.0.0.2", svc.port, 150, tx).await?;
    svc.wait_log("out of file descriptors; pausing accepts")
        .await?;
    closures(&mut closed, 150).await?;
    // Paused, not spinning: a spinning loop fails thousands of accepts a
    // second; paused ones are at most a hundred (10 ms at least each), and
    // said in a line a second with the count of the rest.
    let log = svc.log_text();
    let lines = log.matches("out of file descriptors").count();
    assert!(lines < 30, "{lines} lines about accept pauses");
    let pauses: u64 = log
        .lines()
        .filter(|l| l.contains("out of file descriptors"))
        .filter_map(|l| l.split("pauses_unlogged=").nth(1))
        .filter_map(|n| n.split_whitespace().next()?.parse::<u64>().ok())
        .sum::<u64>()
        + lines as u64;
    assert!(pauses < 2_000, "{pauses} accept pauses");
    let mut node = Node::attach(&svc.addr(), hello("node-a")).await?;
    node.created("live/after", "video").await?;
    node.expect_claimed("live/after").await?;
    Ok(())
}

#[tokio::test]
async fn http_headers_that_never_end_are_cut_on_both_binaries() -> Result<()> {
    // The default header deadline (10 s), well inside the harness's wait.
    let stack = Stack::start("slow-headers", &[]).await?;
    let node = IngestNode::start("node-a", &[stack.svc.addr()], &[]).await?;
    let unfinished = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n";
    closed_after_writing(stack.svc.metrics_port, unfinished).await?;
    closed_after_writing(node.http_port, unfinished).await?;
    // Both still answer whole requests.
    assert_eq!(
        http_get(stack.svc.metrics_port, "/metrics").await?.status,
        200
    );
    assert_eq!(http_get(node.http_port, "/healthz").await?.status, 200);
    Ok(())
}

/// An ingest node with a short idle timeout (and the default 4 MiB cap on
/// one RTMP message), attached to a fresh stack.
async fn ingest(name: &str) -> Result<(Stack, IngestNode)> {
    let stack = Stack::start(name, &[]).await?;
    let node = IngestNode::start("node-a", &[stack.svc.addr()], &["--idle-timeout", "2s"]).await?;
    Ok((stack, node))
}

async fn rtmp(node: &IngestNode) -> Result<RtmpClient<TcpStream>> {
    let stream = TcpStream::connect(("127.0.0.1", node.rtmp_port)).await?;
    RtmpClient::connect(stream, "live", false).await
}

#[tokio::test]
async fn an_rtmp_peer_that_trickles_bytes_is_closed() -> Result<()> {
    let (_stack, node) = ingest("rtmp-trickle").await?;
    let mut client = rtmp(&node).await?;
    // One byte every half second, well inside the idle timeout per read,
    // but never a whole message (a chunk header that never ends).
    let mut pace = tokio::time::interval(std::time::Duration::from_millis(500));
    let header = [0x04u8, 0, 0, 0, 0, 0, 100, 9, 1, 0, 0, 0];
    let trickle = async {
        for b in header.iter().cycle() {
            pace.tick().await;
            if client.write_raw(&[*b]).await.is_err() {
                return Ok(());
            }
        }
        Ok::<(), anyhow::Error>(())
    };
    tokio::time::timeout(WAIT, trickle)
        .await
        .map_err(|_| anyhow::anyhow!("a trickling peer was kept for {WAIT:?}"))??;
    node.wait_log("no complete RTMP message").await?;
    Ok(())
}

#[tokio::test]
async fn an_rtmp_peer_hoarding_a_declared_message_is_closed() -> Result<()> {
    let (_stack, node) = ingest("rtmp-hoard").await?;
    let pid = node.pid().unwrap();
    let before = rss(pid)?;
    let mut client = rtmp(&node).await?;
    // A video message declared 16 MB - 1 long, sent in 4,096-byte chunks
    // (the client's chunk size): cut once 4 MiB arrived without it ending.
    let mut first = vec![0x04u8, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0];
    first.extend_from_slice(&[0u8; 4096]);
    let mut sent = client.write_raw(&first).await.map(|_| 4096usize);
    let mut chunk = vec![0xc4u8];
    chunk.extend_from_slice(&[0u8; 4096]);
    while let Ok(n) = sent {
        if n > 6 * 1024 * 1024 {
            break;
        }
        sent = client.write_raw(&chunk).await.map(|_| n + 4096);
    }
    client.closed_by_server().await?;
    node.wait_log("towards one RTMP message").await?;
    let grown = rss(pid)?.saturating_sub(before);
    assert!(grown < 32 * 1024 * 1024, "ingest RSS grew {grown} bytes");
    Ok(())
}

#[tokio::test]
async fn a_publish_that_sends_no_media_is_closed_and_its_claim_released() -> Result<()> {
    let (stack, node) = ingest("rtmp-no-media").await?;
    let mut client = rtmp(&node).await?;
    client.publish("nomedia").await?;
    stack
        .eventually_owner("live/nomedia", |o| {
            o.as_ref().is_some_and(|c| c.node_id == "node-a")
        })
        .await?;
    // Metadata keeps messages coming, but no media ever does.
    let mut pace = tokio::time::interval(std::time::Duration::from_millis(500));
    let keep_talking = async {
        loop {
            pace.tick().await;
            if client.metadata().await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, keep_talking)
        .await
        .map_err(|_| anyhow::anyhow!("a publish without media was kept for {WAIT:?}"))?;
    stack
        .eventually_owner("live/nomedia", Option::is_none)
        .await?;
    node.wait_log("no media").await?;
    Ok(())
}

#[tokio::test]
async fn a_hello_of_ten_thousand_tracks_does_not_hold_up_another_nodes_claim() -> Result<()> {
    let stack = Stack::start("fair-hello", &[]).await?;
    let mut big = hello("node-big");
    big.live = (0..10_000)
        .map(|i| track(&format!("big/{i:05}"), "video"))
        .collect();
    let mut a = Node::attach(&stack.svc.addr(), big).await?;
    // The whole hello is queued once its first claim is answered.
    let first = a.expect_claimed("big/00000").await?.claim.unwrap();
    let mut b = Node::attach(&stack.svc.addr(), hello("node-small")).await?;
    b.created("small/one", "video").await?;
    let small = b.expect_claimed("small/one").await?.claim.unwrap();
    let mut big_tokens = vec![first.fencing_token];
    for _ in 1..10_000 {
        let claimed = a
            .expect("claimed", |m| match m {
                pb::service_message::Msg::Claimed(c) => c.claim.clone(),
                _ => None,
            })
            .await?;
        big_tokens.push(claimed.fencing_token);
    }
    big_tokens.sort_unstable();
    // Fencing tokens are etcd revisions: the small node's claim was made
    // early in the big hello (in one shared line it came after nearly all
    // of it), not merely before its last batch.
    let median = big_tokens[big_tokens.len() / 2];
    assert!(
        small.fencing_token < median,
        "small claim at revision {} came after half the hello (median {median}, last {})",
        small.fencing_token,
        big_tokens[big_tokens.len() - 1]
    );
    Ok(())
}
