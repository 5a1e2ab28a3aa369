//! The bridge's rules, without I/O, and the types they speak in: what each
//! local broadcast's claim state is ([`ClaimState`], the [`BridgeView`]), as
//! one session with a claim service learns it ([`ClaimBook`]), what a
//! publish waiting for its answer is told ([`decision`], [`Decision`]) and
//! how long it is held ([`Hold`], under the [`DuplicatePolicy`]), and how
//! long to wait before reconnecting ([`Reconnect`]). The async part in
//! `bridge.rs` only moves messages.
//!
//! Invariants: a broadcast has a state exactly while it has a live track as
//! far as the session has forwarded; an answer about a broadcast that is no
//! longer live changes nothing; a refused extra track never undoes a claim;
//! while no session is open every state is `Unknown`; a takeover is asked
//! for at most once per claim answer, only under the `takeover` policy, and
//! never of an owner that is gone (its claim moves by itself).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use claims_proto::v1 as pb;
use pb::node_message::Msg as NodeMsg;
use pb::service_message::Msg as ServiceMsg;

use serde::Serialize;

use crate::registry::{Change, Lifecycle};

/// The claim state of one local broadcast.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ClaimState {
    /// Asked for, no answer yet.
    Pending,
    Claimed {
        fencing_token: i64,
        lease_id: i64,
        adopted: bool,
    },
    /// Another node owns it; this node would be offered it on release.
    Standby {
        owner_node: String,
        owner_rtmp: Option<String>,
        owner_http: Option<String>,
        fencing_token: i64,
        /// The owner's node is gone (its claims are kept only for the
        /// detach grace): nobody is sent there.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        owner_detached: bool,
        /// When that grace ends (0: unknown, the lease TTL bounds it).
        #[serde(skip_serializing_if = "is_zero")]
        grace_ends_unix_ms: i64,
    },
    /// A held claim went away; the service claims it again while live —
    /// unless another node took it over (`taken_by`): then this node's
    /// publisher is dropped.
    Lost {
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        taken_by: Option<String>,
    },
    /// The service cannot reach its store and keeps trying.
    Retrying { reason: String },
    /// The service refused the name.
    Rejected { reason: String },
    /// No claim service answers.
    Unknown,
}

impl ClaimState {
    pub fn label(&self) -> &'static str {
        match self {
            ClaimState::Pending => "pending",
            ClaimState::Claimed { .. } => "claimed",
            ClaimState::Standby { .. } => "standby",
            ClaimState::Lost { .. } => "lost",
            ClaimState::Retrying { .. } => "retrying",
            ClaimState::Rejected { .. } => "rejected",
            ClaimState::Unknown => "unknown",
        }
    }

    /// Whether another node now holds the claim of `broadcast` while a
    /// publisher here still publishes it: taken over (a newer publisher
    /// there won), or claimed there while this claim was lost. Either way
    /// the publisher here must go, told why.
    pub fn overtaken(&self, broadcast: &str) -> Option<Overtaken> {
        match self {
            ClaimState::Lost {
                taken_by: Some(by), ..
            } => Some(Overtaken {
                by: by.clone(),
                label: "taken_over",
                reason: format!(
                    "{broadcast} was taken over by node {by} (a newer publisher there won)"
                ),
            }),
            ClaimState::Standby { owner_node, .. } => Some(Overtaken {
                by: owner_node.clone(),
                label: "owned_elsewhere",
                reason: format!("{broadcast} is now owned by node {owner_node}"),
            }),
            _ => None,
        }
    }

    pub const LABELS: [&'static str; 7] = [
        "pending", "claimed", "standby", "lost", "retrying", "rejected", "unknown",
    ];
}

/// Another node holds a claim a publisher here still publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overtaken {
    /// The node that holds it now.
    pub by: String,
    /// The `reason` label of `ingest_publishes_refused_total`.
    pub label: &'static str,
    /// What the publisher (and the log) is told.
    pub reason: String,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// What this node does with a publisher of a broadcast another node owns
/// (`--duplicate-publisher`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DuplicatePolicy {
    /// Refuse it, naming the owner.
    #[default]
    Refuse,
    /// Hold it (no media accepted, nothing claimed) and accept it the
    /// moment the owner's publisher leaves; refuse it after --claim-wait.
    Standby,
    /// The newest publisher wins: the claim moves here (fenced) and the
    /// owner drops its publisher.
    Takeover,
}

/// What the bridge knows, as one consistent picture.
#[derive(Debug, Clone, Default)]
pub struct BridgeView {
    /// A session is open and welcomed.
    pub connected: bool,
    /// The last registry change the session has forwarded.
    pub processed: u64,
    pub states: BTreeMap<String, ClaimState>,
    /// Which claim service the session is on.
    pub service: Option<String>,
    /// An operator asked this node to take no new publishers.
    pub draining: bool,
}

/// The answer a publish waits for.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Claimed {
        fencing_token: i64,
    },
    OwnedElsewhere {
        owner_node: String,
        owner_rtmp: Option<String>,
        /// The owner's node is gone; its claim moves when the grace ends.
        owner_detached: bool,
        grace_ends_unix_ms: i64,
    },
    Rejected {
        reason: String,
    },
    /// No claim service could answer in time.
    Unavailable {
        reason: String,
    },
}

/// Live tracks per broadcast as of the last change the session forwarded
/// (the registry itself may already be ahead), and what they mean for the
/// published picture.
///
/// This is not a second truth of what is live: the registry says what is
/// live now, this what the claim service has been told so far, which is
/// what an answer from it is about (an answer for a broadcast closed since
/// is history). The service's rules keep their own copy because they run
/// in another process.
#[derive(Debug, Default)]
pub struct ClaimBook {
    live: HashMap<String, usize>,
    duplicates: DuplicatePolicy,
}

impl ClaimBook {
    pub fn new(duplicates: DuplicatePolicy) -> Self {
        Self {
            live: HashMap::new(),
            duplicates,
        }
    }

    /// A session to `service` was welcomed, its `hello` listing `live` as
    /// of registry change `seq`: every live broadcast waits for its answer,
    /// nothing else has a state.
    pub fn welcome(
        &mut self,
        live: &[(String, String)],
        seq: u64,
        service: &str,
        view: &mut BridgeView,
    ) {
        self.live.clear();
        for (broadcast, _) in live {
            *self.live.entry(broadcast.clone()).or_default() += 1;
        }
        view.connected = true;
        view.processed = seq;
        view.service = Some(service.to_string());
        let broadcasts: BTreeSet<&String> = self.live.keys().collect();
        view.states.retain(|b, _| broadcasts.contains(b));
        for b in broadcasts {
            view.states.insert(b.clone(), ClaimState::Pending);
        }
    }

    /// Forwards a registry change: the message for the claim service, with
    /// the picture updated (a broadcast that became live waits for a new
    /// answer; one no longer live has no state).
    pub fn forward(&mut self, change: Change, view: &mut BridgeView) -> NodeMsg {
        let (broadcast, msg, created) = match change.lifecycle {
            Lifecycle::Created { broadcast, track } => {
                let msg = NodeMsg::Created(pb::Track {
                    broadcast: broadcast.clone(),
                    track,
                });
                (broadcast, msg, true)
            }
            Lifecycle::Closed { broadcast, track } => {
                let msg = NodeMsg::Closed(pb::Track {
                    broadcast: broadcast.clone(),
                    track,
                });
                (broadcast, msg, false)
            }
        };
        let count = self.live.entry(broadcast.clone()).or_default();
        let was = *count;
        *count = if created {
            count.saturating_add(1)
        } else {
            count.saturating_sub(1)
        };
        let now = *count;
        if now == 0 {
            self.live.remove(&broadcast);
        }
        view.processed = change.seq;
        if was == 0 && now > 0 {
            // The broadcast became live: a new claim episode.
            view.states.insert(broadcast, ClaimState::Pending);
        } else if now == 0 {
            view.states.remove(&broadcast);
        }
        msg
    }

    /// Applies what the claim service said to the picture; what to ask in
    /// turn: under the `takeover` policy, a broadcast that just became live
    /// here and met an owner that is there asks for its claim.
    pub fn answer(&self, msg: ServiceMsg, view: &mut BridgeView) -> Option<NodeMsg> {
        let (broadcast, next) = match msg {
            ServiceMsg::Claimed(c) => {
                let claim = c.claim?;
                let state = ClaimState::Claimed {
                    fencing_token: claim.fencing_token,
                    lease_id: claim.lease_id,
                    adopted: c.adopted,
                };
                (claim.broadcast, state)
            }
            ServiceMsg::Conflict(c) => {
                let owner = c.owner.unwrap_or_default();
                let state = ClaimState::Standby {
                    owner_rtmp: owner.endpoints.get("rtmp").cloned(),
                    owner_http: owner.endpoints.get("http").cloned(),
                    owner_node: owner.node_id,
                    fencing_token: owner.fencing_token,
                    owner_detached: owner.detached,
                    grace_ends_unix_ms: owner.grace_ends_unix_ms,
                };
                let ask = self.duplicates == DuplicatePolicy::Takeover
                    && !owner.detached
                    && self.live.contains_key(&c.broadcast)
                    && view.states.get(&c.broadcast) == Some(&ClaimState::Pending);
                let takeover = ask.then(|| {
                    NodeMsg::Takeover(pb::Takeover {
                        broadcast: c.broadcast.clone(),
                        fencing_token: owner.fencing_token,
                    })
                });
                if !self.live.contains_key(&c.broadcast) {
                    return None;
                }
                view.states.insert(c.broadcast, state);
                return takeover;
            }
            // Still live: published again, the service claims it anew.
            ServiceMsg::Released(r) => (r.broadcast, ClaimState::Pending),
            ServiceMsg::Lost(l) => {
                let state = ClaimState::Lost {
                    reason: l.reason,
                    taken_by: Some(l.taken_by).filter(|by| !by.is_empty()),
                };
                (l.broadcast, state)
            }
            ServiceMsg::Retrying(r) => (r.broadcast, ClaimState::Retrying { reason: r.reason }),
            ServiceMsg::Rejected(r) => {
                // One track over a limit does not undo the broadcast's claim.
                if matches!(
                    view.states.get(&r.broadcast),
                    Some(ClaimState::Claimed { .. })
                ) {
                    return None;
                }
                (r.broadcast, ClaimState::Rejected { reason: r.reason })
            }
            ServiceMsg::Draining(d) => {
                view.draining = d.draining;
                return None;
            }
            // The session ends and the node attaches elsewhere: the
            // picture stays as it is until then.
            ServiceMsg::Welcome(_) | ServiceMsg::Move(_) => return None,
        };
        // Answers about broadcasts no longer live here are history.
        if self.live.contains_key(&broadcast) {
            view.states.insert(broadcast, next);
        }
        None
    }

    /// Whether `broadcast` has a live track as far as the session knows.
    pub fn is_live(&self, broadcast: &str) -> bool {
        self.live.contains_key(broadcast)
    }
}

/// The session is gone: nobody answers for any broadcast until the next.
pub fn disconnected(view: &mut BridgeView) {
    view.connected = false;
    view.service = None;
    for state in view.states.values_mut() {
        *state = ClaimState::Unknown;
    }
}

/// What a publish that made `broadcast` live at registry change `seq` is
/// told, once the picture holds an answer to it; `None` while it waits.
pub fn decision(view: &BridgeView, broadcast: &str, seq: u64) -> Option<Decision> {
    if !view.connected {
        return Some(Decision::Unavailable {
            reason: "no claim service reachable".into(),
        });
    }
    let state = view.states.get(broadcast);
    if view.processed < seq || matches!(state, Some(ClaimState::Pending) | None) {
        return None;
    }
    Some(match state {
        Some(ClaimState::Claimed { fencing_token, .. }) => Decision::Claimed {
            fencing_token: *fencing_token,
        },
        Some(ClaimState::Standby {
            owner_node,
            owner_rtmp,
            owner_detached,
            grace_ends_unix_ms,
            ..
        }) => Decision::OwnedElsewhere {
            owner_node: owner_node.clone(),
            owner_rtmp: owner_rtmp.clone(),
            owner_detached: *owner_detached,
            grace_ends_unix_ms: *grace_ends_unix_ms,
        },
        Some(ClaimState::Rejected { reason }) => Decision::Rejected {
            reason: reason.clone(),
        },
        Some(ClaimState::Retrying { reason }) | Some(ClaimState::Lost { reason, .. }) => {
            Decision::Unavailable {
                reason: reason.clone(),
            }
        }
        _ => Decision::Unavailable {
            reason: "claim state unknown".into(),
        },
    })
}

/// How long a publish that met another owner is held before it is told
/// so: under `standby` and `takeover`, up to the claim wait (the owner's
/// publisher may leave, or the takeover land); whatever the policy, while
/// the owner's node is gone, until its grace ends and the claim moves —
/// even past the claim wait — plus [`Hold::SETTLE`] for the claim to land.
#[derive(Debug, Clone, Copy)]
pub struct Hold {
    pub duplicates: DuplicatePolicy,
    pub claim_wait: Duration,
}

impl Hold {
    /// Time for a released claim to reach this node, past a grace's end.
    pub const SETTLE: Duration = Duration::from_secs(2);
    /// How long a gone owner whose grace end is unknown (its replica died
    /// too) may keep its claim: the longest lease TTL a service grants by
    /// default.
    pub const UNKNOWN_GRACE: Duration = Duration::from_secs(60);

    /// Whether a publish told `decision` keeps waiting.
    pub fn holds(&self, decision: &Decision) -> bool {
        match decision {
            Decision::OwnedElsewhere { owner_detached, .. } => {
                *owner_detached || self.duplicates != DuplicatePolicy::Refuse
            }
            _ => false,
        }
    }

    /// Until when a publish that began at `started` may wait, holding
    /// behind `held` (if anything), seen at `now` (`now_unix_ms` on the
    /// wall clock claims carry times on).
    pub fn deadline(
        &self,
        held: Option<&Decision>,
        started: Instant,
        now: Instant,
        now_unix_ms: i64,
    ) -> Instant {
        let waited = started + self.claim_wait;
        match held {
            Some(Decision::OwnedElsewhere {
                owner_detached: true,
                grace_ends_unix_ms,
                ..
            }) => {
                let grace = if *grace_ends_unix_ms > 0 {
                    Duration::from_millis((*grace_ends_unix_ms - now_unix_ms).max(0) as u64)
                } else {
                    Self::UNKNOWN_GRACE
                };
                waited.max(now + grace + Self::SETTLE)
            }
            _ => waited,
        }
    }
}

/// Reconnect backoff: 200 ms doubling to 5 s, reset by a session that
/// lasted [`Reconnect::HEALTHY`]; the caller spreads it with jitter.
#[derive(Debug, Default)]
pub struct Reconnect {
    failures: u32,
}

impl Reconnect {
    pub const HEALTHY: Duration = Duration::from_secs(10);
    const MAX: Duration = Duration::from_secs(5);

    /// The wait before the next attempt, after a session that lasted
    /// `lasted` (zero: it never started).
    pub fn after(&mut self, lasted: Duration) -> Duration {
        if lasted >= Self::HEALTHY {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(100u64 << self.failures.min(6)).min(Self::MAX)
    }
}

#[cfg(test)]
mod tests;
