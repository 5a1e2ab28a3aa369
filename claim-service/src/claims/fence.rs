//! The fence of a session's claims: its node record, as far as the rules
//! know it, and the claims waiting for it.
//!
//! A session's claims are made only under the lease of its own node record
//! (the claim transaction checks it): a newer session of the node, on any
//! replica, rewrites the record, and from then on every claim of the older
//! one fails. So a claim waits until the record is written, and a record
//! written by another session ends this one: superseded, it keeps its held
//! claims for the grace (the newer session adopts them) and claims nothing
//! new.

use super::Action;

/// This session's node record, as far as the rules know it.
#[derive(Debug)]
pub(super) struct Fence {
    pub(super) session_id: String,
    /// The record's lease while it is written (claims are made under it,
    /// and on it).
    pub(super) lease: Option<i64>,
    /// The lease the record was last written on (0: never): releases are
    /// fenced by it even while the record is being written again (if the
    /// record moved, they delete nothing).
    pub(super) last_lease: i64,
    /// The etcd revision this session last wrote the record at (0: never).
    pub(super) revision: i64,
    /// Broadcasts whose claim waits for the record to be written.
    unfenced: Vec<String>,
    /// What the node was last told about draining.
    pub(super) told_draining: bool,
}

impl Fence {
    pub(super) fn new(session_id: &str) -> Self {
        Self {
            session_id: session_id.to_string(),
            lease: None,
            last_lease: 0,
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
    pub(super) fn is_other(&self, session_id: &str) -> bool {
        !session_id.is_empty() && session_id != self.session_id
    }

    /// The claims that waited for the record, no longer waiting.
    pub(super) fn take_unfenced(&mut self) -> Vec<String> {
        std::mem::take(&mut self.unfenced)
    }

    /// Puts every claim in `out` under the record's lease, or, while the
    /// record is not written, holds it back until it is; puts every release
    /// under the lease the record was last written on.
    pub(super) fn hold_back(&mut self, out: &mut Vec<Action>) {
        let lease = self.lease;
        let last_lease = self.last_lease;
        let unfenced = &mut self.unfenced;
        out.retain_mut(|action| match (action, lease) {
            (Action::Release { guard_lease, .. } | Action::ReleaseStale { guard_lease, .. }, _) => {
                *guard_lease = last_lease;
                true
            }
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
}
