//! The compatibility matrix: an older build (`CLAIMS_COMPAT_OLD`, the
//! directory of its binaries, as `scripts/compat.sh OLD_REF` builds it)
//! and this one in one fleet against one real etcd. Each cell publishes
//! through real ingest nodes (the nginx-rtmp hooks), moves the sessions
//! between replicas, and checks the WatchClaims history (tokens never go
//! back, one holder at a time, nothing released while published) and what
//! every node says it holds at the end. Run by `scripts/compat.sh` only:
//! without an older build there is nothing to compare.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use system_tests::checker::Checker;
use system_tests::v1 as pb;
use system_tests::*;

const TOKEN: &str = "compat-admin-token";

fn old_binary(name: &str) -> Result<PathBuf> {
    let dir = std::env::var("CLAIMS_COMPAT_OLD")
        .context("CLAIMS_COMPAT_OLD is not set: run scripts/compat.sh OLD_REF")?;
    Ok(PathBuf::from(dir).join(name))
}

fn old_name() -> String {
    std::env::var("CLAIMS_COMPAT_OLD_NAME").unwrap_or_else(|_| "old".into())
}

#[derive(Clone, Copy, PartialEq)]
enum Build {
    Old,
    New,
}

struct Mixed {
    etcd: Etcd,
    prefix: String,
    ports: Vec<u16>,
    replicas: Vec<Option<ClaimService>>,
    nodes: Vec<(IngestNode, u16)>,
    token_file: PathBuf,
    from: i64,
}

impl Mixed {
    async fn start(name: &str, replicas: &[Build]) -> Result<Self> {
        let etcd = Etcd::start().await?;
        let token_file =
            std::env::temp_dir().join(format!("claims-token-{}-{name}", std::process::id()));
        std::fs::write(&token_file, format!("{TOKEN}\n"))?;
        let mut mixed = Self {
            etcd,
            prefix: test_prefix(name),
            ports: replicas.iter().map(|_| free_port()).collect(),
            replicas: Vec::new(),
            nodes: Vec::new(),
            token_file,
            from: 0,
        };
        for (i, build) in replicas.iter().enumerate() {
            let svc = mixed.start_replica(i, *build).await?;
            mixed.replicas.push(Some(svc));
        }
        Ok(mixed)
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    async fn start_replica(&self, i: usize, build: Build) -> Result<ClaimService> {
        let id = format!("replica-{i}");
        let token = self.token_file.to_string_lossy().to_string();
        let mut flags = vec!["--service-id", &id, "--admin-token-file", &token];
        let advertise = self.url(i);
        if build == Build::New {
            flags.extend(["--advertise", &advertise]);
        }
        match build {
            Build::New => {
                ClaimService::start_at(self.ports[i], &self.etcd.endpoint(), &self.prefix, &flags)
                    .await
            }
            Build::Old => {
                ClaimService::start_binary_at(
                    &old_binary("claim-service")?,
                    self.ports[i],
                    &self.etcd.endpoint(),
                    &self.prefix,
                    &flags,
                )
                .await
            }
        }
    }

    /// A node of `build` that knows every replica, `first` first, with a
    /// broadcast `live/{node_id}` published through its hook.
    async fn publish_on(&mut self, node_id: &str, build: Build, first: usize) -> Result<()> {
        let n = self.ports.len();
        let urls: Vec<String> = (0..n).map(|k| self.url((first + k) % n)).collect();
        let hooks_port = free_port();
        let hooks = format!("127.0.0.1:{hooks_port}");
        let flags = ["--media-server", "nginx-rtmp", "--hooks-listen", &hooks];
        let node = match build {
            Build::New => IngestNode::start(node_id, &urls, &flags).await?,
            Build::Old => {
                IngestNode::start_binary(&old_binary("ingest-node")?, node_id, &urls, &flags)
                    .await?
            }
        };
        node.wait_attached().await?;
        let code = nginx_hook_post(hooks_port, &nginx_hook("publish", node_id, "1"))?;
        if code != 200 {
            bail!("publish on {node_id} answered {code}:\n{}", node.log_text());
        }
        self.nodes.push((node, hooks_port));
        Ok(())
    }

    fn replica(&self, i: usize) -> &ClaimService {
        self.replicas[i].as_ref().expect("replica running")
    }

    async fn claims(&self, at: usize) -> Result<BTreeMap<String, (String, i64)>> {
        let mut client = self.replica(at).ownership().await?;
        let resp = client
            .list_claims(pb::ListClaimsRequest {
                prefix: "live/".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(resp
            .claims
            .into_iter()
            .map(|c| (c.broadcast, (c.node_id, c.fencing_token)))
            .collect())
    }

    /// Where each node's session is, as replica `at` lists them.
    async fn placement(&self, at: usize) -> Result<BTreeMap<String, String>> {
        Ok(self
            .replica(at)
            .nodes()
            .await?
            .into_iter()
            .filter(|n| !n.detached)
            .map(|n| (n.node_id, n.service_id))
            .collect())
    }

    async fn wait_placement(
        &self,
        at: usize,
        check: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> Result<BTreeMap<String, String>> {
        until(
            Duration::from_millis(100),
            async || self.placement(at).await,
            check,
        )
        .await
    }

    async fn mark_start(&mut self) -> Result<()> {
        let mut client = self.etcd.client().await?;
        self.from = client
            .get("/", Some(etcd_client::GetOptions::new().with_count_only()))
            .await?
            .header()
            .map(|h| h.revision())
            .unwrap_or(0)
            + 1;
        Ok(())
    }

    fn claimctl(&self, at: usize, args: &[&str]) -> Result<String> {
        let out = std::process::Command::new(binary("claimctl"))
            .env("CLAIMCTL_ADMIN_TOKEN", TOKEN)
            .args(["--server", &self.url(at)])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "claimctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The checks of a cell, read from replica `at`: the history since the
    /// start, every claim kept with the token it had, and every node
    /// saying it holds its broadcast with that token.
    async fn verdict(
        &self,
        at: usize,
        before: &BTreeMap<String, (String, i64)>,
    ) -> Result<Vec<String>> {
        let mut checker = Checker::default();
        let mut watcher = Watcher::open(self.replica(at), "live/", self.from).await?;
        while let Some(e) = watcher.quiet_for(Duration::from_secs(1)).await {
            checker.watched.push(e);
        }
        let mut anomalies = checker.check();
        anomalies.extend(checker.one_holder_at_a_time());
        for e in &checker.watched {
            if e.kind == pb::claim_event::Kind::Released as i32 {
                anomalies.push(format!("released: {e:?}"));
            }
        }
        let after = self.claims(at).await?;
        if &after != before {
            anomalies.push(format!("claims changed: {before:?} -> {after:?}"));
        }
        for (node, _) in &self.nodes {
            let broadcast = format!("live/{}", node.node_id);
            let want = before.get(&broadcast).map(|(_, t)| *t);
            let told = node
                .wait_broadcast(&broadcast, |c| c["claim"]["state"] == "claimed")
                .await
                .map(|c| c["claim"]["fencing_token"].as_i64());
            match told {
                Ok(token) if token == want => {}
                other => anomalies.push(format!("{} says {other:?}, not {want:?}", node.node_id)),
            }
        }
        Ok(anomalies)
    }
}

impl Drop for Mixed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.token_file);
    }
}

fn report(cell: &str, anomalies: &[String]) -> Result<()> {
    let verdict = if anomalies.is_empty() {
        "ok".to_string()
    } else {
        format!("{} anomalies", anomalies.len())
    };
    println!("compat | {cell} | {verdict} |");
    if !anomalies.is_empty() {
        bail!("{cell}: {anomalies:#?}");
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs an older build: scripts/compat.sh OLD_REF"]
async fn old_nodes_on_new_replicas_move_with_their_claims() -> Result<()> {
    let mut m = Mixed::start("compat-old-nodes", &[Build::New, Build::New]).await?;
    m.publish_on("old-a", Build::Old, 0).await?;
    m.publish_on("old-b", Build::Old, 0).await?;
    m.mark_start().await?;
    let before = m.claims(1).await?;
    // The old nodes do not know `move`: the stream's end sends them on.
    m.claimctl(1, &["drain-replica", "replica-0"])?;
    m.wait_placement(1, |p| p.len() == 2 && p.values().all(|r| r == "replica-1"))
        .await
        .context("the old nodes never left the drained replica")?;
    let anomalies = m.verdict(1, &before).await?;
    report(
        &format!(
            "{} nodes, new replicas: drain-replica moves them",
            old_name()
        ),
        &anomalies,
    )
}

#[tokio::test]
#[ignore = "needs an older build: scripts/compat.sh OLD_REF"]
async fn new_nodes_on_old_replicas_fail_over_with_their_claims() -> Result<()> {
    let mut m = Mixed::start("compat-old-replicas", &[Build::Old, Build::Old]).await?;
    m.publish_on("new-a", Build::New, 0).await?;
    m.publish_on("new-b", Build::New, 1).await?;
    m.mark_start().await?;
    let before = m.claims(1).await?;
    // An old replica stopped with SIGTERM leaves its sessions' claims.
    let mut stopped = m.replicas[0].take().context("replica 0")?;
    stopped.terminate().await?;
    m.wait_placement(1, |p| p.len() == 2 && p.values().all(|r| r == "replica-1"))
        .await
        .context("the new node never attached to the other old replica")?;
    let anomalies = m.verdict(1, &before).await?;
    report(
        &format!(
            "new nodes, {} replicas: SIGTERM fails them over",
            old_name()
        ),
        &anomalies,
    )
}

#[tokio::test]
#[ignore = "needs an older build: scripts/compat.sh OLD_REF"]
async fn an_old_and_a_new_replica_hand_sessions_to_each_other() -> Result<()> {
    let mut m = Mixed::start("compat-mixed", &[Build::Old, Build::New]).await?;
    for (i, build) in [Build::New, Build::Old, Build::New, Build::Old]
        .into_iter()
        .enumerate()
    {
        m.publish_on(&format!("node-{i}"), build, i % 2).await?;
    }
    m.mark_start().await?;
    let before = m.claims(1).await?;
    // The new replica drains to the old one (which writes no record: the
    // nodes go to the next address they know).
    m.claimctl(1, &["drain-replica", "replica-1"])?;
    m.wait_placement(1, |p| p.len() == 4 && p.values().all(|r| r == "replica-0"))
        .await
        .context("the sessions never left the draining new replica")?;
    m.claimctl(1, &["drain-replica", "--undo", "replica-1"])?;
    // The old replica stops: every session comes to the new one.
    let mut stopped = m.replicas[0].take().context("replica 0")?;
    stopped.terminate().await?;
    m.wait_placement(1, |p| p.len() == 4 && p.values().all(|r| r == "replica-1"))
        .await
        .context("the sessions never came to the new replica")?;
    let anomalies = m.verdict(1, &before).await?;
    report(
        &format!(
            "{} and new replica, new and {} nodes: sessions both ways",
            old_name(),
            old_name()
        ),
        &anomalies,
    )
}
