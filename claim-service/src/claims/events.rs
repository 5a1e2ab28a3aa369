//! Each event to the rule it concerns ([`NodeClaims::handle`]), and the
//! rules of a session as a whole: the node record every claim is fenced by,
//! a newer session of the same node superseding this one, the draining
//! mark, an operator's forced release, and a view that lagged.
//!
//! A session's claims are made only under the lease of its own node record
//! (the claim transaction checks it): a newer session of the node, on any
//! replica, rewrites the record, and from then on every claim of the older
//! one fails. So a claim waits until the record is written (see
//! `fence.rs`), and a record written by another session ends this one:
//! superseded, it keeps its held claims for the grace (the newer session
//! adopts them) and claims nothing new.

use super::node::{Mode, NodeClaims};
use super::{Action, ClaimOutcome, Earlier, Event, Reply};

impl NodeClaims {
    /// Apply one event; returns what to do, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.is_finished() {
            // The session is over: nothing is held, nothing more happens.
            return out;
        }
        match event {
            Event::Began => out.push(Action::WriteRecord { replaces: None }),
            Event::Created { broadcast, track } => self.created(broadcast, track, &mut out),
            Event::Closed { broadcast, track } => self.closed(&broadcast, &track, &mut out),
            Event::Existing { claims } => self.existing(claims, &mut out),
            Event::Goodbye => self.goodbye(&mut out),
            Event::Detached => {
                let attached = !self.is_detached() && !self.is_closing();
                self.detach(&mut out);
                if let Some(lease_id) = self.fence.lease.filter(|_| attached) {
                    out.push(Action::MarkDetached { lease_id });
                }
            }
            Event::Moved => self.detach(&mut out),
            Event::GraceExpired => self.grace_expired(&mut out),
            Event::ClaimAnswered { broadcast, outcome } => {
                self.answered(broadcast, outcome, &mut out)
            }
            Event::Released { broadcast } => self.release_done(broadcast, &mut out),
            Event::StaleReleased { lease_id } => self.stale_released(lease_id, &mut out),
            Event::LeaseLost { lease_id, reason } => {
                // The record's lease carries this session's own claims too.
                self.lease_lost(lease_id, reason, &mut out);
                self.record_lost(lease_id, &mut out);
            }
            Event::OwnerReleased {
                broadcast,
                revision,
            } => self.owner_released(broadcast, revision, &mut out),
            Event::RetryDue { broadcast, timer } => self.retry_due(broadcast, timer, &mut out),
            Event::RecordWritten {
                lease_id,
                revision,
                draining,
                earlier,
            } => self.record_written(lease_id, revision, draining, earlier, &mut out),
            Event::RecordFailed { reason } => self.answer_unfenced(&reason, &mut out),
            Event::RecordTaken { by } => self.supersede(format!("session {by}"), &mut out),
            Event::Fenced {
                broadcast,
                session_id,
            } => self.fenced(broadcast, session_id, &mut out),
            Event::NodeSeen {
                session_id,
                draining,
                revision,
            } => self.node_seen(session_id, draining, revision, &mut out),
            Event::Superseded => self.supersede("on this replica".to_string(), &mut out),
            Event::Forced {
                broadcast,
                fencing_token,
                reason,
            } => self.forced(broadcast, fencing_token, reason, &mut out),
            Event::ViewLagged => self.view_lagged(&mut out),
            Event::OwnerGone { node_id } => self.owner_gone(&node_id, &mut out),
            Event::TakeoverAsked {
                broadcast,
                fencing_token,
            } => self.takeover_asked(broadcast, fencing_token, &mut out),
            Event::TakeoverAnswered { broadcast, outcome } => {
                self.takeover_answered(broadcast, outcome, &mut out)
            }
            Event::TakenOver {
                broadcast,
                fencing_token,
                by,
                by_this_node,
            } => self.taken_over(broadcast, fencing_token, by, by_this_node, &mut out),
        }
        self.fence.hold_back(&mut out);
        self.check_finished(&mut out);
        out
    }

    /// The lease of this session's node record, while it is written.
    pub fn record_lease(&self) -> Option<i64> {
        self.fence.lease
    }

    /// Whether the node was told it is draining.
    pub fn is_draining(&self) -> bool {
        self.fence.told_draining
    }

    /// The record is written: claims waiting for it go, under its lease,
    /// and the claims an earlier session of the node left are looked for.
    fn record_written(
        &mut self,
        lease_id: i64,
        revision: i64,
        draining: bool,
        earlier: Earlier,
        out: &mut Vec<Action>,
    ) {
        self.fence.lease = Some(lease_id);
        self.fence.last_lease = lease_id;
        self.fence.revision = revision;
        self.leases.set_record(Some(lease_id));
        out.push(Action::KeepRecord { lease_id });
        // A lease is looked at once, however it was met.
        let new = match earlier {
            Earlier::None => false,
            Earlier::OnLease(lease) => self.leases.first_met(lease),
            Earlier::Anywhere => true,
        };
        if new {
            out.push(Action::FindEarlierClaims { earlier });
        }
        self.tell_draining(draining, out);
        for broadcast in self.fence.take_unfenced() {
            out.push(Action::claim(broadcast));
        }
    }

    /// A claim found the record on another lease. Another session's record
    /// supersedes this one; its own renewed record, or none (lost in an
    /// outage and being written again), only means: try again.
    fn fenced(&mut self, broadcast: String, session_id: String, out: &mut Vec<Action>) {
        let taken = self.fence.is_other(&session_id);
        let reason = if taken {
            // Ended first: the claim is then dropped, not retried.
            self.supersede(format!("session {session_id}"), out);
            format!("session {session_id} of this node took over")
        } else {
            "this session's node record is being renewed; retrying".to_string()
        };
        self.answered(broadcast, ClaimOutcome::Unavailable { reason }, out);
    }

    /// The view saw this node's record: this session's (draining or not),
    /// or a newer session's, on any replica.
    fn node_seen(
        &mut self,
        session_id: String,
        draining: bool,
        revision: i64,
        out: &mut Vec<Action>,
    ) {
        if session_id == self.fence.session_id {
            self.tell_draining(draining, out);
        } else if self.fence.is_other(&session_id)
            && self.fence.revision > 0
            && revision > self.fence.revision
        {
            self.supersede(format!("session {session_id}"), out);
        }
    }

    /// An operator force-released a claim: lost, if it is the one held.
    fn forced(
        &mut self,
        broadcast: String,
        fencing_token: i64,
        reason: String,
        out: &mut Vec<Action>,
    ) {
        if self.held_with_token(&broadcast, fencing_token) {
            let reason = format!("force-released by an operator: {reason}");
            self.lose(broadcast, reason, true, out);
        }
    }

    /// Releases may have been missed: every standby tries again.
    fn view_lagged(&mut self, out: &mut Vec<Action>) {
        let standby: Vec<String> = self.standby().map(String::from).collect();
        for broadcast in standby {
            self.owner_released(broadcast, i64::MAX, out);
        }
    }

    /// The record's lease was lost: write the record again (unless a newer
    /// session wrote it meanwhile). Nothing when `lease_id` is not the
    /// record's.
    fn record_lost(&mut self, lease_id: i64, out: &mut Vec<Action>) {
        if self.fence.lease != Some(lease_id) {
            return;
        }
        self.fence.lease = None;
        out.push(Action::WriteRecord {
            replaces: Some(lease_id),
        });
    }

    /// Claims waiting for the record are answered as if etcd had been
    /// unreachable, for `reason`: they retry.
    fn answer_unfenced(&mut self, reason: &str, out: &mut Vec<Action>) {
        for broadcast in self.fence.take_unfenced() {
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
