//! What the store answered about one broadcast's claim, and what comes of
//! it: a claim made or refused or put off, a release done, a lease lost;
//! and which leases are then kept alive or let go.

use super::leases::Next;
use super::node::{Mode, NodeClaims, State};
use super::{Action, ClaimOutcome, Earlier, Reply};
use crate::retry::backoff;

impl NodeClaims {
    pub(super) fn answered(
        &mut self,
        broadcast: String,
        outcome: ClaimOutcome,
        out: &mut Vec<Action>,
    ) {
        let mode = self.mode;
        let Some(entry) = self.broadcasts.get_mut(&broadcast) else {
            // Only a claim in flight gets an answer; a lease it brought must
            // not leak.
            if let ClaimOutcome::Claimed { claim, .. } = outcome {
                out.push(Action::release(broadcast, &claim));
            }
            return;
        };
        if entry.state != State::Claiming {
            if let ClaimOutcome::Claimed { claim, .. } = outcome {
                out.push(Action::release(broadcast, &claim));
            }
            return;
        }
        // A detached session keeps what it holds for the grace, so that the
        // node can take it back, but starts nothing new.
        let wanted = !entry.tracks.is_empty() || mode == Mode::Detached;
        match outcome {
            ClaimOutcome::Claimed { claim, adopted } => {
                entry.failures = 0;
                if wanted {
                    entry.state = State::Held(claim.clone());
                    entry.announced = matches!(mode, Mode::Attached | Mode::Closing);
                    entry.told_owner = None;
                    out.push(Action::Held {
                        lease_id: claim.lease_id,
                        broadcast: broadcast.clone(),
                    });
                    let lease_id = claim.lease_id;
                    if self.leases.hold(lease_id) == Next::Keep {
                        let ttl_ms = claim.lease_ttl_ms;
                        out.push(Action::KeepLease { lease_id, ttl_ms });
                    }
                    if self.leases.first_met(lease_id) {
                        // Claims an earlier session left on that lease and
                        // the node no longer has are released.
                        let earlier = Earlier::OnLease(lease_id);
                        out.push(Action::FindEarlierClaims { earlier });
                    }
                    Self::tell_in(mode, Reply::Claimed { claim, adopted }, out);
                } else {
                    entry.state = State::Releasing;
                    out.push(Action::release(broadcast, &claim));
                }
            }
            ClaimOutcome::Conflict { owner, revision } => {
                entry.failures = 0;
                if !entry.tracks.is_empty() {
                    entry.state = State::Standby { revision };
                    // A standby that tried again and met the same owner has
                    // nothing new to tell.
                    let told = entry.told_owner.as_ref().map(|o| o.fencing_token);
                    if told != Some(owner.fencing_token) {
                        entry.told_owner = Some(Box::new(owner.clone()));
                        Self::tell_in(mode, Reply::Conflict { broadcast, owner }, out);
                    }
                } else {
                    self.broadcasts.remove(&broadcast);
                }
            }
            ClaimOutcome::Unavailable { reason } => {
                if !entry.tracks.is_empty() {
                    entry.failures = entry.failures.saturating_add(1);
                    let delay = backoff(entry.failures);
                    self.next_timer += 1;
                    let timer = self.next_timer;
                    entry.state = State::Waiting { timer };
                    out.push(Action::RetryAfter {
                        broadcast: broadcast.clone(),
                        timer,
                        delay,
                    });
                    Self::tell_in(
                        mode,
                        Reply::Retrying {
                            broadcast,
                            reason,
                            retry_in: delay,
                        },
                        out,
                    );
                } else {
                    self.broadcasts.remove(&broadcast);
                }
            }
        }
    }

    pub(super) fn release_done(&mut self, broadcast: String, out: &mut Vec<Action>) {
        if let Some((lease_id, next)) = self.leases.release_done(&broadcast) {
            Self::lease_next(lease_id, next, out);
        }
        let Some(entry) = self.broadcasts.get_mut(&broadcast) else {
            return;
        };
        if entry.state != State::Releasing {
            return;
        }
        let live_again = !entry.tracks.is_empty() && self.mode == Mode::Attached;
        let announced = std::mem::take(&mut entry.announced);
        if live_again && entry.yielded {
            // Taken over: stand by behind the taker until these tracks
            // close (the node drops its publisher) or it releases.
            entry.state = State::Standby { revision: i64::MAX };
            return;
        } else if live_again {
            // Published again while the old claim was being given up.
            entry.state = State::Claiming;
        } else {
            self.broadcasts.remove(&broadcast);
        }
        if announced {
            self.tell(
                Reply::Released {
                    broadcast: broadcast.clone(),
                },
                out,
            );
        }
        if live_again {
            out.push(Action::claim(broadcast));
        }
    }

    /// Every claim held on `lease_id` is gone with it.
    pub(super) fn lease_lost(&mut self, lease_id: i64, reason: String, out: &mut Vec<Action>) {
        for broadcast in super::on_lease(self.held(), lease_id) {
            self.lose(broadcast, reason.clone(), false, out);
        }
    }

    /// The held claim of `broadcast` is gone (its lease expired, or an
    /// operator took it, `forced`): the node is told, and it is claimed
    /// again while live.
    pub(super) fn lose(
        &mut self,
        broadcast: String,
        reason: String,
        forced: bool,
        out: &mut Vec<Action>,
    ) {
        let Some(entry) = self.broadcasts.get_mut(&broadcast) else {
            return;
        };
        let State::Held(claim) = &entry.state else {
            return;
        };
        let lease_id = claim.lease_id;
        out.push(Action::Forget { lease_id, forced });
        Self::lease_next(lease_id, self.leases.drop_held(lease_id), out);
        entry.announced = false;
        let again = !entry.tracks.is_empty() && self.mode == Mode::Attached;
        if again {
            // Still live: claim again. A key that still names this node is
            // adopted by the store, never reported as a conflict with itself.
            entry.state = State::Claiming;
        } else {
            self.broadcasts.remove(&broadcast);
        }
        self.tell(
            Reply::Lost {
                broadcast: broadcast.clone(),
                reason,
            },
            out,
        );
        if again {
            out.push(Action::claim(broadcast));
        }
    }

    /// A release of a claim an earlier session left on `lease_id` is done.
    pub(super) fn stale_released(&mut self, lease_id: i64, out: &mut Vec<Action>) {
        Self::lease_next(lease_id, self.leases.stale_released(lease_id), out);
    }

    /// What the lease counts said, as an action.
    fn lease_next(lease_id: i64, next: Next, out: &mut Vec<Action>) {
        if next == Next::LetGo {
            out.push(Action::LetGoLease { lease_id });
        }
    }
}
