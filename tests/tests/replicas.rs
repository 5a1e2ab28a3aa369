//! Day two of the replicas, for real: node sessions spread back over a
//! replica that returns, a replica drained by an operator and one stopped
//! by SIGTERM, and a replica that finds a layout it does not know. Real
//! etcd, real replicas, real ingest nodes; their claims are made through
//! the nginx-rtmp hooks (`on_publish`), which need no media.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use system_tests::fleet::{released, Build, Fleet};
use system_tests::v1 as pb;
use system_tests::*;

/// `--spread-slack`'s default.
const SLACK: usize = 2;

async fn fleet(name: &str, nodes: usize, min_age: &str) -> Result<Fleet> {
    let new = [Build::New, Build::New, Build::New];
    let mut fleet = Fleet::start(name, &new, &["--spread-min-age", min_age]).await?;
    for i in 0..nodes {
        fleet
            .add_node(&format!("node-{i:02}"), Build::New, i % 3)
            .await?;
    }
    Ok(fleet)
}

fn spread(loads: &BTreeMap<String, usize>, replicas: usize, sessions: usize) -> bool {
    let max = loads.values().copied().max().unwrap_or(0);
    let min = loads.values().copied().min().unwrap_or(0);
    loads.len() == replicas && loads.values().sum::<usize>() == sessions && max - min <= SLACK
}

/// Publish and end `live/probe-{k}` through the probe node's hook `n`
/// times: the time each publish took to be answered (its claim made).
fn probe_claims(hooks_port: u16, from: usize, n: usize) -> Result<Vec<Duration>> {
    let mut took = Vec::new();
    for k in from..from + n {
        let name = format!("probe-{k}");
        let start = Instant::now();
        let code = nginx_hook_post(hooks_port, &nginx_hook("publish", &name, "1"))?;
        took.push(start.elapsed());
        if code != 200 {
            bail!("probe publish {name} answered {code}");
        }
        nginx_hook_post(hooks_port, &nginx_hook("publish_done", &name, "1"))?;
    }
    took.sort();
    Ok(took)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test]
async fn sessions_spread_back_over_a_replica_that_returns_and_keep_their_claims() -> Result<()> {
    const NODES: usize = 30;
    let mut fleet = fleet("spread", NODES, "10s").await?;
    let tokens = fleet.publish_everywhere().await?;
    let from = fleet.revision().await? + 1;
    let probe_port = {
        fleet.add_node("node-probe", Build::New, 0).await?;
        fleet.nodes.last().map(|(_, p)| *p).unwrap_or_default()
    };
    let sessions = NODES + 1;
    fleet
        .wait_loads(0, WAIT, |l| spread(l, 3, sessions))
        .await
        .context("the fleet never attached evenly")?;

    // Replica 2 dies: its nodes attach to the next replica they know.
    if let Some(mut dead) = fleet.replicas[2].take() {
        dead.kill();
    }
    fleet
        .wait_loads(0, WAIT, |l| {
            l.values().sum::<usize>() == sessions && !l.contains_key("replica-2")
        })
        .await
        .context("the nodes of the dead replica never attached elsewhere")?;
    let quiet = probe_claims(probe_port, 0, 20)?;

    // It returns: the others move sessions to it, a few at a time.
    let returned = Instant::now();
    fleet.replicas[2] = Some(fleet.start_replica(2, Build::New).await?);
    let during = probe_claims(probe_port, 100, 20)?;
    let loads = fleet
        .wait_loads(0, Duration::from_secs(90), |l| spread(l, 3, sessions))
        .await
        .context("the sessions never spread back")?;
    let took = returned.elapsed();

    let events = fleet.changes_since(0, from).await?;
    let released: Vec<String> = released(&events)
        .into_iter()
        .filter(|b| !b.starts_with("live/probe-"))
        .collect();
    assert!(released.is_empty(), "released while moving: {released:?}");
    let now: BTreeMap<String, i64> = fleet
        .tokens(0)
        .await?
        .into_iter()
        .filter(|(b, _)| !b.starts_with("live/probe-"))
        .collect();
    assert_eq!(now, tokens, "a fencing token changed");
    let attaches = fleet.attaches();
    let most = attaches.values().copied().max().unwrap_or(0);
    assert!(
        most <= 3,
        "a node moved more than twice (attached {most} times): {attaches:?}"
    );
    let moved: usize = attaches.values().map(|n| n - 1).sum();
    eprintln!(
        "spread: {loads:?} {took:?} after the replica returned; {moved} moves over {sessions} nodes (at most {} for one); \
         claim through a node: quiet p50 {:?} p99 {:?}, during the moves p50 {:?} p99 {:?}",
        most - 1,
        percentile(&quiet, 0.5),
        percentile(&quiet, 0.99),
        percentile(&during, 0.5),
        percentile(&during, 0.99),
    );
    let metrics = fleet.replica(0).metrics().await?;
    assert!(
        metrics.contains("claims_replica_sessions{replica=\"replica-2\"}"),
        "no sessions-per-replica metric"
    );
    Ok(())
}

#[tokio::test]
async fn a_drained_replica_and_a_stopped_one_move_every_session_and_release_nothing() -> Result<()>
{
    const NODES: usize = 9;
    let mut fleet = fleet("drain", NODES, "30s").await?;
    let tokens = fleet.publish_everywhere().await?;
    let from = fleet.revision().await? + 1;

    // An operator drains replica 0.
    let said = fleet.claimctl(1, &["drain-replica", "replica-0"])?;
    assert!(said.contains("replica replica-0 is draining"), "{said}");
    fleet
        .wait_loads(1, WAIT, |l| {
            !l.contains_key("replica-0") && l.values().sum::<usize>() == NODES
        })
        .await
        .context("replica 0 never drained")?;
    let ready = until(
        Duration::from_millis(100),
        async || fleet.replica(0).readyz().await,
        |r| r.contains("NOT_READY: drained"),
    )
    .await?;
    assert!(
        ready.starts_with("HTTP/1.0 503") || ready.starts_with("HTTP/1.1 503"),
        "{ready}"
    );
    let refused = match Node::open(
        &fleet.url(0),
        pb::node_message::Msg::Hello(hello("node-late")),
    )
    .await
    {
        Ok(_) => bail!("a drained replica took a new session"),
        Err(status) => status,
    };
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("draining"), "{refused:?}");

    // SIGTERM on replica 1: its sessions move to replica 2 before it stops
    // (replica 0, drained, takes none).
    let stopped = fleet.stop(1).await?;
    let log = stopped.log_text();
    assert!(
        log.contains("every session moved to another replica"),
        "{log}"
    );
    // Its record left etcd with it: no replica counts it live afterwards.
    let record = fleet.replica_record(1).await?;
    assert_eq!(record, None);
    let loads = fleet
        .wait_loads(2, WAIT, |l| {
            l.get("replica-2") == Some(&NODES) && l.values().sum::<usize>() == NODES
        })
        .await?;
    let events = fleet.changes_since(2, from).await?;
    assert!(
        released(&events).is_empty(),
        "released while draining: {events:?}"
    );
    assert_eq!(fleet.tokens(2).await?, tokens, "a fencing token changed");
    let attaches = fleet.attaches();
    assert!(attaches.values().all(|n| *n <= 3), "{attaches:?} {loads:?}");
    Ok(())
}

/// A restart clears a replica's draining mark, even while the record its
/// earlier run left (on a lease not yet expired) still says draining: the
/// new run must not take that mark for its own and write it back.
#[tokio::test]
async fn a_replica_restarted_over_its_earlier_draining_record_is_ready_and_not_draining(
) -> Result<()> {
    let mut fleet = Fleet::start("restart-mark", &[Build::New, Build::New], &[]).await?;
    let record = async |fleet: &Fleet| -> Result<serde_json::Value> {
        fleet
            .replica_record(0)
            .await?
            .context("no record of replica-0")
    };
    fleet.claimctl(1, &["drain-replica", "replica-0"])?;
    let marked = until(
        Duration::from_millis(50),
        async || record(&fleet).await,
        |r| r["draining"] == true,
    )
    .await?;
    // Killed: nothing takes its record out; it stays until its lease expires.
    fleet.replicas[0]
        .take()
        .context("replica 0 running")?
        .kill();
    let left = record(&fleet).await?;
    assert_eq!(left["started_at_unix_ms"], marked["started_at_unix_ms"]);
    assert_eq!(left["draining"], true, "{left}");

    let restarted = fleet.start_replica(0, Build::New).await?;
    let ready = restarted.readyz().await?;
    assert!(ready.contains(" 200 "), "{ready}");
    let now = record(&fleet).await?;
    assert_ne!(
        now["started_at_unix_ms"], left["started_at_unix_ms"],
        "{now}"
    );
    assert_eq!(now["draining"], false, "{now}");
    // And it takes sessions: a node that knows it first attaches there.
    fleet.replicas[0] = Some(restarted);
    fleet.add_node("node-00", Build::New, 0).await?;
    let placement = until(
        Duration::from_millis(50),
        async || fleet.placement(1).await,
        |p| p.contains_key("node-00"),
    )
    .await?;
    assert_eq!(
        placement.get("node-00").map(String::as_str),
        Some("replica-0"),
        "{placement:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_replica_that_does_not_know_the_layout_stays_unready_and_writes_nothing() -> Result<()> {
    let etcd = Etcd::start().await?;
    let prefix = test_prefix("layout");
    let mut client = etcd.client().await?;
    client.put(format!("{prefix}layout"), "99", None).await?;
    let port = free_port();
    let svc = ClaimService::spawn_at(
        port,
        &etcd.endpoint(),
        &prefix,
        &["--service-id", "replica-new"],
    )?;
    let ready = until(
        Duration::from_millis(100),
        async || Ok(svc.readyz().await.unwrap_or_default()),
        |r| r.contains("layout version \"99\""),
    )
    .await?;
    assert!(ready.contains("NOT_READY"), "{ready}");
    svc.wait_log("does not know").await?;
    let refused = match Node::open(&svc.addr(), pb::node_message::Msg::Hello(hello("node-a"))).await
    {
        Ok(_) => bail!("a replica that does not know the layout took a session"),
        Err(status) => status,
    };
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let keys: Vec<String> = client
        .get(
            prefix.as_str(),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await?
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    assert_eq!(keys, [format!("{prefix}layout")], "it wrote something");

    // An empty cluster gets this build's layout from its first replica.
    let fresh = test_prefix("layout-fresh");
    let first = ClaimService::start(&etcd.endpoint(), &fresh, &[]).await?;
    let written = until(
        Duration::from_millis(50),
        async || {
            let resp = client.get(format!("{fresh}layout"), None).await?;
            Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
        },
        |v| v.is_some(),
    )
    .await?;
    assert_eq!(written.as_deref(), Some(&b"2"[..]));
    drop(first);
    Ok(())
}
