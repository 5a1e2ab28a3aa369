//! Every limit answers RESOURCE_EXHAUSTED with a message naming it, changes
//! nothing it should not, and leaves the other sessions working.

use std::time::{Duration, Instant};

use anyhow::Result;
use system_tests::v1 as pb;
use system_tests::*;
use tonic::Code;

use pb::node_message::Msg as NodeMsg;
use pb::service_message::Msg as ServiceMsg;

const LIMITS: [&str; 10] = [
    "--max-sessions",
    "4",
    "--max-claims-per-node",
    "3",
    "--max-tracks-per-broadcast",
    "2",
    "--max-events-per-second",
    "50",
    "--max-message-size",
    "65536",
];

/// Waits for a `rejected` about `broadcast` and returns it.
async fn expect_rejected(node: &mut Node, broadcast: &str) -> Result<pb::Rejected> {
    node.expect(&format!("rejected {broadcast}"), |m| match m {
        ServiceMsg::Rejected(r) if r.broadcast == broadcast => Some(r.clone()),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn each_limit_is_resource_exhausted_and_others_keep_working() -> Result<()> {
    let stack = Stack::start("limits", &LIMITS).await?;
    let addr = stack.svc.addr();
    let mut a = Node::attach(&addr, hello("node-a")).await?;
    let mut b = Node::attach(&addr, hello("node-b")).await?;

    // Claims per node: the fourth broadcast is refused, the three stay.
    for i in 1..=3 {
        b.created(&format!("live/b{i}"), "video").await?;
        b.expect_claimed(&format!("live/b{i}")).await?;
    }
    b.created("live/b4", "video").await?;
    let r = expect_rejected(&mut b, "live/b4").await?;
    assert_eq!(r.code, Code::ResourceExhausted as i32);
    assert!(r.reason.contains("max-claims-per-node (3)"), "{}", r.reason);
    assert!(stack.owner("live/b4", true).await?.is_none());

    // Tracks per broadcast: the third track is refused, the claim stays.
    b.created("live/b1", "audio").await?;
    b.created("live/b1", "data").await?;
    let r = expect_rejected(&mut b, "live/b1").await?;
    assert_eq!(
        (r.track.as_str(), r.code),
        ("data", Code::ResourceExhausted as i32)
    );
    assert!(
        r.reason.contains("max-tracks-per-broadcast (2)"),
        "{}",
        r.reason
    );
    let b1 = stack.owner("live/b1", true).await?.expect("still owned");
    assert_eq!(b1.node_id, "node-b");

    // Message size: a hello of ~125 KB is refused, nothing of it claimed.
    let mut big = hello("node-big");
    for i in 0..5_000 {
        big.live.push(track(&format!("live/big/{i:05}"), "video"));
    }
    let err = Node::open(&addr, NodeMsg::Hello(big))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max-message-size (65536 bytes)"),
        "{err:?}"
    );
    assert!(stack.owner("live/big/00000", true).await?.is_none());

    // Event rate: node-c floods created/closed pairs; creates over the
    // rate are refused, while node-a claims at the same time.
    let mut c = Node::attach(&addr, hello("node-c")).await?;
    let flood = async {
        for _ in 0..300 {
            c.created("live/c", "video").await?;
            c.closed("live/c", "video").await?;
        }
        anyhow::Ok(())
    };
    let started = Instant::now();
    let (flooded, claimed) = tokio::join!(flood, async {
        a.created("live/a-during-flood", "video").await?;
        a.expect_claimed("live/a-during-flood").await
    });
    flooded?;
    claimed?;
    println!(
        "node-a claimed during the flood after {:?}",
        started.elapsed()
    );
    let r = expect_rejected(&mut c, "live/c").await?;
    assert_eq!(r.code, Code::ResourceExhausted as i32);
    assert!(
        r.reason.contains("max-events-per-second (50)"),
        "{}",
        r.reason
    );
    // Closes were all honoured: node-c ends up holding nothing.
    stack.eventually_owner("live/c", |o| o.is_none()).await?;

    // Sessions: a, b, c and d fill the replica; e is refused; a node that
    // is already attached may re-attach (it replaces its own session).
    let _d = Node::attach(&addr, hello("node-d")).await?;
    let err = Node::open(&addr, NodeMsg::Hello(hello("node-e")))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max-sessions (4)"), "{err:?}");
    let mut a2 = Node::attach(&addr, hello("node-a")).await?;
    let ended = a.expect_status().await?;
    assert_eq!(ended.code(), Code::Aborted, "{ended:?}");
    a2.created("live/a2", "video").await?;
    a2.expect_claimed("live/a2").await?;

    // None of it touched node-b's claims.
    for i in 1..=3 {
        let o = stack
            .owner(&format!("live/b{i}"), true)
            .await?
            .expect("owned");
        assert_eq!(o.node_id, "node-b");
    }
    assert_eq!(b.silent_for(Duration::from_millis(300)).await, None);
    let metrics = stack.svc.metrics().await?;
    assert!(
        metrics.contains("code=\"resource_exhausted\"}"),
        "{metrics}"
    );
    Ok(())
}
