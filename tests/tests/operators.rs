//! What operators use: claimctl (tables, JSON, exit codes), the Admin RPCs
//! behind their token, and the container health-check subcommands.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use system_tests::v1 as pb;
use system_tests::*;

const TOKEN: &str = "test-admin-token-0123456789";

struct Ctl<'a> {
    svc: &'a ClaimService,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ctl<'_> {
    async fn run(&self, args: &[&str]) -> Result<Out> {
        let mut cmd = Command::new(binary("claimctl"));
        cmd.env_remove("CLAIMCTL_ADMIN_TOKEN")
            .arg("--server")
            .arg(self.svc.addr())
            .args(args);
        let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
        Ok(Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

async fn admin_stack(name: &str) -> Result<(Stack, std::path::PathBuf)> {
    let token_file =
        std::env::temp_dir().join(format!("claims-token-{}-{name}", std::process::id()));
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let stack = Stack::start(name, &["--admin-token-file", &token_file.to_string_lossy()]).await?;
    Ok((stack, token_file))
}

#[tokio::test]
async fn claimctl_reads_with_tables_json_and_exit_codes() -> Result<()> {
    let (stack, _) = admin_stack("ctl-read").await?;
    let ctl = Ctl { svc: &stack.svc };
    let mut a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    a.created("live/cam1", "video").await?;
    let claim = a.expect_claimed("live/cam1").await?.claim.unwrap();
    stack.eventually_owner("live/cam1", |o| o.is_some()).await?;

    let out = ctl.run(&["owner", "live/cam1"]).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("BROADCAST"), "{}", out.stdout);
    assert!(out.stdout.contains("node-a"), "{}", out.stdout);

    let out = ctl
        .run(&["--json", "owner", "live/cam1", "--consistent"])
        .await?;
    assert_eq!(out.code, 0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
    // proto3's JSON mapping: 64-bit integers are strings, so that a
    // JavaScript reader loses nothing (etcd's lease ids pass 2^53).
    assert_eq!(v["fencing_token"], claim.fencing_token.to_string());
    assert_eq!(v["lease_id"], claim.lease_id.to_string());
    assert_eq!(v["node_id"], "node-a");

    let out = ctl.run(&["owner", "live/nobody"]).await?;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("no owner"), "{}", out.stderr);
    let out = ctl.run(&["owner", "bad//name"]).await?;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("empty segment"), "{}", out.stderr);

    let out = ctl
        .run(&["--json", "list", "--node", "node-a", "--prefix", "live/"])
        .await?;
    let list: serde_json::Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let out = ctl.run(&["nodes"]).await?;
    assert!(
        out.stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("node-a")),
        "{}",
        out.stdout
    );

    // watch --from replays, one JSON object per line.
    let mut cmd = tokio::process::Command::new(binary("claimctl"));
    cmd.args([
        "--server",
        &stack.svc.addr(),
        "--json",
        "watch",
        "--from",
        "1",
    ])
    .stdout(std::process::Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().expect("piped");
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await??
        .expect("a line");
    let event: serde_json::Value = serde_json::from_str(&first)?;
    assert_eq!(event["kind"], "CLAIMED");
    assert_eq!(event["claim"]["broadcast"], "live/cam1");
    assert!(
        event["seen_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{event}"
    );

    // Unreachable service: exit 5.
    let mut cmd = Command::new(binary("claimctl"));
    cmd.args([
        "--server",
        &format!("http://127.0.0.1:{}", free_port()),
        "nodes",
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    assert_eq!(out.status.code(), Some(5));
    Ok(())
}

#[tokio::test]
async fn force_release_tells_the_owner_why_and_needs_the_token() -> Result<()> {
    let (stack, token_file) = admin_stack("ctl-release").await?;
    let ctl = Ctl { svc: &stack.svc };
    let mut a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    a.created("live/x", "video").await?;
    let claim = a.expect_claimed("live/x").await?.claim.unwrap();

    // No token, a wrong token: refused, nothing changed.
    let out = ctl.run(&["release", "live/x", "--reason", "stuck"]).await?;
    assert_eq!(out.code, 4, "{}", out.stderr);
    let out = ctl
        .run(&[
            "--admin-token",
            "wrong-token-wrong-token",
            "release",
            "live/x",
            "--reason",
            "stuck",
        ])
        .await?;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("wrong admin credential"),
        "{}",
        out.stderr
    );
    let owner = stack.owner("live/x", true).await?.expect("still owned");
    assert_eq!(owner.lease_id, claim.lease_id);

    let out = ctl
        .run(&[
            "--admin-token-file",
            &token_file.to_string_lossy(),
            "release",
            "live/x",
            "--reason",
            "encoder stuck",
        ])
        .await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("released live/x"), "{}", out.stdout);
    let reason = a.expect_lost("live/x").await?;
    assert!(
        reason.contains("force-released by an operator: encoder stuck"),
        "{reason}"
    );
    // Still live on the node, so it claims again, with a new token.
    let again = a.expect_claimed("live/x").await?.claim.unwrap();
    assert!(again.fencing_token > claim.fencing_token);
    let out = ctl
        .run(&[
            "--admin-token",
            TOKEN,
            "release",
            "live/none",
            "--reason",
            "x",
        ])
        .await?;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let metrics = stack.svc.metrics().await?;
    assert!(
        metrics.contains("claims_lost_total{reason=\"force_released\"} 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn a_drained_node_takes_no_new_publishers_and_keeps_its_claims() -> Result<()> {
    let (stack, _) = admin_stack("ctl-drain").await?;
    let ctl = Ctl { svc: &stack.svc };
    let node = IngestNode::start("node-a", &[stack.svc.addr()], &[]).await?;
    let _first = Publisher::start(&node.rtmp_url("live/kept"))?;
    let kept = node
        .wait_broadcast("live/kept", |e| e["claim"]["state"] == "claimed")
        .await?;
    assert_eq!(http_get(node.http_port, "/readyz").await?.status, 200);

    let out = ctl
        .run(&["--admin-token", TOKEN, "--json", "drain", "node-a"])
        .await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let drained: serde_json::Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(drained["draining"], true);
    until(
        Duration::from_millis(50),
        async || Ok(node.healthz().await?["draining"].clone()),
        |draining| *draining == true,
    )
    .await?;
    assert_eq!(http_get(node.http_port, "/readyz").await?.status, 503);
    let mut client = stack.svc.ownership().await?;
    let nodes = client
        .list_nodes(pb::ListNodesRequest {})
        .await?
        .into_inner()
        .nodes;
    assert!(nodes.iter().any(|n| n.node_id == "node-a" && n.draining));

    // A new publisher is refused; the existing claim stays.
    let mut refused = Publisher::start(&node.rtmp_url("live/new"))?;
    assert!(!refused.wait_exit().await?.success());
    assert!(
        refused.log_text().contains("draining"),
        "{}",
        refused.log_text()
    );
    let still = node
        .wait_broadcast("live/kept", |e| e["claim"]["state"] == "claimed")
        .await?;
    assert_eq!(still["fencing_token"], kept["fencing_token"]);

    let out = ctl
        .run(&["--admin-token", TOKEN, "drain", "node-a", "--undo"])
        .await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    until(
        Duration::from_millis(50),
        async || Ok(http_get(node.http_port, "/readyz").await?.status),
        |status| *status == 200,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn healthcheck_subcommands_report_what_containers_need() -> Result<()> {
    let stack = Stack::start("healthcheck", &[]).await?;
    let run = |bin: &str, env: Vec<(&str, String)>| {
        let mut cmd = Command::new(binary(bin));
        cmd.arg("healthcheck");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output()
    };
    let ok = run(
        "claim-service",
        vec![(
            "CLAIMS_METRICS_LISTEN",
            format!("127.0.0.1:{}", stack.svc.metrics_port),
        )],
    )?;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let down = run(
        "claim-service",
        vec![(
            "CLAIMS_METRICS_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )],
    )?;
    assert_eq!(down.status.code(), Some(1));
    let node = IngestNode::start("node-h", &[stack.svc.addr()], &[]).await?;
    // A container's health check knows the port, not the node's id.
    let ok = run(
        "ingest-node",
        vec![(
            "INGEST_HTTP_LISTEN",
            format!("127.0.0.1:{}", node.http_port),
        )],
    )?;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    Ok(())
}

/// What a replica says through an etcd quorum loss: alive all along (the
/// Docker health check passes: a restart would not help), not ready from
/// the first failed reads to the quorum's return — once, without flapping
/// on the member that still answers alone — and its claims kept.
#[tokio::test]
async fn through_an_etcd_quorum_loss_a_replica_stays_alive_and_is_unready_once() -> Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut cluster = EtcdCluster::start(3).await?;
    let svc = ClaimService::start(&cluster.endpoints(), &test_prefix("quorum"), &[]).await?;
    let mut node = Node::attach(&svc.addr(), hello("node-q")).await?;
    node.created("live/q", "video").await?;
    let claim = node.expect_claimed("live/q").await?.claim.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(svc.channel().await?)
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    let mut next_status = async || -> Result<i32> {
        let said = tokio::time::timeout(WAIT, health.message()).await??;
        Ok(said
            .ok_or_else(|| anyhow::anyhow!("health watch ended"))?
            .status)
    };
    assert_eq!(next_status().await?, ServingStatus::Serving as i32);
    let healthcheck = |ready: bool| {
        let mut cmd = Command::new(binary("claim-service"));
        cmd.arg("healthcheck").env(
            "CLAIMS_METRICS_LISTEN",
            format!("127.0.0.1:{}", svc.metrics_port),
        );
        if ready {
            cmd.arg("--ready");
        }
        cmd.output()
    };
    assert!(healthcheck(true)?.status.success());
    assert_eq!(http_get(svc.metrics_port, "/readyz").await?.body, "READY\n");

    // Two of three members gone: the third answers alone, without quorum.
    cluster.members[1].kill();
    cluster.members[2].kill();
    assert_eq!(next_status().await?, ServingStatus::NotServing as i32);
    // It has lasted a while, as the replica itself says.
    let unready = until(
        Duration::from_millis(200),
        async || http_get(svc.metrics_port, "/readyz").await,
        |r| {
            r.body
                .split("linearizable read for ")
                .nth(1)
                .and_then(|rest| rest.split('s').next())
                .and_then(|secs| secs.parse::<u64>().ok())
                .is_some_and(|secs| secs >= 5)
        },
    )
    .await?;
    assert_eq!(unready.status, 503);
    assert!(
        unready.body.starts_with("NOT_READY: etcd"),
        "{}",
        unready.body
    );
    assert_eq!(http_get(svc.metrics_port, "/healthz").await?.status, 503);
    assert_eq!(http_get(svc.metrics_port, "/livez").await?.status, 200);
    let alive = healthcheck(false)?;
    assert!(
        alive.status.success(),
        "{}",
        String::from_utf8_lossy(&alive.stdout)
    );
    let ready = healthcheck(true)?;
    assert_eq!(ready.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&ready.stdout).contains("NOT_READY"),
        "{}",
        String::from_utf8_lossy(&ready.stdout)
    );
    let metrics = svc.metrics().await?;
    assert_eq!(
        metric_value(&metrics, "claims_serving"),
        Some(0.0),
        "{metrics}"
    );

    // Quorum back: ready again, and nothing said in between (no flap).
    cluster.members[1].restart().await?;
    cluster.members[2].restart().await?;
    assert_eq!(next_status().await?, ServingStatus::Serving as i32);
    // Consistent reads go over a connection of their own, which may reach
    // a rejoining member a moment after readiness did: UNAVAILABLE then
    // (clients retry it), never another answer.
    let answer = until(
        Duration::from_millis(100),
        async || Ok(svc.owner("live/q", true).await.map_err(|e| e.to_string())),
        |a| !matches!(a, Err(e) if e.contains("currently unavailable")),
    )
    .await?;
    let owner = answer
        .map_err(anyhow::Error::msg)?
        .expect("the claim outlived the outage");
    assert_eq!(owner.fencing_token, claim.fencing_token);
    assert_eq!(owner.node_id, "node-q");
    Ok(())
}

#[tokio::test]
async fn claimctl_watch_resumes_at_the_next_replica_without_missing_a_change() -> Result<()> {
    let stack = Stack::start("ctl-watch-resume", &[]).await?;
    let mut other = ClaimService::start(&stack.etcd.endpoint(), &stack.prefix, &[]).await?;
    let servers = format!("{},{}", other.addr(), stack.svc.addr());
    let mut cmd = tokio::process::Command::new(binary("claimctl"));
    cmd.args(["--server", &servers, "watch", "--prefix", "live/"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut next_line = async || {
        tokio::time::timeout(WAIT, lines.next_line())
            .await??
            .ok_or_else(|| anyhow::anyhow!("claimctl watch ended"))
    };
    // The watch starts from now on: it is open at its replica before the
    // first claim, or that claim could come before it.
    until(
        Duration::from_millis(20),
        async || Ok(metric_value(&other.metrics().await?, "claims_watches_open").unwrap_or(0.0)),
        |open| *open >= 1.0,
    )
    .await?;

    let mut a = Node::attach(&stack.svc.addr(), hello("node-a")).await?;
    a.created("live/one", "video").await?;
    a.expect_claimed("live/one").await?;
    let first = next_line().await?;
    assert!(
        first.contains("CLAIMED") && first.contains("live/one"),
        "{first}"
    );
    // Each line starts with when it was seen.
    let stamp = first.split_whitespace().next().unwrap_or("");
    assert!(humantime::parse_rfc3339(stamp).is_ok(), "{first}");

    // Its replica stops; a change made meanwhile is not missed.
    other.terminate().await?;
    a.closed("live/one", "video").await?;
    a.expect_released("live/one").await?;
    a.created("live/two", "video").await?;
    a.expect_claimed("live/two").await?;
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("live/two")) {
        seen.push(next_line().await?);
    }
    assert!(
        seen[0].contains("RELEASED") && seen[0].contains("live/one"),
        "{seen:?}"
    );
    Ok(())
}

/// `--version` of every binary names the workspace's version and the
/// commit it was built from.
#[test]
fn every_binary_says_its_version_and_commit() -> Result<()> {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(workspace_root())
        .output()?;
    let commit = String::from_utf8_lossy(&commit.stdout).trim().to_string();
    anyhow::ensure!(!commit.is_empty(), "not a git checkout");
    for name in ["claim-service", "ingest-node", "claimctl"] {
        let out = Command::new(binary(name)).arg("--version").output()?;
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {said}");
        assert_eq!(
            said.trim(),
            format!("{name} {} (commit {commit})", env!("CARGO_PKG_VERSION")),
        );
    }
    Ok(())
}
