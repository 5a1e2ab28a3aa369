//! The soak: a whole stack, each process on a host of its own (a network
//! namespace, `netns.rs`) — a 3-member etcd, 2 claim-service replicas, 3
//! ingest nodes — with real ffmpeg publishers coming and going (each on its
//! node's host; duplicates held as standby), a `WatchClaims` follower that
//! resumes across replicas, and a nemesis that picks overlapping faults from
//! a seed: kill -9, SIGTERM and SIGSTOP of replicas and nodes, an etcd
//! member stopped, etcd's quorum lost, a link cut between two hosts, a host
//! losing a share of its packets, clients of a replica that stop reading
//! (watchers and a node session), a replica's wall clock stepped
//! (libfaketime), an etcd member's disk stalled (a blkio cgroup). Every
//! fault heals within its bound and
//! the run ends by itself, then accounts for every claim (see [`run`]).
//!
//! Not in it: delay, jitter and reordering (this kernel has no netem).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::checker::Checker;
use crate::netns::{Host, Lab};
use crate::*;

/// What a soak does: for how long, from which seed, where it writes.
pub struct Plan {
    pub duration: Duration,
    pub seed: u64,
    /// Folder for `history.jsonl`, `samples.csv` and `report.md`.
    pub out: PathBuf,
}

const BROADCASTS: u64 = 12;
const MAX_PUBLISHERS: usize = 10;
const DETACH_GRACE: &str = "5s";
/// libfaketime (Debian's `libfaketime`), preloaded into the replicas for
/// clock steps.
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/// A publisher connected through a healed fault owns its broadcast again
/// within this (detach grace 5 s + lease TTL 10 s + 15 s for a restarted
/// process to attach and claim).
pub const RIGHT_WITHIN: Duration = Duration::from_secs(30);

/// xorshift64*: the whole schedule of faults and publishers follows from
/// the seed (their timing on the machine does not).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo) + 1))
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// Every fault, heal, publisher and watch event, one JSON line each, with
/// seconds since the start: what a failure is replayed and read from.
struct History {
    file: StdMutex<std::io::BufWriter<std::fs::File>>,
    start: Instant,
}

impl History {
    fn log(&self, what: &str, detail: serde_json::Value) {
        let line = json!({"t": self.start.elapsed().as_secs_f64(), "what": what, "detail": detail});
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(f, "{line}");
    }

    fn flush(&self) {
        let _ = self.file.lock().unwrap_or_else(|p| p.into_inner()).flush();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    ReplicaKill,
    ReplicaTerm,
    ReplicaPause,
    NodeKill,
    NodeTerm,
    NodePause,
    EtcdMemberStop,
    EtcdQuorumLoss,
    /// A link cut both ways: a node from a replica, a replica from an etcd
    /// member, or two etcd members from each other.
    Partition,
    /// A host drops 5-30 % of its packets, both ways.
    PacketLoss,
    /// Clients of a replica stop reading: 40 `WatchClaims` streams (half
    /// of them replaying etcd's history) and a node session with 2,000
    /// claims whose answers nobody reads.
    StalledClients,
    /// A replica's wall clock steps 2 or 15 minutes ahead or back (as an
    /// NTP step would), and back again at heal: libfaketime preloaded into
    /// every replica, its offset file rewritten (its monotonic clock is
    /// left alone, as a step leaves it).
    ClockStep,
    /// An etcd member's disk stalls: its writes held to 1-3 a second (a
    /// blkio cgroup's write_iops_device), so every fdatasync waits.
    DiskStall,
}

const FAULTS: [Fault; 13] = [
    Fault::ReplicaKill,
    Fault::ReplicaTerm,
    Fault::ReplicaPause,
    Fault::NodeKill,
    Fault::NodeTerm,
    Fault::NodePause,
    Fault::EtcdMemberStop,
    Fault::EtcdQuorumLoss,
    Fault::Partition,
    Fault::PacketLoss,
    Fault::StalledClients,
    Fault::ClockStep,
    Fault::DiskStall,
];

fn fault_line(fault: Fault, target: &str, hold: Duration) -> serde_json::Value {
    json!({"fault": format!("{fault:?}"), "target": target, "hold_ms": hold.as_millis() as u64})
}

/// The processes, each on its host and behind a lock its faults take.
struct Stack {
    lab: Lab,
    etcd_hosts: Vec<Host>,
    replica_hosts: Vec<Host>,
    node_hosts: Vec<Host>,
    etcd: Mutex<EtcdCluster>,
    endpoints: String,
    prefix: String,
    replicas: Vec<Mutex<ClaimService>>,
    nodes: Vec<Mutex<IngestNode>>,
    /// A replica, a node, etcd and the network each take one fault at a
    /// time: one replica always serves, at most one node is down, etcd
    /// loses at most its quorum, one link is cut or lossy. Faults of
    /// different lanes overlap.
    replica_lane: Mutex<()>,
    node_lane: Mutex<()>,
    etcd_lane: Mutex<()>,
    network_lane: Mutex<()>,
    client_lane: Mutex<()>,
    /// Each replica's libfaketime offset file (none where libfaketime is
    /// not installed: clock steps are then skipped, and said so).
    clocks: Option<Vec<PathBuf>>,
}

fn node_id(i: usize) -> String {
    format!("soak-{}", (b'a' + i as u8) as char)
}

fn hosts(lab: &mut Lab, kind: &str, n: usize) -> Result<Vec<Host>> {
    (0..n).map(|i| lab.host(&format!("{kind}{i}"))).collect()
}

impl Stack {
    async fn start(mut lab: Lab, out: &std::path::Path) -> Result<Self> {
        let etcd_hosts = hosts(&mut lab, "e", 3)?;
        let replica_hosts = hosts(&mut lab, "r", 2)?;
        let node_hosts = hosts(&mut lab, "n", 3)?;
        let etcd = EtcdCluster::start_in(&etcd_hosts).await?;
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
        })
    }

    /// A replica on `host`, its wall clock offset by what `clock` says.
    async fn replica(
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

    /// Node `i`, trying the replicas from a different first one each.
    async fn node(i: usize, host: &Host, replicas: &[String]) -> Result<IngestNode> {
        let mut services = replicas.to_vec();
        let first = i % services.len();
        services.rotate_left(first);
        IngestNode::start_in(
            host,
            &node_id(i),
            &services,
            &["--duplicate-publisher", "standby", "--claim-wait", "20s"],
        )
        .await
    }

    /// A publisher on node `node`'s own host (a cut between hosts leaves it
    /// connected).
    fn publish(&self, node: usize, broadcast: &str) -> Result<Publisher> {
        Publisher::start_in(
            &self.node_hosts[node],
            &format!("rtmp://127.0.0.1:1935/{broadcast}"),
        )
    }

    /// Who owns `broadcast`, read linearizably from whichever replica
    /// answers.
    async fn owner(&self, broadcast: &str) -> Option<Option<String>> {
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
    async fn claims_in_etcd(&self) -> Result<i64> {
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
    async fn pids(&self) -> Vec<(String, u32)> {
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

    /// Applies `fault` (to the target `pick` chooses), lets it last `hold`,
    /// heals it; what it did, for the history.
    async fn inject(
        &self,
        fault: Fault,
        pick: u64,
        hold: Duration,
        history: &History,
    ) -> Result<()> {
        match fault {
            Fault::ReplicaKill | Fault::ReplicaTerm | Fault::ReplicaPause => {
                let _lane = self.replica_lane.lock().await;
                let i = pick as usize % self.replicas.len();
                let target = format!("claims-{i}");
                history.log("fault", fault_line(fault, &target, hold));
                {
                    let mut r = self.replicas[i].lock().await;
                    match fault {
                        Fault::ReplicaKill => r.kill(),
                        Fault::ReplicaTerm => {
                            let _ = r.terminate().await;
                        }
                        _ => r.signal(libc::SIGSTOP),
                    }
                }
                tokio::time::sleep(hold).await;
                let mut r = self.replicas[i].lock().await;
                if fault == Fault::ReplicaPause {
                    r.signal(libc::SIGCONT);
                } else {
                    *r = self.restart_replica(i).await?;
                }
                history.log("heal", fault_line(fault, &target, hold));
            }
            Fault::NodeKill | Fault::NodeTerm | Fault::NodePause => {
                let _lane = self.node_lane.lock().await;
                let i = pick as usize % self.nodes.len();
                let target = node_id(i);
                history.log("fault", fault_line(fault, &target, hold));
                {
                    let mut n = self.nodes[i].lock().await;
                    match fault {
                        Fault::NodeKill => n.kill(),
                        Fault::NodeTerm => {
                            let _ = n.terminate().await;
                        }
                        _ => n.signal(libc::SIGSTOP),
                    }
                }
                tokio::time::sleep(hold).await;
                let mut n = self.nodes[i].lock().await;
                if fault == Fault::NodePause {
                    n.signal(libc::SIGCONT);
                } else {
                    *n = self.restart_node(i).await?;
                }
                history.log("heal", fault_line(fault, &target, hold));
            }
            Fault::Partition => {
                let _lane = self.network_lane.lock().await;
                let (a, b) = match pick % 3 {
                    0 => (
                        &self.node_hosts[(pick / 3) as usize % 3],
                        &self.replica_hosts[(pick / 9) as usize % 2],
                    ),
                    1 => (
                        &self.replica_hosts[(pick / 3) as usize % 2],
                        &self.etcd_hosts[(pick / 6) as usize % 3],
                    ),
                    _ => {
                        let first = (pick / 3) as usize % 3;
                        (&self.etcd_hosts[first], &self.etcd_hosts[(first + 1) % 3])
                    }
                };
                let target = format!("{} <-> {}", a.ns, b.ns);
                history.log("fault", fault_line(fault, &target, hold));
                self.lab.cut(a, &b.ip)?;
                tokio::time::sleep(hold).await;
                self.lab.heal(a)?;
                history.log("heal", fault_line(fault, &target, hold));
            }
            Fault::PacketLoss => {
                let _lane = self.network_lane.lock().await;
                let all: Vec<&Host> = self
                    .etcd_hosts
                    .iter()
                    .chain(&self.replica_hosts)
                    .chain(&self.node_hosts)
                    .collect();
                let host = all[pick as usize % all.len()];
                let percent = 5 + (pick / 64 % 26) as u32;
                let target = format!("{} loses {percent} %", host.ns);
                history.log("fault", fault_line(fault, &target, hold));
                self.lab.lose(host, percent)?;
                tokio::time::sleep(hold).await;
                self.lab.heal(host)?;
                history.log("heal", fault_line(fault, &target, hold));
            }
            Fault::StalledClients => {
                let _lane = self.client_lane.lock().await;
                let i = pick as usize % self.replica_hosts.len();
                let addr = replica_addrs(&self.replica_hosts).swap_remove(i);
                let target = format!("claims-{i}");
                history.log("fault", fault_line(fault, &target, hold));
                // A replica down meanwhile (another lane) refuses them:
                // that is no fault of the soak.
                match stall(&addr).await {
                    Ok(stalled) => {
                        tokio::time::sleep(hold).await;
                        drop(stalled);
                    }
                    Err(e) => history.log("stall-refused", json!({"error": format!("{e:#}")})),
                }
                history.log("heal", fault_line(fault, &target, hold));
            }
            Fault::ClockStep => {
                let _lane = self.replica_lane.lock().await;
                let i = pick as usize % self.replica_hosts.len();
                let step = [120i64, -120, 900, -900][(pick / 2 % 4) as usize];
                let target = format!("claims-{i} clock {step:+} s");
                let Some(clocks) = &self.clocks else {
                    history.log(
                        "clock-skipped",
                        json!({"why": format!("{FAKETIME} is missing")}),
                    );
                    return Ok(());
                };
                history.log("fault", fault_line(fault, &target, hold));
                std::fs::write(&clocks[i], format!("{step:+}\n"))?;
                tokio::time::sleep(hold).await;
                std::fs::write(&clocks[i], "+0\n")?;
                history.log("heal", fault_line(fault, &target, hold));
            }
            Fault::DiskStall => {
                let _lane = self.etcd_lane.lock().await;
                let i = pick as usize % 3;
                let iops = 1 + pick / 3 % 3;
                let target = format!("etcd-{i} at {iops} writes/s");
                let pid = self.etcd.lock().await.members[i].pid();
                let stalled = pid
                    .ok_or_else(|| anyhow::anyhow!("etcd-{i} not running"))
                    .and_then(|pid| {
                        DiskStall::start(
                            &format!("{}-{i}", self.prefix.replace('/', "")),
                            pid,
                            iops,
                        )
                    });
                match stalled {
                    Ok(stall) => {
                        history.log("fault", fault_line(fault, &target, hold));
                        tokio::time::sleep(hold).await;
                        stall.end()?;
                        history.log("heal", fault_line(fault, &target, hold));
                    }
                    Err(e) => history.log("disk-stall-skipped", json!({"why": format!("{e:#}")})),
                }
            }
            Fault::EtcdMemberStop | Fault::EtcdQuorumLoss => {
                let _lane = self.etcd_lane.lock().await;
                let first = pick as usize % 3;
                let victims: Vec<usize> = if fault == Fault::EtcdQuorumLoss {
                    vec![first, (first + 1) % 3]
                } else {
                    vec![first]
                };
                let target = format!("etcd {victims:?}");
                history.log("fault", fault_line(fault, &target, hold));
                {
                    let mut etcd = self.etcd.lock().await;
                    for v in &victims {
                        etcd.members[*v].kill();
                    }
                }
                tokio::time::sleep(hold).await;
                let mut etcd = self.etcd.lock().await;
                for v in &victims {
                    let member = &mut etcd.members[*v];
                    until_started_mut(member).await?;
                }
                history.log("heal", fault_line(fault, &target, hold));
            }
        }
        Ok(())
    }
}

impl Stack {
    /// Replica `i` again on its host, tried for a minute (it serves only
    /// once etcd does: a quorum loss may be on).
    async fn restart_replica(&self, i: usize) -> Result<ClaimService> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let clock = self.clocks.as_ref().map(|c| c[i].as_path());
            match Self::replica(&self.replica_hosts[i], clock, &self.endpoints, &self.prefix).await
            {
                Ok(r) => return Ok(r),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// Node `i` again on its host, tried for a minute.
    async fn restart_node(&self, i: usize) -> Result<IngestNode> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let addrs = replica_addrs(&self.replica_hosts);
        loop {
            match Self::node(i, &self.node_hosts[i], &addrs).await {
                Ok(n) => return Ok(n),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

/// A process's writes to the disk under the temp folder held to a few a
/// second: a blkio (cgroup v1) group of its own.
struct DiskStall {
    group: PathBuf,
    pid: u32,
    device: String,
}

impl DiskStall {
    fn start(name: &str, pid: u32, iops: u64) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(std::env::temp_dir())?.dev();
        let device = format!("{}:{}", libc::major(dev), libc::minor(dev));
        let group = PathBuf::from(format!("/sys/fs/cgroup/blkio/soak-{name}"));
        std::fs::create_dir_all(&group)?;
        std::fs::write(
            group.join("blkio.throttle.write_iops_device"),
            format!("{device} {iops}"),
        )?;
        std::fs::write(group.join("cgroup.procs"), pid.to_string())?;
        Ok(Self { group, pid, device })
    }

    /// Lifts the limit and puts the process back where it was.
    fn end(self) -> Result<()> {
        std::fs::write(
            self.group.join("blkio.throttle.write_iops_device"),
            format!("{} 0", self.device),
        )?;
        // The process may have died meanwhile.
        let _ = std::fs::write("/sys/fs/cgroup/blkio/cgroup.procs", self.pid.to_string());
        let _ = std::fs::remove_dir(&self.group);
        Ok(())
    }
}

/// Clients of the replica at `addr` that stop reading; they go when
/// dropped.
async fn stall(addr: &str) -> Result<(Vec<tonic::Streaming<v1::ClaimEvent>>, Node)> {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_string())?
        .connect()
        .await?;
    let mut watches = Vec::new();
    for k in 0..40 {
        let mut client = v1::ownership_client::OwnershipClient::new(channel.clone());
        let stream = client
            .watch_claims(v1::WatchClaimsRequest {
                prefix: String::new(),
                start_revision: if k % 2 == 0 { 1 } else { 0 },
            })
            .await?
            .into_inner();
        watches.push(stream);
    }
    let node = Node::attach(addr, hello("soak-stalled")).await?;
    for n in 0..2000 {
        node.created(&format!("stall/s{n:04}"), "video").await?;
    }
    Ok((watches, node))
}

fn replica_addrs(hosts: &[Host]) -> Vec<String> {
    hosts
        .iter()
        .map(|h| format!("http://{}:50051", h.ip))
        .collect()
}

async fn until_started_mut(member: &mut Etcd) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match member.restart().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// A publisher the soak started.
struct Live {
    broadcast: String,
    node: usize,
    publisher: Publisher,
    since: Instant,
}

/// What the run found.
pub struct Outcome {
    pub anomalies: Vec<String>,
    pub report: PathBuf,
}

/// Runs the soak of `plan` and writes its report; the anomalies found
/// (none is the goal). It fails only when the stack cannot be run.
pub async fn run(plan: Plan) -> Result<Outcome> {
    std::fs::create_dir_all(&plan.out)?;
    // Absolute: the replicas read their clock files from here.
    let plan = Plan {
        out: std::fs::canonicalize(&plan.out)?,
        ..plan
    };
    let history = Arc::new(History {
        file: StdMutex::new(std::io::BufWriter::new(std::fs::File::create(
            plan.out.join("history.jsonl"),
        )?)),
        start: Instant::now(),
    });
    history.log(
        "start",
        json!({"seed": plan.seed, "seconds": plan.duration.as_secs()}),
    );
    let lab = Lab::start()
        .map_err(|why| anyhow::anyhow!("cannot make network namespaces here: {why}"))?;
    let stack = Arc::new(Stack::start(lab, &plan.out).await?);
    let stop = CancellationToken::new();
    let events: Arc<StdMutex<Vec<v1::ClaimEvent>>> = Arc::default();
    let follower = tokio::spawn(follow(
        replica_addrs(&stack.replica_hosts),
        events.clone(),
        history.clone(),
        stop.clone(),
    ));
    let samples = tokio::spawn(sample(
        stack.clone(),
        plan.out.join("samples.csv"),
        stop.clone(),
    ));

    let mut faults_rng = Rng::new(plan.seed);
    let mut churn_rng = Rng::new(plan.seed ^ 0x5eed_cafe);
    let mut live: Vec<Live> = Vec::new();
    let mut fault_tasks = futures::stream::FuturesUnordered::new();
    let mut heal_failures = Vec::new();
    let mut counts: BTreeMap<Fault, usize> = BTreeMap::new();
    let right_times: RightTimes = Arc::default();
    let published: Published = Arc::default();
    let ends = Instant::now() + plan.duration;
    let mut next_fault = Instant::now() + faults_rng.millis(3_000, 8_000);

    // Publishers come and go; faults start on their own schedule and
    // overlap (each lane takes one at a time).
    while Instant::now() < ends {
        reap(&mut live, &history);
        if live.len() < MAX_PUBLISHERS && churn_rng.chance(0.6) {
            let broadcast = format!("soak/b{:02}", churn_rng.below(BROADCASTS));
            let node = churn_rng.below(stack.nodes.len() as u64) as usize;
            match stack.publish(node, &broadcast) {
                Ok(publisher) => {
                    history.log(
                        "publish",
                        json!({"broadcast": broadcast, "node": node_id(node)}),
                    );
                    live.push(Live {
                        broadcast,
                        node,
                        publisher,
                        since: Instant::now(),
                    });
                }
                Err(e) => history.log("publish-failed", json!({"error": e.to_string()})),
            }
        } else if !live.is_empty() && churn_rng.chance(0.4) {
            let mut gone = live.swap_remove(churn_rng.below(live.len() as u64) as usize);
            gone.publisher.kill();
            history.log(
                "unpublish",
                json!({"broadcast": gone.broadcast, "node": node_id(gone.node)}),
            );
        }
        *published.lock().unwrap_or_else(|p| p.into_inner()) = live
            .iter()
            .map(|l| (l.broadcast.clone(), l.node, l.since))
            .collect();
        if Instant::now() >= next_fault {
            let fault = FAULTS[faults_rng.below(FAULTS.len() as u64) as usize];
            let hold = match fault {
                Fault::ReplicaPause => faults_rng.millis(1_000, 15_000),
                Fault::NodePause => faults_rng.millis(500, 6_000),
                Fault::EtcdQuorumLoss => faults_rng.millis(1_000, 8_000),
                Fault::Partition => faults_rng.millis(1_000, 12_000),
                Fault::PacketLoss => faults_rng.millis(2_000, 15_000),
                Fault::StalledClients => faults_rng.millis(2_000, 15_000),
                Fault::ClockStep => faults_rng.millis(5_000, 20_000),
                Fault::DiskStall => faults_rng.millis(2_000, 10_000),
                _ => faults_rng.millis(500, 10_000),
            };
            let pick = faults_rng.next_u64();
            *counts.entry(fault).or_default() += 1;
            let (stack, history, right_times, published) = (
                stack.clone(),
                history.clone(),
                right_times.clone(),
                published.clone(),
            );
            // Polled here, not spawned: the harness's waits are not Send.
            fault_tasks.push(Box::pin(async move {
                let injected = Instant::now();
                stack.inject(fault, pick, hold, &history).await?;
                let took = time_to_right(&stack, &published, injected).await;
                history.log(
                    "right",
                    json!({"fault": format!("{fault:?}"), "after_heal_ms": took.map(|t| t.as_millis() as u64)}),
                );
                right_times.lock().unwrap_or_else(|p| p.into_inner()).push((fault, took));
                anyhow::Ok(())
            }));
            next_fault = Instant::now() + faults_rng.millis(2_000, 8_000);
        }
        let tick = tokio::time::sleep(churn_rng.millis(500, 2_000));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                _ = &mut tick => break,
                Some(done) = fault_tasks.next(), if !fault_tasks.is_empty() => {
                    if let Err(e) = done {
                        history.log("heal-failed", json!({"error": e.to_string()}));
                        heal_failures.push(format!("a fault did not heal: {e:#}"));
                    }
                }
            }
        }
    }

    // Every fault heals.
    history.log("nemesis-stops", json!({}));
    while let Some(done) = fault_tasks.next().await {
        if let Err(e) = done {
            history.log("heal-failed", json!({"error": e.to_string()}));
            heal_failures.push(format!("a fault did not heal: {e:#}"));
        }
    }
    reap(&mut live, &history);

    // Publishers still connected own their broadcasts again.
    let mut anomalies = heal_failures;
    let mut final_right = Vec::new();
    let healed = Instant::now();
    for l in &live {
        let holders: Vec<String> = live
            .iter()
            .filter(|o| o.broadcast == l.broadcast)
            .map(|o| node_id(o.node))
            .collect();
        let mut last;
        let right_at = loop {
            last = stack.owner(&l.broadcast).await;
            if last
                .as_ref()
                .is_some_and(|o| o.as_ref().is_some_and(|o| holders.contains(o)))
            {
                break Some(healed.elapsed());
            }
            if healed.elapsed() > RIGHT_WITHIN {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        match right_at {
            Some(t) => final_right.push(t),
            None => anomalies.push(format!(
                "{} publishing to {} (for {:.0} s) not owned by {holders:?} {RIGHT_WITHIN:?} after the last heal: owner {last:?}",
                l.broadcast,
                node_id(l.node),
                l.since.elapsed().as_secs_f64()
            )),
        }
    }

    // etcd holds a claim key for each broadcast owned now (so that the
    // count below, which must reach 0, counts the right keys).
    let owned: std::collections::BTreeSet<&str> =
        live.iter().map(|l| l.broadcast.as_str()).collect();
    match stack.claims_in_etcd().await {
        Ok(n) if n >= owned.len() as i64 => {}
        Ok(n) => anomalies.push(format!(
            "etcd holds {n} claim keys while {} broadcasts are owned",
            owned.len()
        )),
        Err(e) => anomalies.push(format!("cannot count the claim keys in etcd: {e:#}")),
    }

    // The last publishers leave: nothing stays in etcd.
    for l in &mut live {
        l.publisher.kill();
    }
    let left = Instant::now();
    let mut in_etcd = Err(anyhow::anyhow!("not read"));
    while left.elapsed() < RIGHT_WITHIN {
        in_etcd = stack.claims_in_etcd().await;
        if matches!(in_etcd, Ok(0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    match in_etcd {
        Ok(0) => {}
        Ok(n) => anomalies.push(format!(
            "{n} claim keys still in etcd {RIGHT_WITHIN:?} after the last publisher left"
        )),
        Err(e) => anomalies.push(format!("cannot count the claim keys left in etcd: {e:#}")),
    }
    let all_released = left.elapsed();
    stop.cancel();
    let _ = follower.await;
    let samples = samples.await.unwrap_or_default();

    // The whole watch history: tokens never go back, one holder at a time.
    let checker = Checker {
        watched: std::mem::take(&mut *events.lock().unwrap_or_else(|p| p.into_inner())),
        ..Default::default()
    };
    anomalies.extend(checker.check());
    anomalies.extend(checker.one_holder_at_a_time());
    let leaks = leak_check(&samples);

    let report = plan.out.join("report.md");
    let mut r = String::new();
    r.push_str(&format!(
        "# Soak: seed {}, {:.0} min\n\n{} anomalies; {} watch events; last release {:.1} s after the last publisher left\n\n",
        plan.seed,
        plan.duration.as_secs_f64() / 60.0,
        anomalies.len(),
        checker.watched.len(),
        all_released.as_secs_f64()
    ));
    // Time to right per fault kind: from its heal until every publisher
    // connected since before it owned its broadcast again (or another live
    // publisher of it did); faults overlap, so a later one can lengthen it.
    let mut per_kind: BTreeMap<Fault, Vec<Option<Duration>>> = BTreeMap::new();
    for (f, t) in right_times.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        per_kind.entry(*f).or_default().push(*t);
    }
    r.push_str("| fault | injected | time to right after heal: p50 / p90 / max | not right within the bound |\n| --- | --- | --- | --- |\n");
    for (f, n) in &counts {
        let mut done: Vec<Duration> = per_kind
            .get(f)
            .into_iter()
            .flatten()
            .flatten()
            .copied()
            .collect();
        done.sort();
        let missed = per_kind
            .get(f)
            .map_or(0, |v| v.iter().filter(|t| t.is_none()).count());
        let at = |q: usize| done.get((done.len() * q / 100).min(done.len().saturating_sub(1)));
        let secs = |d: Option<&Duration>| {
            d.map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
        };
        r.push_str(&format!(
            "| {f:?} | {n} | {} / {} / {} | {missed} |\n",
            secs(at(50)),
            secs(at(90)),
            secs(done.last())
        ));
    }
    let mut times = final_right.clone();
    times.sort();
    if !times.is_empty() {
        r.push_str(&format!(
            "\nAfter the last heal, {} connected publishers owned their broadcasts again: p50 {:.1} s, max {:.1} s (bound {:?})\n",
            times.len(),
            times[times.len() / 2].as_secs_f64(),
            times[times.len() - 1].as_secs_f64(),
            RIGHT_WITHIN
        ));
    }
    r.push_str("\n## Memory and file descriptors (first / after warm-up / last)\n\n| process | RSS MiB | fds |\n| --- | --- | --- |\n");
    for (name, (rss, fds)) in summarize(&samples) {
        r.push_str(&format!("| {name} | {rss} | {fds} |\n"));
    }
    r.push_str("\n## Anomalies\n\n");
    for a in anomalies.iter().chain(leaks.iter()) {
        r.push_str(&format!("- {a}\n"));
    }
    std::fs::write(&report, r)?;
    history.log(
        "end",
        json!({"anomalies": anomalies.len(), "leaks": leaks.len()}),
    );
    history.flush();
    anomalies.extend(leaks);
    Ok(Outcome { anomalies, report })
}

/// Per fault healed, how long until right again (`None`: not within the
/// bound).
type RightTimes = Arc<StdMutex<Vec<(Fault, Option<Duration>)>>>;

/// The publishers running now: broadcast, node, since when.
type Published = Arc<StdMutex<Vec<(String, usize, Instant)>>>;

/// From now (a fault healed), until every publisher running since before
/// `injected` — and still running — has its broadcast owned by a node that
/// has a live publisher of it; `None` past [`RIGHT_WITHIN`].
async fn time_to_right(
    stack: &Stack,
    published: &Published,
    injected: Instant,
) -> Option<Duration> {
    let healed = Instant::now();
    while healed.elapsed() < RIGHT_WITHIN {
        let now: Vec<(String, usize, Instant)> =
            published.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut right = true;
        let through: Vec<String> = now
            .iter()
            .filter(|(_, _, since)| *since < injected)
            .map(|(b, _, _)| b.clone())
            .collect();
        for broadcast in &through {
            let holders: Vec<String> = now
                .iter()
                .filter(|(b, _, _)| b == broadcast)
                .map(|(_, n, _)| node_id(*n))
                .collect();
            let owner = stack.owner(broadcast).await;
            if !owner.is_some_and(|o| o.is_some_and(|o| holders.contains(&o))) {
                right = false;
                break;
            }
        }
        if right {
            return Some(healed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Publishers whose ffmpeg ended by itself (refused, or its node died).
fn reap(live: &mut Vec<Live>, history: &History) {
    live.retain_mut(|l| {
        let alive = l.publisher.alive();
        if !alive {
            let log = l.publisher.log_text();
            history.log(
                "publisher-ended",
                json!({"broadcast": l.broadcast, "node": node_id(l.node), "said": log.lines().last().unwrap_or("")}),
            );
        }
        alive
    });
}

/// Follows `WatchClaims` from whichever replica answers, resuming from the
/// revision after the last event seen, until `stop`.
async fn follow(
    addrs: Vec<String>,
    events: Arc<StdMutex<Vec<v1::ClaimEvent>>>,
    history: Arc<History>,
    stop: CancellationToken,
) {
    let mut next = 0usize;
    let mut from = 0i64;
    while !stop.is_cancelled() {
        let addr = addrs[next % addrs.len()].clone();
        next += 1;
        let stream = async {
            let channel = tonic::transport::Endpoint::from_shared(addr)?
                .connect_timeout(Duration::from_secs(2))
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(2))
                .connect()
                .await?;
            let mut client = v1::ownership_client::OwnershipClient::new(channel);
            Ok::<_, anyhow::Error>(
                client
                    .watch_claims(v1::WatchClaimsRequest {
                        prefix: String::new(),
                        start_revision: from,
                    })
                    .await?
                    .into_inner(),
            )
        };
        let mut stream = match tokio::time::timeout(Duration::from_secs(3), stream).await {
            Ok(Ok(s)) => s,
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = stop.cancelled() => return,
            };
            match msg {
                Ok(Some(e)) => {
                    from = e.revision + 1;
                    let c = e.claim.clone().unwrap_or_default();
                    history.log(
                        "watched",
                        json!({"kind": e.kind, "broadcast": c.broadcast, "node": c.node_id, "token": c.fencing_token, "revision": e.revision}),
                    );
                    events.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                }
                Ok(None) | Err(_) => {
                    history.log("watch-resumes", json!({"from": from}));
                    break;
                }
            }
        }
    }
}

type Samples = Vec<(String, u64, usize)>;

/// Every 5 s, each process's RSS (bytes) and open fds, until `stop`.
async fn sample(stack: Arc<Stack>, path: PathBuf, stop: CancellationToken) -> Samples {
    let mut out = Vec::new();
    let mut csv = std::fs::File::create(&path).ok();
    if let Some(f) = csv.as_mut() {
        let _ = writeln!(f, "seconds,process,rss_bytes,fds");
    }
    let start = Instant::now();
    while !stop.is_cancelled() {
        for (name, pid) in stack.pids().await {
            let (Ok(rss), Ok(fds)) = (rss(pid), open_files(pid)) else {
                continue;
            };
            if let Some(f) = csv.as_mut() {
                let _ = writeln!(f, "{:.0},{name},{rss},{fds}", start.elapsed().as_secs_f64());
            }
            out.push((name, rss, fds));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.cancelled() => {}
        }
    }
    out
}

/// Per process: RSS and fds first, after warm-up (a quarter in) and last.
fn summarize(samples: &Samples) -> BTreeMap<String, (String, String)> {
    let mut by: BTreeMap<String, Vec<(u64, usize)>> = BTreeMap::new();
    for (name, rss, fds) in samples {
        by.entry(name.clone()).or_default().push((*rss, *fds));
    }
    by.into_iter()
        .map(|(name, s)| {
            let pick = |i: usize| s[i.min(s.len() - 1)];
            let (a, b, c) = (pick(0), pick(s.len() / 4), pick(s.len() - 1));
            (
                name,
                (
                    format!("{} / {} / {}", a.0 >> 20, b.0 >> 20, c.0 >> 20),
                    format!("{} / {} / {}", a.1, b.1, c.1),
                ),
            )
        })
        .collect()
}

/// A process whose RSS or fds grew past warm-up by more than a bound:
/// RSS by half and 64 MiB, fds by 50 (a restarted process starts over,
/// so only a long enough series is judged).
fn leak_check(samples: &Samples) -> Vec<String> {
    let mut by: BTreeMap<&str, Vec<(u64, usize)>> = BTreeMap::new();
    for (name, rss, fds) in samples {
        by.entry(name).or_default().push((*rss, *fds));
    }
    let mut found = Vec::new();
    for (name, s) in by {
        if s.len() < 12 {
            continue;
        }
        let warm = &s[s.len() / 4..s.len() / 2];
        let late = &s[s.len() * 3 / 4..];
        let median = |v: &[(u64, usize)], f: fn(&(u64, usize)) -> u64| {
            let mut x: Vec<u64> = v.iter().map(f).collect();
            x.sort();
            x[x.len() / 2]
        };
        let (rss_warm, rss_late) = (median(warm, |s| s.0), median(late, |s| s.0));
        let (fds_warm, fds_late) = (median(warm, |s| s.1 as u64), median(late, |s| s.1 as u64));
        if rss_late > rss_warm + rss_warm / 2 && rss_late > rss_warm + (64 << 20) {
            found.push(format!(
                "{name}: RSS grew from {} MiB to {} MiB after warm-up",
                rss_warm >> 20,
                rss_late >> 20
            ));
        }
        if fds_late > fds_warm + 50 {
            found.push(format!(
                "{name}: open fds grew from {fds_warm} to {fds_late} after warm-up"
            ));
        }
    }
    found
}
