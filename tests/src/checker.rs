//! The checker of the fault scenarios: it records everything users saw —
//! what each node was told, and the full WatchClaims history — and asserts
//! the invariants after a scenario: per broadcast, fencing tokens never go
//! back (a new claim has a larger token, an adoption keeps it), and no two
//! nodes were told they hold a broadcast at once. Scenarios repeat
//! (`CLAIMS_FAULT_RUNS`, default 2) with randomized timing, and each run's
//! outcome goes to a report (`target/fault-report.md`).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::v1 as pb;
use pb::claim_event::Kind;
use pb::service_message::Msg;

/// How many times each scenario runs.
pub fn runs() -> usize {
    std::env::var("CLAIMS_FAULT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2)
}

/// Everything users saw, in order of arrival.
#[derive(Default)]
pub struct Checker {
    /// (when, node, broadcast, told): told is "claimed", "lost", "released"
    /// or "ended" (the node's session ended).
    pub told: Vec<(Instant, String, String, &'static str, i64)>,
    pub watched: Vec<pb::ClaimEvent>,
}

impl Checker {
    pub fn node_saw(&mut self, node: &str, msg: &Msg) {
        let now = Instant::now();
        match msg {
            Msg::Claimed(c) => {
                let c = c.claim.clone().unwrap_or_default();
                self.told
                    .push((now, node.into(), c.broadcast, "claimed", c.fencing_token));
            }
            Msg::Lost(l) => self
                .told
                .push((now, node.into(), l.broadcast.clone(), "lost", 0)),
            Msg::Released(r) => {
                self.told
                    .push((now, node.into(), r.broadcast.clone(), "released", 0))
            }
            _ => {}
        }
    }

    pub fn session_ended(&mut self, node: &str) {
        self.told
            .push((Instant::now(), node.into(), String::new(), "ended", 0));
    }

    /// The invariants; returns how many anomalies were found, with details.
    pub fn check(&self) -> Vec<String> {
        let mut anomalies = Vec::new();
        // Fencing tokens per broadcast, from the watch history.
        let mut last: BTreeMap<String, i64> = BTreeMap::new();
        for e in &self.watched {
            let c = e.claim.clone().unwrap_or_default();
            let kind = Kind::try_from(e.kind).unwrap_or(Kind::Unspecified);
            let prev = last.get(&c.broadcast).copied();
            match kind {
                Kind::Claimed => {
                    if prev.is_some_and(|p| c.fencing_token <= p) {
                        anomalies.push(format!(
                            "{}: token {} after {prev:?}",
                            c.broadcast, c.fencing_token
                        ));
                    }
                    last.insert(c.broadcast, c.fencing_token);
                }
                Kind::Adopted => {
                    if prev.is_some_and(|p| c.fencing_token != p) {
                        anomalies.push(format!(
                            "{}: adopted with token {} after {prev:?}",
                            c.broadcast, c.fencing_token
                        ));
                    }
                    last.insert(c.broadcast, c.fencing_token);
                }
                _ => {}
            }
        }
        // No two nodes holding one broadcast at once, per what they were told.
        let mut holder: BTreeMap<String, String> = BTreeMap::new();
        for (_, node, broadcast, told, _) in &self.told {
            match *told {
                "claimed" => {
                    if let Some(other) = holder.get(broadcast).filter(|h| *h != node) {
                        anomalies.push(format!(
                            "{broadcast}: {node} told claimed while {other} holds it"
                        ));
                    }
                    holder.insert(broadcast.clone(), node.clone());
                }
                "lost" | "released" if holder.get(broadcast) == Some(node) => {
                    holder.remove(broadcast);
                }
                "ended" => holder.retain(|_, h| h != node),
                _ => {}
            }
        }
        anomalies
    }

    /// No two holders at once in the watch history itself: a broadcast is
    /// claimed again only after its claim was released (an adoption keeps
    /// its holder).
    pub fn one_holder_at_a_time(&self) -> Vec<String> {
        let mut anomalies = Vec::new();
        let mut holder: BTreeMap<String, (String, i64)> = BTreeMap::new();
        for e in &self.watched {
            let c = e.claim.clone().unwrap_or_default();
            match Kind::try_from(e.kind).unwrap_or(Kind::Unspecified) {
                Kind::Claimed | Kind::Adopted => {
                    if let Some((other, token)) = holder.get(&c.broadcast) {
                        if (*other != c.node_id || *token != c.fencing_token)
                            && e.kind == Kind::Claimed as i32
                        {
                            anomalies.push(format!(
                                    "{}: claimed by {} (token {}) at revision {} while {other} held it (token {token}) unreleased",
                                    c.broadcast, c.node_id, c.fencing_token, e.revision
                                ));
                        }
                    }
                    holder.insert(c.broadcast, (c.node_id, c.fencing_token));
                }
                Kind::Released => {
                    if holder
                        .get(&c.broadcast)
                        .is_some_and(|(_, t)| *t == c.fencing_token)
                    {
                        holder.remove(&c.broadcast);
                    }
                }
                Kind::Unspecified => {}
            }
        }
        anomalies
    }

    pub fn releases(&self) -> usize {
        self.watched
            .iter()
            .filter(|e| e.kind == Kind::Released as i32)
            .count()
    }
}

/// Per-scenario outcomes, appended to `target/fault-report.md`.
pub struct Report {
    scenario: &'static str,
    times: Vec<Duration>,
    releases: usize,
    anomalies: usize,
}

impl Report {
    pub fn new(scenario: &'static str) -> Self {
        Self {
            scenario,
            times: Vec::new(),
            releases: 0,
            anomalies: 0,
        }
    }

    /// One run: how long until the system was right again, RELEASED events
    /// seen, anomalies the checker found.
    pub fn run(&mut self, time_to_right: Duration, releases: usize, anomalies: usize) {
        self.times.push(time_to_right);
        self.releases += releases;
        self.anomalies += anomalies;
    }

    /// Writes the line; call once the runs are over.
    pub fn write(mut self) {
        self.times.sort();
        let median = self
            .times
            .get(self.times.len() / 2)
            .copied()
            .unwrap_or_default();
        let max = self.times.last().copied().unwrap_or_default();
        let line = format!(
            "| {} | {} | {:.2} s | {:.2} s | {} | {} |\n",
            self.scenario,
            self.times.len(),
            median.as_secs_f64(),
            max.as_secs_f64(),
            self.releases,
            self.anomalies
        );
        eprint!("{line}");
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fault-report.md");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// A random pause of up to `max_ms`, for randomized timing.
pub fn jitter(max_ms: u64) -> Duration {
    Duration::from_millis(crate::rand_u64() % (max_ms + 1))
}
