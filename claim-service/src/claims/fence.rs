//! The rules of a session as a whole: the node record every claim is fenced
//! by, a newer session of the same node superseding this one, the draining
//! mark, an operator's forced release, and a view that lagged.
//!
//! A session's claims are made only under the lease of its own node record
//! (the claim transaction checks it): a newer session of the node, on any
//! replica, rewrites the record, and from then on every claim of the older
//! one fails. So a claim waits until the record is written, and a record
//! written by another session ends this one: superseded, it keeps its held
//! claims for the grace (the newer session adopts them) and claims nothing
//! new.

use super::node::{Mode, NodeClaims};
use super::{Action, ClaimOutcome, Event, Reply};

/// This session's node record, as far as the rules know it.
#[derive(Debug)]
pub(super) struct Fence {
    session_id: String,
    /// The record's lease while it is written (claims are made under it).
    lease: Option<i64>,
    /// The etcd revision this session last wrote the record at (0: never).
    revision: i64,
    /// Broadcasts whose claim waits for the record to be written.
    unfenced: Vec<String>,
    /// What the node was last told about draining.
    told_draining: bool,
}

impl Fence {
    pub(super) fn new(session_id: &str) -> Self {
        Self {
            session_id: session_id.to_string(),
            lease: None,
            revision: 0,
            unfenced: Vec::new(),
            told_draining: false,
        }
    }

    /// The record's lease, now no longer this session's to keep.
    pub(super) fn take_lease(&mut self) -> Option<i64> {
        self.lease.take()
    }

    /// Takes `broadcast` off the claims waiting for the record; whether it
    /// was there.
    pub(super) fn unfence(&mut self, broadcast: &str) -> bool {
        let before = self.unfenced.len();
        self.unfenced.retain(|b| b != broadcast);
        self.unfenced.len() != before
    }

    /// Whether `session_id` is another session's (an empty one is none).
    fn is_other(&self, session_id: &str) -> bool {
        !session_id.is_empty() && session_id != self.session_id
    }
}

impl NodeClaims {
    /// The lease of this session's node record, while it is written.
    pub fn record_lease(&self) -> Option<i64> {
        self.fence.lease
    }

    /// Whether the node was told it is draining.
    pub fn is_draining(&self) -> bool {
        self.fence.told_draining
    }

    pub(super) fn session_event(&mut self, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::RecordWritten {
                lease_id,
                revision,
                draining,
            } => {
                self.fence.lease = Some(lease_id);
                self.fence.revision = revision;
                out.push(Action::KeepRecord { lease_id });
                self.tell_draining(draining, out);
                for broadcast in std::mem::take(&mut self.fence.unfenced) {
                    out.push(Action::claim(broadcast));
                }
            }
            Event::RecordFailed { reason } => self.answer_unfenced(&reason, out),
            Event::RecordTaken { by } => self.supersede(format!("session {by}"), out),
            Event::Fenced {
                broadcast,
                session_id,
            } => {
                // Another session's record supersedes this one; its own
                // renewed record, or none (lost in an outage and being
                // written again), only means: try again.
                let taken = self.fence.is_other(&session_id);
                let reason = if taken {
                    format!("session {session_id} of this node took over")
                } else {
                    "this session's node record is being renewed; retrying".to_string()
                };
                if taken {
                    // Ended first: the claim is then dropped, not retried.
                    self.supersede(format!("session {session_id}"), out);
                }
                let outcome = ClaimOutcome::Unavailable { reason };
                self.answered(broadcast, outcome, out);
            }
            Event::NodeSeen {
                session_id,
                draining,
                revision,
            } => {
                if session_id == self.fence.session_id {
                    self.tell_draining(draining, out);
                } else if self.fence.is_other(&session_id)
                    && self.fence.revision > 0
                    && revision > self.fence.revision
                {
                    // A newer session of this node, on any replica.
                    self.supersede(format!("session {session_id}"), out);
                }
            }
            Event::Superseded => self.supersede("on this replica".to_string(), out),
            Event::Forced {
                broadcast,
                fencing_token,
                reason,
            } => {
                if let Some(lease_id) = self.held_with_token(&broadcast, fencing_token) {
                    let reason = format!("force-released by an operator: {reason}");
                    self.lease_lost(lease_id, reason, true, out);
                }
            }
            Event::ViewLagged => {
                // Releases may have been missed: every standby tries again.
                let standby: Vec<String> = self.standby().map(String::from).collect();
                for broadcast in standby {
                    self.owner_released(broadcast, i64::MAX, out);
                }
            }
            _ => unreachable!("per-broadcast events are handled in node.rs"),
        }
    }

    /// The record's lease was lost: write the record again (unless a newer
    /// session wrote it meanwhile). False when `lease_id` is not the
    /// record's.
    pub(super) fn record_lost(&mut self, lease_id: i64, out: &mut Vec<Action>) -> bool {
        if self.fence.lease != Some(lease_id) {
            return false;
        }
        self.fence.lease = None;
        out.push(Action::WriteRecord {
            replaces: Some(lease_id),
        });
        true
    }

    /// Puts every claim in `out` under the record's lease, or, while the
    /// record is not written, holds it back until it is.
    pub(super) fn fence_claims(&mut self, out: &mut Vec<Action>) {
        let lease = self.fence.lease;
        let unfenced = &mut self.fence.unfenced;
        out.retain_mut(|action| match (action, lease) {
            (Action::Claim { guard_lease, .. }, Some(lease)) => {
                *guard_lease = lease;
                true
            }
            (Action::Claim { broadcast, .. }, None) => {
                unfenced.push(std::mem::take(broadcast));
                false
            }
            _ => true,
        });
    }

    /// Claims that never started (waiting for the record) are dropped:
    /// nothing is in flight for them, and an ending session starts nothing.
    pub(super) fn drop_unfenced(&mut self) {
        for broadcast in std::mem::take(&mut self.fence.unfenced) {
            self.forget_entry(&broadcast);
        }
    }

    /// Claims waiting for the record are answered as if etcd had been
    /// unreachable, for `reason`: they retry.
    fn answer_unfenced(&mut self, reason: &str, out: &mut Vec<Action>) {
        for broadcast in std::mem::take(&mut self.fence.unfenced) {
            let outcome = ClaimOutcome::Unavailable {
                reason: reason.to_string(),
            };
            self.answered(broadcast, outcome, out);
        }
    }

    /// A newer session of the node took over: end the stream, keep what is
    /// held for the grace. Only an attached session is superseded.
    fn supersede(&mut self, by: String, out: &mut Vec<Action>) {
        if self.mode != Mode::Attached {
            return;
        }
        out.push(Action::Supersede { by });
        self.detach(out);
    }

    fn tell_draining(&mut self, draining: bool, out: &mut Vec<Action>) {
        if draining != self.fence.told_draining {
            self.fence.told_draining = draining;
            self.tell(Reply::Draining { draining }, out);
        }
    }
}
