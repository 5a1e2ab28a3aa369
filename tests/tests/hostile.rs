//! Hostile and careless clients against a real claim-service on a real
//! etcd: each attack runs beside a victim claim and ordinary claim traffic
//! of other nodes, which must go on unharmed.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use system_tests::hostile::StalledWatches;
use system_tests::v1 as pb;
use system_tests::*;

use pb::claim_event::Kind;
use pb::node_message::Msg as NodeMsg;
use pb::service_message::Msg;
use system_tests::checker::Checker;

const MIB: u64 = 1024 * 1024;

/// `cycles` claim/release cycles of `node` (named `name`) over a few
/// broadcasts, each answered (the harness bounds every wait), and what it
/// was told recorded for the fault suite's checker.
/// `cycles` claims and releases by `node` (called `name`) of eight
/// broadcasts named `{stem}{0..8}`.
async fn churn(
    node: &mut Node,
    name: &str,
    stem: &str,
    cycles: usize,
    checker: &mut Checker,
) -> Result<()> {
    for i in 0..cycles {
        let broadcast = format!("{stem}{}", i % 8);
        node.created(&broadcast, "video").await?;
        let claimed = node.expect_claimed(&broadcast).await?;
        checker.node_saw(name, &Msg::Claimed(claimed));
        node.closed(&broadcast, "video").await?;
        node.expect_released(&broadcast).await?;
        checker.node_saw(name, &Msg::Released(pb::Released { broadcast }));
    }
    Ok(())
}

/// Reads `watcher` until `marker` is claimed (once, after everything else),
/// into the checker's history, then asserts the checker's invariants
/// (tokens never go back, no two holders at once).
async fn checker_holds(watcher: &mut Watcher, marker: &str, mut checker: Checker) -> Result<()> {
    loop {
        let event = watcher.next().await?;
        let done = event.kind == Kind::Claimed as i32
            && event.claim.as_ref().is_some_and(|c| c.broadcast == marker);
        checker.watched.push(event);
        if done {
            break;
        }
    }
    let anomalies = checker.check();
    anyhow::ensure!(anomalies.is_empty(), "checker: {anomalies:?}");
    Ok(())
}

/// A victim node holding `live/victim`, and its fencing token.
async fn victim(svc: &ClaimService) -> Result<(Node, i64)> {
    let mut node = Node::attach(&svc.addr(), hello("node-victim")).await?;
    node.created("live/victim", "video").await?;
    let claim = node.expect_claimed("live/victim").await?.claim.unwrap();
    Ok((node, claim.fencing_token))
}

/// The victim's claim still stands with its token, read from etcd, and
/// its session said nothing meanwhile (no lost, no end).
async fn victim_unharmed(svc: &ClaimService, node: &mut Node, token: i64) -> Result<()> {
    let owner = svc.owner("live/victim", true).await?;
    match owner {
        Some(c) if c.node_id == "node-victim" && c.fencing_token == token => {}
        other => bail!("the victim's claim changed: {other:?}"),
    }
    if let Some(said) = node.silent_for(Duration::from_millis(100)).await {
        bail!("the victim's session was told {said:?}");
    }
    Ok(())
}

#[tokio::test]
async fn watchers_that_never_read_stall_nobody() -> Result<()> {
    let stack = Stack::start("stalled-watchers", &[]).await?;
    let svc = &stack.svc;
    let pid = svc.pid().unwrap();
    let mut reader = Watcher::open(svc, "", 0).await?;
    let (mut victim_node, token) = victim(svc).await?;
    let mut checker = Checker::default();
    let victim_claim = svc.owner("live/victim", true).await?.unwrap_or_default();
    checker.node_saw(
        "node-victim",
        &Msg::Claimed(pb::Claimed {
            claim: Some(victim_claim),
            adopted: false,
        }),
    );
    let rss_before = rss(pid)?;
    let files_before = open_files(pid)?;

    // 100 watches that never read: 70 from now on, 30 replaying etcd's
    // history from its first revision.
    let addr = format!("127.0.0.1:{}", svc.port);
    let _live = StalledWatches::open(&addr, 70, 0).await?;
    let _replaying = StalledWatches::open(&addr, 30, 1).await?;

    // Well past what stalled the replica when watchers shared its etcd
    // connection (about 250 cycles), and 4,000 changes of long names (about
    // 1.3 MB): more than a stalled replay can hold on the server (HTTP/2's
    // send buffer of 400 KiB, tonic's 32 KiB chunk and its relay's 1,024
    // events, about 780 KB), so each must be ended.
    let mut churner = Node::attach(&svc.addr(), hello("node-churn")).await?;
    let stem = format!("churn/{}", "b".repeat(240));
    churn(&mut churner, "node-churn", &stem, 2000, &mut checker).await?;

    assert!(
        svc.serving().await?,
        "health flipped under stalled watchers"
    );
    victim_unharmed(svc, &mut victim_node, token).await?;
    // A watcher that reads saw the churn to its end, and what everybody
    // saw holds the fault suite's invariants.
    churner.created("churn/end", "video").await?;
    let end = churner.expect_claimed("churn/end").await?;
    checker.node_saw("node-churn", &Msg::Claimed(end));
    checker_holds(&mut reader, "churn/end", checker).await?;
    // The replaying watchers fell behind and were ended, holding nothing.
    // (Their relays may still be taking the churn's last revisions.)
    until(
        Duration::from_millis(100),
        async || {
            let metrics = svc.metrics().await?;
            Ok(metric_value(&metrics, "claims_watches_behind_total").unwrap_or(0.0))
        },
        |behind| *behind >= 30.0,
    )
    .await
    .context("watches ended as behind")?;
    let grown = rss(pid)?.saturating_sub(rss_before);
    assert!(grown < 64 * MIB, "RSS grew by {} MiB", grown / MIB);
    let files = open_files(pid)?;
    assert!(
        files < files_before + 20,
        "{files_before} -> {files} open files"
    );
    Ok(())
}

#[tokio::test]
async fn cancelled_watches_leave_nothing_behind() -> Result<()> {
    let stack = Stack::start("cancelled-watches", &[]).await?;
    let svc = &stack.svc;
    let pid = svc.pid().unwrap();
    let (mut victim_node, token) = victim(svc).await?;
    let etcd_watchers = || async {
        let answer = http_get(stack.etcd.client_port, "/metrics").await?;
        metric_value(&answer.body, "etcd_debugging_mvcc_watcher_total")
            .ok_or_else(|| anyhow::anyhow!("etcd has no watcher gauge"))
    };
    let etcd_before = etcd_watchers().await?;
    let rss_before = rss(pid)?;

    // 2,000 watches of a prefix nothing matches, each cancelled once its
    // headers arrived: 1,500 from now on, 500 replaying etcd's history.
    let mut client = svc.ownership().await?;
    for i in 0..2_000 {
        let watch = client
            .watch_claims(pb::WatchClaimsRequest {
                prefix: "nomatch/".into(),
                start_revision: if i % 4 == 0 { 1 } else { 0 },
            })
            .await?;
        drop(watch);
    }
    let open = until(
        Duration::from_millis(50),
        async || Ok(metric_value(&svc.metrics().await?, "claims_watches_open")),
        |open| *open == Some(0.0),
    )
    .await?;
    assert_eq!(open, Some(0.0));
    until(
        Duration::from_millis(50),
        async || etcd_watchers().await,
        |n| *n <= etcd_before,
    )
    .await?;
    let grown = rss(pid)?.saturating_sub(rss_before);
    assert!(grown < 32 * MIB, "RSS grew by {} MiB", grown / MIB);

    // One change every cancelled watch would have matched: nobody is
    // unseated, nothing is lost.
    let mut other = Node::attach(&svc.addr(), hello("node-other")).await?;
    other.created("nomatch/x", "video").await?;
    other.expect_claimed("nomatch/x").await?;
    victim_unharmed(svc, &mut victim_node, token).await?;
    assert!(
        !svc.log_text().contains("newer session"),
        "a session was superseded"
    );
    Ok(())
}

#[tokio::test]
async fn a_node_record_gone_bad_behind_the_service_does_not_unseat_its_session() -> Result<()> {
    let stack = Stack::start("record-gone-bad", &SHORT_LEASE).await?;
    let svc = &stack.svc;
    let (mut node, token) = victim(svc).await?;
    let key = format!("{}nodes/node-victim", stack.prefix);
    let record = stack.etcd.etcdctl(&["get", &key, "-w", "json"])?;
    let lease: serde_json::Value = serde_json::from_str(&record)?;
    let lease = lease["kvs"][0]["lease"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no lease in {record}"))?;
    // The record is replaced by something that is not a record (on no
    // lease), then its lease is revoked: no newer session exists. The
    // node's claims were on that lease: lost, and claimed again.
    stack.etcd.etcdctl(&["put", &key, "not a record"])?;
    stack
        .etcd
        .etcdctl(&["lease", "revoke", &format!("{lease:x}")])?;

    // The session writes its record again and goes on claiming.
    let written = until(
        Duration::from_millis(50),
        async || stack.etcd.etcdctl(&["get", &key, "--print-value-only"]),
        |v| v.contains(&node.welcome.session_id),
    )
    .await?;
    assert!(written.contains("node-victim") || written.contains(&node.welcome.session_id));
    node.expect_lost("live/victim").await?;
    let again = node.expect_claimed("live/victim").await?.claim.unwrap();
    assert!(again.fencing_token > token, "{again:?}");
    node.created("live/after", "video").await?;
    node.expect_claimed("live/after").await?;
    victim_unharmed(svc, &mut node, again.fencing_token).await?;
    assert!(!svc.log_text().contains("superseded"), "{}", svc.log_text());
    Ok(())
}

#[tokio::test]
async fn hostile_input_is_answered_and_logged_short_and_escaped() -> Result<()> {
    let stack = Stack::start("hostile-input", &[]).await?;
    let svc = &stack.svc;
    let (mut victim_node, token) = victim(svc).await?;

    // A 7 MB node id is refused with a short status, not an echo of it.
    let mut huge = hello("x");
    huge.node_id = "\u{1}".repeat(7 * 1024 * 1024);
    let status = match Node::open(&svc.addr(), NodeMsg::Hello(huge)).await {
        Ok(_) => bail!("a 7 MB node id was let in"),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().len() < 512,
        "{} bytes",
        status.message().len()
    );
    assert!(!status.message().contains('\u{1}'));

    // 40 created with 1 MB bad track names, and names that try to forge
    // log lines: each refused, none written at length or raw.
    let log_before = svc.log_text().len();
    let mut node = Node::attach(&svc.addr(), hello("node-hostile")).await?;
    for _ in 0..40 {
        node.created("live/x", &"\u{1b}".repeat(1024 * 1024))
            .await?;
    }
    node.created("live/a\nFORGED claimed broadcast=live/victim", "video")
        .await?;
    node.created("live/b\r\nFORGED", "video").await?;
    for _ in 0..42 {
        let rejected = node
            .expect("rejected", |m| match m {
                pb::service_message::Msg::Rejected(r) => Some(r.clone()),
                _ => None,
            })
            .await?;
        assert!(rejected.track.len() <= 64 && rejected.broadcast.len() <= 256);
    }
    // A burst of refusals is logged as a few lines and a count.
    for i in 0..3_000 {
        node.created(&format!("bad name {i}"), "video").await?;
    }
    node.created("live/good", "video").await?;
    node.expect_claimed("live/good").await?;
    let log = svc.log_text();
    let written = &log[log_before..];
    assert!(written.len() < 256 * 1024, "{} bytes of log", written.len());
    assert!(
        !written.lines().any(|l| l.starts_with("FORGED")),
        "a name forged a log line"
    );
    assert!(!written.contains('\u{1b}'), "a raw ESC reached the log");
    let refusal_lines = written.matches("refused a message").count();
    assert!(refusal_lines < 100, "{refusal_lines} refusal lines");
    assert!(
        written.contains("unlogged"),
        "no count of unlogged refusals"
    );
    victim_unharmed(svc, &mut victim_node, token).await?;
    Ok(())
}

#[tokio::test]
async fn clients_are_told_etcd_trouble_in_the_contracts_words() -> Result<()> {
    let mut stack = Stack::start("etcd-words", &[]).await?;
    stack.etcd.kill();
    let mut client = stack.svc.ownership().await?;
    let status = client
        .get_owner(pb::GetOwnerRequest {
            broadcast: "live/any".into(),
            consistent: true,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let message = status.message();
    assert!(message.contains("etcd"), "{message}");
    for internal in ["tonic", "transport", "h2", "source:", "hyper"] {
        assert!(!message.contains(internal), "{internal} in {message:?}");
    }
    stack.etcd.restart().await?;
    stack.svc.wait_serving(true).await?;
    Ok(())
}
