//! The bridge's rules, without I/O: what each local broadcast's claim state
//! is, as one session with a claim service learns it ([`ClaimBook`]), what a
//! publish waiting for its answer is told ([`decision`]), and how long to
//! wait before reconnecting ([`Reconnect`]). The async part in `bridge.rs`
//! only moves messages.
//!
//! Invariants: a broadcast has a state exactly while it has a live track as
//! far as the session has forwarded; an answer about a broadcast that is no
//! longer live changes nothing; a refused extra track never undoes a claim;
//! while no session is open every state is `Unknown`.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use claims_proto::v1 as pb;
use pb::node_message::Msg as NodeMsg;
use pb::service_message::Msg as ServiceMsg;

use super::{BridgeView, ClaimState, Decision};
use crate::registry::{Change, Lifecycle};

/// Live tracks per broadcast as of the last change the session forwarded
/// (the registry itself may already be ahead), and what they mean for the
/// published picture.
#[derive(Debug, Default)]
pub struct ClaimBook {
    live: HashMap<String, usize>,
}

impl ClaimBook {
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

    /// Applies what the claim service said to the picture.
    pub fn answer(&self, msg: ServiceMsg, view: &mut BridgeView) {
        let (broadcast, next) = match msg {
            ServiceMsg::Claimed(c) => {
                let Some(claim) = c.claim else { return };
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
                };
                (c.broadcast, state)
            }
            // Still live: published again, the service claims it anew.
            ServiceMsg::Released(r) => (r.broadcast, ClaimState::Pending),
            ServiceMsg::Lost(l) => (l.broadcast, ClaimState::Lost { reason: l.reason }),
            ServiceMsg::Retrying(r) => (r.broadcast, ClaimState::Retrying { reason: r.reason }),
            ServiceMsg::Rejected(r) => {
                // One track over a limit does not undo the broadcast's claim.
                if matches!(
                    view.states.get(&r.broadcast),
                    Some(ClaimState::Claimed { .. })
                ) {
                    return;
                }
                (r.broadcast, ClaimState::Rejected { reason: r.reason })
            }
            ServiceMsg::Draining(d) => {
                view.draining = d.draining;
                return;
            }
            ServiceMsg::Welcome(_) => return,
        };
        // Answers about broadcasts no longer live here are history.
        if self.live.contains_key(&broadcast) {
            view.states.insert(broadcast, next);
        }
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
            ..
        }) => Decision::OwnedElsewhere {
            owner_node: owner_node.clone(),
            owner_rtmp: owner_rtmp.clone(),
        },
        Some(ClaimState::Rejected { reason }) => Decision::Rejected {
            reason: reason.clone(),
        },
        Some(ClaimState::Retrying { reason }) | Some(ClaimState::Lost { reason }) => {
            Decision::Unavailable {
                reason: reason.clone(),
            }
        }
        _ => Decision::Unavailable {
            reason: "claim state unknown".into(),
        },
    })
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
