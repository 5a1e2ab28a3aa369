//! The soak: a whole stack, each process on a host of its own (a network
//! namespace, `netns.rs`) — a 3-member etcd, 2 claim-service replicas, 3
//! ingest nodes — with real ffmpeg publishers coming and going (each on its
//! node's host; duplicates meet each node's policy: standby, refuse,
//! takeover), HTTP-FLV viewers at random nodes, a `WatchClaims` follower that
//! resumes across replicas, and a nemesis that picks overlapping faults from
//! a seed: kill -9, SIGTERM and SIGSTOP of replicas and nodes, an etcd
//! member stopped, etcd's quorum lost, a link cut between two hosts, a host
//! losing a share of its packets, a host's packets delayed, jittered and
//! reordered (`netem.rs`), clients of a replica that stop reading
//! (watchers and a node session), a replica's wall clock stepped
//! (libfaketime), an etcd member's disk stalled (a blkio cgroup). Every
//! fault heals within its bound and the run ends by itself, then accounts
//! for every claim (see [`run`]).
//!
//! - `stack.rs`: the processes, each on its host;
//! - `faults.rs`: what the nemesis does to them, and how each fault heals;
//! - `record.rs`: what the run writes down (history, watch events,
//!   samples of memory and file descriptors) and the leak check;
//! - `releases.rs`: each claim released in time after its last publisher
//!   left;
//! - `told.rs`: what each node was told it holds, against etcd's history;
//! - `report.rs`: the report a run writes.

mod faults;
mod record;
mod releases;
mod report;
mod stack;
mod told;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::checker::Checker;
use crate::netns::Lab;
use crate::*;
use faults::{Fault, FAULTS};
use record::{follow, leak_check, sample, History, Watched};
use releases::{Leaving, Window};
use stack::{node_id, replica_addrs, Stack};

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
/// A claim is released within this of its last publisher leaving: detach
/// grace 5 s + lease TTL 10 s (the defaults the soak runs with).
pub const RELEASED_WITHIN: Duration = Duration::from_secs(15);
/// How often a wait of the accounting asks again.
const POLL: Duration = Duration::from_millis(200);

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
    let watched: Arc<StdMutex<Watched>> = Arc::default();
    let follower = tokio::spawn(follow(
        replica_addrs(&stack.replica_hosts),
        watched.clone(),
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
    let mut viewers: Vec<(String, usize, Daemon)> = Vec::new();
    let mut viewed = 0usize;
    let mut watched_to_end = 0usize;
    let mut fault_tasks = futures::stream::FuturesUnordered::new();
    let mut heal_failures = Vec::new();
    let mut counts: BTreeMap<Fault, usize> = BTreeMap::new();
    let right_times: RightTimes = Arc::default();
    let published: Published = Arc::default();
    let windows: Arc<StdMutex<Vec<Window>>> = Arc::default();
    let mut leavings: Vec<Leaving> = Vec::new();
    let mut publishes: Vec<(Instant, String)> = Vec::new();
    let ends = Instant::now() + plan.duration;
    let mut next_fault = Instant::now() + faults_rng.millis(3_000, 8_000);

    // Publishers come and go; faults start on their own schedule and
    // overlap (each lane takes one at a time).
    while Instant::now() < ends {
        reap(&mut live, &history, &mut leavings);
        watched_to_end += reap_viewers(&mut viewers, &history).await;
        if live.len() < MAX_PUBLISHERS && churn_rng.chance(0.6) {
            let broadcast = format!("soak/b{:02}", churn_rng.below(BROADCASTS));
            let node = churn_rng.below(stack.nodes.len() as u64) as usize;
            match stack.publish(node, &broadcast) {
                Ok(publisher) => {
                    history.log(
                        "publish",
                        json!({"broadcast": broadcast, "node": node_id(node)}),
                    );
                    publishes.push((Instant::now(), broadcast.clone()));
                    live.push(Live {
                        broadcast,
                        node,
                        publisher,
                        since: Instant::now(),
                    });
                }
                Err(e) => history.log("publish-failed", json!({"error": e.to_string()})),
            }
        } else if !live.is_empty() && churn_rng.chance(0.3) {
            let pick = churn_rng.below(live.len() as u64) as usize;
            let at = churn_rng.below(stack.nodes.len() as u64) as usize;
            let broadcast = live[pick].broadcast.clone();
            match stack.view(at, &broadcast) {
                Ok(viewer) => {
                    history.log("view", json!({"broadcast": broadcast, "at": node_id(at)}));
                    viewers.push((broadcast, at, viewer));
                    viewed += 1;
                }
                Err(e) => history.log("view-failed", json!({"error": e.to_string()})),
            }
        } else if !live.is_empty() && churn_rng.chance(0.4) {
            let mut gone = live.swap_remove(churn_rng.below(live.len() as u64) as usize);
            gone.publisher.kill();
            history.log(
                "unpublish",
                json!({"broadcast": gone.broadcast, "node": node_id(gone.node)}),
            );
            if !live.iter().any(|l| l.broadcast == gone.broadcast) {
                leavings.push(Leaving {
                    at: Instant::now(),
                    broadcast: gone.broadcast,
                    node: node_id(gone.node),
                    by_itself: false,
                });
            }
        }
        *lock(&published) = live
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
                Fault::PacketLoss | Fault::SlowLink => faults_rng.millis(2_000, 15_000),
                Fault::StalledClients => faults_rng.millis(2_000, 15_000),
                Fault::ClockStep => faults_rng.millis(5_000, 20_000),
                Fault::DiskStall => faults_rng.millis(2_000, 10_000),
                _ => faults_rng.millis(500, 10_000),
            };
            let pick = faults_rng.next_u64();
            *counts.entry(fault).or_default() += 1;
            let (stack, history, right_times, published, windows) = (
                stack.clone(),
                history.clone(),
                right_times.clone(),
                published.clone(),
                windows.clone(),
            );
            // Polled here, not spawned: the harness's waits are not Send.
            fault_tasks.push(Box::pin(async move {
                let injected = Instant::now();
                stack.inject(fault, pick, hold, &history).await?;
                lock(&windows).push(Window { fault, from: injected, to: Instant::now() });
                let took = time_to_right(&stack, &published, injected).await;
                history.log(
                    "right",
                    json!({"fault": format!("{fault:?}"), "after_heal_ms": took.map(|t| t.as_millis() as u64)}),
                );
                lock(&right_times).push((fault, took));
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
    // The last viewers end by themselves (4 s each).
    within(
        Duration::from_secs(15),
        POLL,
        async || {
            watched_to_end += reap_viewers(&mut viewers, &history).await;
            viewers.is_empty()
        },
        |none_left| *none_left,
    )
    .await;
    while let Some(done) = fault_tasks.next().await {
        if let Err(e) = done {
            history.log("heal-failed", json!({"error": e.to_string()}));
            heal_failures.push(format!("a fault did not heal: {e:#}"));
        }
    }
    reap(&mut live, &history, &mut leavings);

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
        let (last, right_at) = within(
            RIGHT_WITHIN.saturating_sub(healed.elapsed()),
            POLL,
            async || stack.owner(&l.broadcast).await,
            |owner| {
                owner
                    .as_ref()
                    .is_some_and(|o| o.as_ref().is_some_and(|o| holders.contains(o)))
            },
        )
        .await;
        match right_at {
            Some(_) => final_right.push(healed.elapsed()),
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
    let (in_etcd, _) = within(
        RIGHT_WITHIN,
        POLL,
        async || stack.claims_in_etcd().await,
        |n| matches!(n, Ok(0)),
    )
    .await;
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

    // The whole watch history: tokens never go back, one holder at a
    // time (in each stretch the watch followed without a gap).
    let watched = std::mem::take(&mut *lock(&watched));
    for segment in watched.segments() {
        let checker = Checker {
            watched: segment,
            ..Default::default()
        };
        anomalies.extend(checker.check());
        anomalies.extend(checker.one_holder_at_a_time());
    }
    // What each node was told it holds: claims etcd had, tokens rising.
    for (i, node) in stack.nodes.iter().enumerate() {
        stack.keep_told(i, &*node.lock().await);
    }
    let told = std::mem::take(&mut *lock(&stack.told));
    anomalies.extend(told::check(&told, &watched));
    // Each release in time.
    let releases = releases::check(
        &leavings,
        &publishes,
        &lock(&windows),
        &watched,
        RELEASED_WITHIN,
    );
    anomalies.extend(releases.anomalies.iter().cloned());
    let leaks = leak_check(&samples);

    let report = plan.out.join("report.md");
    std::fs::write(
        &report,
        report::render(&report::Findings {
            plan: &plan,
            anomalies: &anomalies,
            leaks: &leaks,
            watched: &watched,
            told: told.len(),
            all_released,
            viewed,
            watched_to_end,
            counts: &counts,
            right_times: &lock(&right_times),
            final_right: &final_right,
            releases: &releases,
            samples: &samples,
        }),
    )?;
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
    let all_owned = async || {
        let now: Vec<(String, usize, Instant)> = lock(published).clone();
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
                return false;
            }
        }
        true
    };
    within(RIGHT_WITHIN, POLL, all_owned, |right| *right)
        .await
        .1
}

/// Viewers whose ffmpeg ended, logged with how; how many decoded to their
/// end (exit 0).
async fn reap_viewers(viewers: &mut Vec<(String, usize, Daemon)>, history: &History) -> usize {
    let mut ok = 0;
    let mut i = 0;
    while i < viewers.len() {
        if viewers[i].2.alive() {
            i += 1;
            continue;
        }
        let (broadcast, at, mut viewer) = viewers.swap_remove(i);
        let success = viewer.wait_exit().await.is_ok_and(|s| s.success());
        ok += usize::from(success);
        let log = viewer.log_text();
        history.log(
            "viewer-ended",
            json!({"broadcast": broadcast, "at": node_id(at), "ok": success, "said": log.lines().last().unwrap_or("")}),
        );
    }
    ok
}

/// Publishers whose ffmpeg ended by itself (refused, or its node died):
/// the last of a broadcast to end is a leaving, timed like the soak's own.
fn reap(live: &mut Vec<Live>, history: &History, leavings: &mut Vec<Leaving>) {
    let mut ended = Vec::new();
    live.retain_mut(|l| {
        let alive = l.publisher.alive();
        if !alive {
            let log = l.publisher.log_text();
            history.log(
                "publisher-ended",
                json!({"broadcast": l.broadcast, "node": node_id(l.node), "said": log.lines().last().unwrap_or("")}),
            );
            ended.push((l.broadcast.clone(), node_id(l.node)));
        }
        alive
    });
    let at = Instant::now();
    for (broadcast, node) in ended {
        if !live.iter().any(|l| l.broadcast == broadcast) {
            leavings.push(Leaving {
                at,
                broadcast,
                node,
                by_itself: true,
            });
        }
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
