//! A fleet of replicas and ingest nodes on one real etcd, for the tests of
//! spreading, draining and mixed versions: replicas on known ports with
//! `--service-id replica-N` and an admin token, nodes that know every
//! replica (one first) and publish through their nginx-rtmp hook (a claim
//! needs no media), and the reads those tests check with.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::v1 as pb;
use crate::*;

/// The admin token of every fleet's replicas.
pub const FLEET_TOKEN: &str = "fleet-admin-token";

/// Which build a replica or node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// An older version's, from `CLAIMS_COMPAT_OLD` (scripts/compat.sh).
    Old,
    /// This tree's.
    New,
}

impl Build {
    pub fn binary(self, name: &str) -> Result<PathBuf> {
        match self {
            Build::New => Ok(binary(name)),
            Build::Old => {
                let dir = std::env::var("CLAIMS_COMPAT_OLD")
                    .context("CLAIMS_COMPAT_OLD is not set: run scripts/compat.sh OLD_REF")?;
                Ok(PathBuf::from(dir).join(name))
            }
        }
    }
}

pub struct Fleet {
    pub etcd: Etcd,
    pub prefix: String,
    ports: Vec<u16>,
    pub replicas: Vec<Option<ClaimService>>,
    /// Each node with its hooks port.
    pub nodes: Vec<(IngestNode, u16)>,
    token_file: PathBuf,
    /// Flags every replica of this build gets besides the fleet's own.
    new_flags: Vec<String>,
}

impl Fleet {
    /// Replicas `replica-0..` of `builds`, the new ones with `new_flags`.
    pub async fn start(name: &str, builds: &[Build], new_flags: &[&str]) -> Result<Self> {
        let etcd = Etcd::start().await?;
        let token_file =
            std::env::temp_dir().join(format!("claims-token-{}-{name}", std::process::id()));
        std::fs::write(&token_file, format!("{FLEET_TOKEN}\n"))?;
        let mut fleet = Self {
            etcd,
            prefix: test_prefix(name),
            ports: builds.iter().map(|_| free_port()).collect(),
            replicas: Vec::new(),
            nodes: Vec::new(),
            token_file,
            new_flags: new_flags.iter().map(|f| f.to_string()).collect(),
        };
        for (i, build) in builds.iter().enumerate() {
            let svc = fleet.start_replica(i, *build).await?;
            fleet.replicas.push(Some(svc));
        }
        Ok(fleet)
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    /// Replica `i` (again, on its port), of `build`.
    pub async fn start_replica(&self, i: usize, build: Build) -> Result<ClaimService> {
        let id = format!("replica-{i}");
        let token = self.token_file.to_string_lossy().to_string();
        let advertise = self.url(i);
        let mut flags = vec!["--service-id", &id, "--admin-token-file", &token];
        if build == Build::New {
            flags.extend(["--advertise", &advertise]);
            flags.extend(self.new_flags.iter().map(String::as_str));
        }
        let bin = build.binary("claim-service")?;
        ClaimService::start_binary_at(
            &bin,
            self.ports[i],
            &self.etcd.endpoint(),
            &self.prefix,
            &flags,
        )
        .await
    }

    /// Stops replica `i` with SIGTERM, waiting for it to exit; it, to read
    /// its log.
    pub async fn stop(&mut self, i: usize) -> Result<ClaimService> {
        let mut stopped = self.replicas[i].take().context("replica not running")?;
        stopped.terminate().await?;
        Ok(stopped)
    }

    pub fn replica(&self, i: usize) -> &ClaimService {
        self.replicas[i].as_ref().expect("replica running")
    }

    /// A node of `build` that knows every replica, `first` first; attached.
    pub async fn add_node(&mut self, node_id: &str, build: Build, first: usize) -> Result<()> {
        let n = self.ports.len();
        let urls: Vec<String> = (0..n).map(|k| self.url((first + k) % n)).collect();
        let hooks_port = free_port();
        let hooks = format!("127.0.0.1:{hooks_port}");
        let flags = ["--media-server", "nginx-rtmp", "--hooks-listen", &hooks];
        let node =
            IngestNode::start_binary(&build.binary("ingest-node")?, node_id, &urls, &flags).await?;
        node.wait_attached().await?;
        self.nodes.push((node, hooks_port));
        Ok(())
    }

    /// Publishes `live/{node_id}` on every node (a claim each); the claims.
    pub async fn publish_everywhere(&self) -> Result<BTreeMap<String, i64>> {
        for (node, hooks_port) in &self.nodes {
            let name = node.node_id.clone();
            let code = nginx_hook_post(*hooks_port, &nginx_hook("publish", &name, "1"))?;
            if code != 200 {
                bail!("publish on {name} answered {code}:\n{}", node.log_text());
            }
        }
        let n = self.nodes.len();
        until(
            Duration::from_millis(50),
            async || self.tokens(0).await,
            |t| t.len() == n,
        )
        .await
    }

    /// Every claim under `live/` with its fencing token, as replica `at`
    /// lists them.
    pub async fn tokens(&self, at: usize) -> Result<BTreeMap<String, i64>> {
        Ok(self
            .claims(at)
            .await?
            .into_iter()
            .map(|(b, (_, token))| (b, token))
            .collect())
    }

    /// Every claim under `live/`: its owner and fencing token.
    pub async fn claims(&self, at: usize) -> Result<BTreeMap<String, (String, i64)>> {
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

    /// The replica each attached node's session is on, as `at` lists them.
    pub async fn placement(&self, at: usize) -> Result<BTreeMap<String, String>> {
        Ok(self
            .replica(at)
            .nodes()
            .await?
            .into_iter()
            .filter(|n| !n.detached)
            .map(|n| (n.node_id, n.service_id))
            .collect())
    }

    /// Attached sessions per replica, as `at` lists its nodes.
    pub async fn loads(&self, at: usize) -> Result<BTreeMap<String, usize>> {
        let mut loads = BTreeMap::new();
        for replica in self.placement(at).await?.into_values() {
            *loads.entry(replica).or_default() += 1;
        }
        Ok(loads)
    }

    /// Waits (up to `bound`) until the loads `at` sees pass `check`.
    pub async fn wait_loads(
        &self,
        at: usize,
        bound: Duration,
        check: impl Fn(&BTreeMap<String, usize>) -> bool,
    ) -> Result<BTreeMap<String, usize>> {
        until_for(
            bound,
            Duration::from_millis(100),
            async || self.loads(at).await,
            check,
        )
        .await
    }

    /// Times each node's sessions attached (its first included).
    pub fn attaches(&self) -> HashMap<String, usize> {
        self.nodes
            .iter()
            .map(|(n, _)| {
                let attached = n.log_text().matches("claim session attached").count();
                (n.node_id.clone(), attached)
            })
            .collect()
    }

    /// Every change under `live/` since `revision`, read from replica `at`
    /// until none comes for a second.
    pub async fn changes_since(&self, at: usize, revision: i64) -> Result<Vec<pb::ClaimEvent>> {
        let mut watcher = Watcher::open(self.replica(at), "live/", revision).await?;
        let mut events = Vec::new();
        while let Some(e) = watcher.quiet_for(Duration::from_secs(1)).await {
            events.push(e);
        }
        Ok(events)
    }

    /// etcd's revision now.
    pub async fn revision(&self) -> Result<i64> {
        let mut client = self.etcd.client().await?;
        Ok(client
            .get("/", Some(etcd_client::GetOptions::new().with_count_only()))
            .await?
            .header()
            .map(|h| h.revision())
            .unwrap_or(0))
    }

    /// `claimctl` (this tree's) against replica `at`, as the admin; stdout.
    pub fn claimctl(&self, at: usize, args: &[&str]) -> Result<String> {
        claimctl_as_admin(&self.url(at), FLEET_TOKEN, args)
    }

    /// Replica `i`'s record in etcd, if it has one.
    pub async fn replica_record(&self, i: usize) -> Result<Option<serde_json::Value>> {
        let key = format!("{}replicas/replica-{i}", self.prefix);
        let got = self.etcd.client().await?.get(key, None).await?;
        match got.kvs().first() {
            Some(kv) => Ok(Some(serde_json::from_slice(kv.value())?)),
            None => Ok(None),
        }
    }
}

/// `claimctl` (this tree's) against `server` as the admin of `token`;
/// stdout, or an error with its stderr.
pub fn claimctl_as_admin(server: &str, token: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(binary("claimctl"))
        .env("CLAIMCTL_ADMIN_TOKEN", token)
        .args(["--server", server])
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

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.token_file);
    }
}

/// The broadcasts released among `events`.
pub fn released(events: &[pb::ClaimEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.kind == pb::claim_event::Kind::Released as i32)
        .map(|e| {
            e.claim
                .as_ref()
                .map(|c| c.broadcast.clone())
                .unwrap_or_default()
        })
        .collect()
}
