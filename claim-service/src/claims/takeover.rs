//! Newest publisher wins, fenced: the rules of a takeover.
//!
//! A node standing by for a broadcast it has live asks for the claim held
//! by the owner it was told of (its fencing token). The request is written
//! to etcd under this session's record; the owner's session, on whatever
//! replica, sees it in its view, tells its node `lost` (taken by whom),
//! releases the claim itself (a checked delete) and stands by; the asker,
//! standing by, then claims anew with the ordinary create-if-absent, so its
//! token is larger and the former owner was told before the new one. A
//! third standby lets the taker claim first.
//!
//! etcd cannot delete and create one key in one transaction, and a put
//! keeps the key's create revision (the fencing token): so the move is a
//! request and two ordinary steps, never one session writing another's key.

use super::node::{Entry, Mode, NodeClaims, State};
use super::{Action, Reply, TakeoverOutcome};

impl NodeClaims {
    /// The node asks for the claim of `broadcast` from the owner with
    /// `fencing_token`: asked of the owner's replica if the node has it live
    /// and stands by behind exactly that owner; refused otherwise.
    pub(super) fn takeover_asked(
        &mut self,
        broadcast: String,
        fencing_token: i64,
        out: &mut Vec<Action>,
    ) {
        if self.mode != Mode::Attached {
            return;
        }
        let refusal = match self.broadcasts.get(&broadcast) {
            _ if !self.limits.takeover => Some(
                "takeover is turned off on this claim service (--takeover deny)".to_string(),
            ),
            None => Some(format!("{broadcast} is not live on this node; publish it first")),
            Some(e) if e.tracks.is_empty() => {
                Some(format!("{broadcast} is not live on this node; publish it first"))
            }
            Some(Entry {
                state: State::Held(_),
                ..
            }) => Some(format!("this node already owns {broadcast}")),
            Some(Entry {
                state: State::Standby { .. },
                told_owner,
                ..
            }) if told_owner.as_ref().map(|o| o.fencing_token) != Some(fencing_token) => Some(format!(
                "the owner of {broadcast} is no longer the one with fencing token {fencing_token}; ask again for the owner told in the last conflict"
            )),
            Some(Entry {
                state: State::Standby { .. },
                ..
            }) if self.fence.lease.is_none() => Some(
                "this session's node record is being written again; ask again shortly".into(),
            ),
            Some(Entry {
                state: State::Standby { .. },
                ..
            }) => None,
            Some(_) => Some(format!(
                "{broadcast} is being claimed, retried or released here; ask again after its conflict"
            )),
        };
        match refusal {
            Some(reason) => self.tell(Reply::TakeoverRefused { broadcast, reason }, out),
            None => out.push(Action::RequestTakeover {
                broadcast,
                fencing_token,
                guard_lease: self.fence.lease.unwrap_or_default(),
            }),
        }
    }

    /// The store answered a takeover request: written (the claim comes
    /// when the owner lets it go), or not, and then this standby asks for
    /// the claim again, which says who owns it now.
    pub(super) fn takeover_answered(
        &mut self,
        broadcast: String,
        outcome: TakeoverOutcome,
        out: &mut Vec<Action>,
    ) {
        let Some(entry) = self.broadcasts.get_mut(&broadcast) else {
            return;
        };
        if !matches!(entry.state, State::Standby { .. }) || entry.tracks.is_empty() {
            return;
        }
        let reason = match outcome {
            TakeoverOutcome::Requested => return,
            TakeoverOutcome::Changed => None,
            TakeoverOutcome::Unavailable { reason } => Some(reason),
        };
        entry.state = State::Claiming;
        // Whoever owns it now is told anew, so the node may ask again.
        entry.told_owner = None;
        out.push(Action::claim(broadcast.clone()));
        if let Some(reason) = reason {
            let reason = format!("takeover not requested: {reason}");
            self.tell(Reply::TakeoverRefused { broadcast, reason }, out);
        }
    }

    /// The view saw node `by` ask for the claim with `fencing_token`. The
    /// owner (this session, if it holds exactly that claim) tells its node
    /// and lets the claim go, then stands by; another standby lets the
    /// taker claim first.
    pub(super) fn taken_over(
        &mut self,
        broadcast: String,
        fencing_token: i64,
        by: String,
        by_this_node: bool,
        out: &mut Vec<Action>,
    ) {
        if by_this_node {
            return;
        }
        let mode = self.mode;
        let Some(entry) = self.broadcasts.get_mut(&broadcast) else {
            return;
        };
        match &entry.state {
            State::Held(claim) if claim.fencing_token == fencing_token => {
                out.push(self.leases.release_held(&broadcast, claim));
                entry.state = State::Releasing;
                entry.announced = false;
                entry.yielded = true;
                Self::tell_in(mode, Reply::TakenOver { broadcast, by }, out);
            }
            State::Standby { .. } => entry.deferred = true,
            _ => {}
        }
    }
}
