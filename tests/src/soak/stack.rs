//! The soak's processes: a 3-member etcd, 2 replicas and 3 ingest nodes,
//! each on a host of its own, behind locks the faults take; how they are
//! started again, and what the run asks of them.

use std::time::Duration;

use anyhow::{bail, Result};
use tokio::sync::Mutex;

use super::told::{told_in, Told};
use super::{lock, DETACH_GRACE, FAKETIME};
use crate::netns::{Host, Lab};
use crate::*;

/// The processes, each on its host and behind a lock its faults take.
pub(super) struct Stack {
    pub(super) lab: Lab,
    pub(super) etcd_hosts: Vec<Host>,
    pub(super) replica_hosts: Vec<Host>,
    pub(super) node_hosts: Vec<Host>,
    pub(super) etcd: Mutex<EtcdCluster>,
    pub(super) endpoints: String,
    pub(super) prefix: String,
    pub(super) replicas: Vec<Mutex<ClaimService>>,
    pub(super) nodes: Vec<Mutex<IngestNode>>,
    /// A replica, a node, etcd and the network each take one fault at a
    /// time: one replica always serves, at most one node is down, etcd
    /// loses at most its quorum, one link is cut or lossy. Faults of
    /// different lanes overlap.
    pub(super) replica_lane: Mutex<()>,
    pub(super) node_lane: Mutex<()>,
    pub(super) etcd_lane: Mutex<()>,
    pub(super) network_lane: Mutex<()>,
    pub(super) client_lane: Mutex<()>,
    /// Each replica's libfaketime offset file (none where libfaketime is
    /// not installed: clock steps are then skipped, and said so).
    pub(super) clocks: Option<Vec<PathBuf>>,
    /// What the nodes replaced so far were told they hold, from their logs.
    pub(super) told: std::sync::Mutex<Vec<Told>>,
}

/// etcd as an operator runs it: its history compacted (to what it was a
/// minute ago, every minute), and a snapshot far more often than 3.4's
/// default (etcd keeps its log since the last snapshot in memory; at the
/// default it kept growing through the hour: docs/PERFORMANCE.md, the
/// soak), so that what the leak check sees of etcd's memory is not history
/// kept for ever.
const ETCD_FLAGS: [&str; 3] = [
    "--auto-compaction-mode=periodic",
    "--auto-compaction-retention=1m",
    "--snapshot-count=2000",
];

pub(super) fn node_id(i: usize) -> String {
    format!("soak-{}", (b'a' + i as u8) as char)
}

pub(super) fn hosts(lab: &mut Lab, kind: &str, n: usize) -> Result<Vec<Host>> {
    (0..n).map(|i| lab.host(&format!("{kind}{i}"))).collect()
}

impl Stack {
    pub(super) async fn start(mut lab: Lab, out: &std::path::Path) -> Result<Self> {
        let etcd_hosts = hosts(&mut lab, "e", 3)?;
        let replica_hosts = hosts(&mut lab, "r", 2)?;
        let node_hosts = hosts(&mut lab, "n", 3)?;
        let etcd = EtcdCluster::start_in(&etcd_hosts, &ETCD_FLAGS).await?;
        let endpoints = etcd.endpoints();
        let prefix = test_prefix("soak");
        let clocks = std::path::Path::new(FAKETIME).exists().then(|| {
            (0..replica_hosts.len())
                .map(|i| out.join(format!("clock-{i}")))
                .collect::<Vec<_>>()
        });
        for clock in clocks.iter().flatten() {
            std::fs::write(clock, "+0\n")?;
        }
        let mut replicas = Vec::new();
        for (i, host) in replica_hosts.iter().enumerate() {
            let clock = clocks.as_ref().map(|c| c[i].as_path());
            replicas.push(Mutex::new(
                Self::replica(host, clock, &endpoints, &prefix).await?,
            ));
        }
        let addrs = replica_addrs(&replica_hosts);
        let mut nodes = Vec::new();
        for (i, host) in node_hosts.iter().enumerate() {
            nodes.push(Mutex::new(Self::node(i, host, &addrs).await?));
        }
        Ok(Self {
            lab,
            etcd_hosts,
            replica_hosts,
            node_hosts,
            etcd: Mutex::new(etcd),
            endpoints,
            prefix,
            replicas,
            nodes,
            replica_lane: Mutex::new(()),
            node_lane: Mutex::new(()),
            etcd_lane: Mutex::new(()),
            network_lane: Mutex::new(()),
            client_lane: Mutex::new(()),
            clocks,
            told: Default::default(),
        })
    }

    /// A replica on `host`, its wall clock offset by what `clock` says.
    pub(super) async fn replica(
        host: &Host,
        clock: Option<&std::path::Path>,
        endpoints: &str,
        prefix: &str,
    ) -> Result<ClaimService> {
        let env: Vec<(String, String)> = clock
            .map(|file| {
                [
                    ("LD_PRELOAD", FAKETIME.to_string()),
                    ("FAKETIME_TIMESTAMP_FILE", file.display().to_string()),
                    ("FAKETIME_CACHE_DURATION", "1".to_string()),
                    ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
            })
            .unwrap_or_default();
        let flags = ["--detach-grace", DETACH_GRACE];
        ClaimService::start_in_with_env(host, &env, endpoints, prefix, &flags).await
    }

    /// Node `i`, trying the replicas from a different first one each,
    /// with a duplicate-publisher policy of its own (standby, refuse,
    /// takeover).
    pub(super) async fn node(i: usize, host: &Host, replicas: &[String]) -> Result<IngestNode> {
        let mut services = replicas.to_vec();
        let first = i % services.len();
        services.rotate_left(first);
        let policy = ["standby", "refuse", "takeover"][i % 3];
        IngestNode::start_in(
            host,
            &node_id(i),
            &services,
            &[
                "--duplicate-publisher",
                policy,
                "--claim-wait",
                "20s",
                // What it was told is read from its log (`told.rs`).
                "--log-format",
                "json",
            ],
        )
        .await
    }

    /// A viewer of `broadcast` over HTTP-FLV at node `node` (redirected to
    /// the owner where that is another node), decoding for a few seconds.
    pub(super) fn view(&self, node: usize, broadcast: &str) -> Result<Daemon> {
        let mut cmd = std::process::Command::new("ffmpeg");
        cmd.args(["-nostdin", "-loglevel", "error", "-t", "4", "-i"])
            .arg(format!(
                "http://{}:8080/{broadcast}.flv",
                self.node_hosts[node].ip
            ))
            .args(["-f", "null", "-"]);
        Daemon::spawn("viewer", cmd)
    }

    /// A publisher on node `node`'s own host (a cut between hosts leaves it
    /// connected).
    pub(super) fn publish(&self, node: usize, broadcast: &str) -> Result<Publisher> {
        Publisher::start_in(
            &self.node_hosts[node],
            &format!("rtmp://127.0.0.1:1935/{broadcast}"),
        )
    }

    /// Who owns `broadcast`, read linearizably from whichever replica
    /// answers.
    pub(super) async fn owner(&self, broadcast: &str) -> Option<Option<String>> {
        for addr in replica_addrs(&self.replica_hosts) {
            let ask = async {
                let channel = tonic::transport::Endpoint::from_shared(addr)?
                    .connect()
                    .await?;
                let mut client = v1::ownership_client::OwnershipClient::new(channel);
                match client
                    .get_owner(v1::GetOwnerRequest {
                        broadcast: broadcast.into(),
                        consistent: true,
                    })
                    .await
                {
                    Ok(c) => anyhow::Ok(Some(c.into_inner().node_id)),
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                    Err(s) => bail!("{s}"),
                }
            };
            if let Ok(Ok(owner)) = tokio::time::timeout(Duration::from_secs(2), ask).await {
                return Some(owner);
            }
        }
        None
    }

    /// Claim keys left in etcd.
    pub(super) async fn claims_in_etcd(&self) -> Result<i64> {
        let endpoints: Vec<&str> = self.endpoints.split(',').collect();
        let mut client = etcd_client::Client::connect(endpoints, None).await?;
        let got = client
            .get(
                format!("{}broadcasts/", self.prefix),
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_count_only(),
                ),
            )
            .await?;
        Ok(got.count())
    }

    /// Every process's pid, by a stable name.
    pub(super) async fn pids(&self) -> Vec<(String, u32)> {
        let mut pids = Vec::new();
        for (i, m) in self.etcd.lock().await.members.iter().enumerate() {
            pids.extend(m.pid().map(|p| (format!("etcd-{i}"), p)));
        }
        for (i, r) in self.replicas.iter().enumerate() {
            pids.extend(r.lock().await.pid().map(|p| (format!("claims-{i}"), p)));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            pids.extend(n.lock().await.pid().map(|p| (node_id(i), p)));
        }
        pids
    }
}

impl Stack {
    /// Keeps what node `i` (about to be replaced, or at the end) was told.
    pub(super) fn keep_told(&self, i: usize, node: &IngestNode) {
        let told = told_in(&node_id(i), &node.log_text());
        lock(&self.told).extend(told);
    }

    /// Replica `i` again on its host, tried for a minute (it serves only
    /// once etcd does: a quorum loss may be on).
    pub(super) async fn restart_replica(&self, i: usize) -> Result<ClaimService> {
        let clock = self.clocks.as_ref().map(|c| c[i].as_path());
        let host = &self.replica_hosts[i];
        within(
            RESTART_WITHIN,
            RESTART_AGAIN,
            async || Self::replica(host, clock, &self.endpoints, &self.prefix).await,
            Result::is_ok,
        )
        .await
        .0
    }

    /// Node `i` again on its host, tried for a minute.
    pub(super) async fn restart_node(&self, i: usize) -> Result<IngestNode> {
        let addrs = replica_addrs(&self.replica_hosts);
        within(
            RESTART_WITHIN,
            RESTART_AGAIN,
            async || Self::node(i, &self.node_hosts[i], &addrs).await,
            Result::is_ok,
        )
        .await
        .0
    }
}

/// How long a process that did not start is tried again, and how often.
const RESTART_WITHIN: Duration = Duration::from_secs(60);
const RESTART_AGAIN: Duration = Duration::from_millis(500);

pub(super) fn replica_addrs(hosts: &[Host]) -> Vec<String> {
    hosts
        .iter()
        .map(|h| format!("http://{}:50051", h.ip))
        .collect()
}

pub(super) async fn until_started_mut(member: &mut Etcd) -> Result<()> {
    within(
        RESTART_WITHIN,
        RESTART_AGAIN,
        async || member.restart().await,
        Result::is_ok,
    )
    .await
    .0
}
