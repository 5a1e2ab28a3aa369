//! What the nemesis does: each fault applied to the target its pick
//! chooses, held, then healed; lanes keep one fault per replica, node,
//! etcd, network and client at a time.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::record::History;
use super::stack::{node_id, replica_addrs, until_started_mut, Stack};
use super::FAKETIME;
use crate::netns::Host;
use crate::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Fault {
    ReplicaKill,
    ReplicaTerm,
    ReplicaPause,
    NodeKill,
    NodeTerm,
    NodePause,
    /// An etcd member killed (-9), stopped (SIGTERM) or paused (SIGSTOP),
    /// then started again or resumed.
    EtcdMemberStop,
    EtcdQuorumLoss,
    /// A link cut both ways: a node from a replica, a replica from an etcd
    /// member, or two etcd members from each other.
    Partition,
    /// A host drops 1-30 % of its packets, both ways.
    PacketLoss,
    /// A host's outgoing packets wait 10-500 ms, ± a jitter of up to half
    /// that, and up to a quarter of them overtake the rest (reordering):
    /// a `netem` process inside the host (`netem.rs`; the kernel has no
    /// netem qdisc).
    SlowLink,
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

pub(super) const FAULTS: [Fault; 14] = [
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
    Fault::SlowLink,
    Fault::StalledClients,
    Fault::ClockStep,
    Fault::DiskStall,
];

pub(super) fn fault_line(fault: Fault, target: &str, hold: Duration) -> serde_json::Value {
    json!({"fault": format!("{fault:?}"), "target": target, "hold_ms": hold.as_millis() as u64})
}

impl Stack {
    /// Applies `fault` (to the target `pick` chooses), lets it last `hold`,
    /// heals it; what it did, for the history.
    pub(super) async fn inject(
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
                    self.keep_told(i, &n);
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
            Fault::SlowLink => {
                let _lane = self.network_lane.lock().await;
                let host = self.any_host(pick);
                let delay = 10 + pick / 64 % 491;
                let jitter = pick / 32_000 % (delay / 2 + 1);
                let reorder = pick / 8_000_000 % 26;
                let target = format!(
                    "{} delays by {delay} ± {jitter} ms, {reorder} % reordered",
                    host.ns
                );
                history.log("fault", fault_line(fault, &target, hold));
                self.lab.shape(host, 0)?;
                let mut cmd = host.command(binary("netem"));
                cmd.args(["--delay-ms", &delay.to_string()])
                    .args(["--jitter-ms", &jitter.to_string()])
                    .args(["--reorder-percent", &reorder.to_string()])
                    .args(["--seed", &pick.to_string()])
                    .args(["--seconds", &format!("{:.3}", hold.as_secs_f64())]);
                let mut netem = Daemon::spawn("netem", cmd)?;
                tokio::time::sleep(hold).await;
                self.lab.heal(host)?;
                // It lets its held packets go and exits by itself.
                let ended = tokio::time::timeout(NETEM_ENDS_WITHIN, netem.wait_exit()).await;
                // What it held (or why it failed), for the history.
                let what = if matches!(ended, Ok(Ok(s)) if s.success()) {
                    "netem-ended"
                } else {
                    "netem-failed"
                };
                history.log(
                    what,
                    json!({"host": host.ns, "said": netem.log_text().trim()}),
                );
                history.log("heal", fault_line(fault, &target, hold));
            }
            Fault::PacketLoss => {
                let _lane = self.network_lane.lock().await;
                let host = self.any_host(pick);
                let percent = 1 + (pick / 64 % 30) as u32;
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
                // A single member is killed, stopped or paused; a quorum
                // is lost by killing.
                let how = if fault == Fault::EtcdQuorumLoss {
                    "kill"
                } else {
                    ["kill", "term", "pause"][(pick / 3 % 3) as usize]
                };
                let target = format!("etcd {victims:?} ({how})");
                history.log("fault", fault_line(fault, &target, hold));
                {
                    let mut etcd = self.etcd.lock().await;
                    for v in &victims {
                        match how {
                            "kill" => etcd.members[*v].kill(),
                            "term" => etcd.members[*v].terminate(),
                            _ => etcd.members[*v].signal(libc::SIGSTOP),
                        }
                    }
                }
                tokio::time::sleep(hold).await;
                let mut etcd = self.etcd.lock().await;
                for v in &victims {
                    let member = &mut etcd.members[*v];
                    if how == "pause" {
                        member.signal(libc::SIGCONT);
                    } else {
                        until_started_mut(member).await?;
                    }
                }
                history.log("heal", fault_line(fault, &target, hold));
            }
        }
        Ok(())
    }
}

/// A netem process lets its held packets go (at most 750 ms each) and
/// exits within this of its end.
const NETEM_ENDS_WITHIN: Duration = Duration::from_secs(5);

impl Stack {
    /// One of every host, as `pick` says.
    fn any_host(&self, pick: u64) -> &Host {
        let all: Vec<&Host> = self
            .etcd_hosts
            .iter()
            .chain(&self.replica_hosts)
            .chain(&self.node_hosts)
            .collect();
        all[pick as usize % all.len()]
    }
}

/// A process's writes to the disk under the temp folder held to a few a
/// second: a blkio (cgroup v1) group of its own.
pub(super) struct DiskStall {
    pub(super) group: PathBuf,
    pub(super) pid: u32,
    pub(super) device: String,
}

impl DiskStall {
    pub(super) fn start(name: &str, pid: u32, iops: u64) -> Result<Self> {
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
    pub(super) fn end(self) -> Result<()> {
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
pub(super) async fn stall(addr: &str) -> Result<(Vec<tonic::Streaming<v1::ClaimEvent>>, Node)> {
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
