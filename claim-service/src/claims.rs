//! The claim rules of one node's session, as a pure state machine.
//!
//! [`NodeClaims`] takes events (a track was created or closed, the store
//! answered, a lease was lost, a timer fired, the session detached) and
//! returns [`Action`]s for the async shell to carry out (claim in etcd, keep a
//! lease alive, release, tell the node). It does no I/O, so every rule of the
//! design can be tested here without etcd or a network.
//!
//! Invariants it keeps:
//! - one claim per broadcast, however many tracks it has;
//! - at most one store operation (claim or release) in flight per broadcast,
//!   so an answer always belongs to the entry's current state;
//! - a lease this session acquired is either kept alive, or released, or
//!   reported lost: never silently dropped;
//! - after `goodbye` or a detach, the node is told nothing it did not ask for.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// A claim as etcd holds it: the owner of one broadcast.
///
/// What every claim of one node's session has in common (node, endpoints,
/// session, replica) is shared, not copied: a replica holds each claim in
/// the session's rules and in the view, and 100,000 claims must fit in a
/// few hundred megabytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claim {
    pub broadcast: String,
    pub node_id: Arc<str>,
    pub endpoints: Arc<HashMap<String, String>>,
    pub lease_id: i64,
    /// The etcd create revision of the claim key.
    pub fencing_token: i64,
    /// The etcd revision of the claim key's last write (its mod revision):
    /// a session releases a claim only while the key is still its own write,
    /// so a claim adopted since by a newer session of the node, even on the
    /// same lease, is never touched by the older one.
    pub revision: i64,
    pub claimed_at_unix_ms: i64,
    pub lease_ttl_ms: u64,
    pub session_id: Arc<str>,
    pub service_id: Arc<str>,
}

/// What the store answered to a claim attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// This node owns the broadcast; `adopted` when an existing claim of this
    /// node (an earlier session's) was taken over by this session, on the
    /// lease it already had.
    Claimed { claim: Claim, adopted: bool },
    /// Another node owns it, as read at `revision` in the same transaction.
    Conflict { owner: Claim, revision: i64 },
    /// The store could not be reached; nothing was claimed.
    Unavailable { reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Created {
        broadcast: String,
        track: String,
    },
    Closed {
        broadcast: String,
        track: String,
    },
    /// Claims of this node found in etcd when the session began; those not
    /// live now are released.
    Existing {
        claims: Vec<Claim>,
    },
    /// Clean shutdown of the node: release everything now.
    Goodbye,
    /// The session's stream broke without `goodbye`: keep held claims for the
    /// detach grace, tell the node nothing more.
    Detached,
    /// The detach grace ran out: release what is still held.
    GraceExpired,
    ClaimAnswered {
        broadcast: String,
        outcome: ClaimOutcome,
    },
    /// A release (see [`Action::Release`]) is done.
    Released {
        broadcast: String,
    },
    LeaseLost {
        lease_id: i64,
        reason: String,
    },
    /// The store's watch saw the broadcast's claim key deleted at `revision`.
    OwnerReleased {
        broadcast: String,
        revision: i64,
    },
    RetryDue {
        broadcast: String,
        timer: u64,
    },
}

/// What the node is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Claimed {
        claim: Claim,
        adopted: bool,
    },
    Conflict {
        broadcast: String,
        owner: Claim,
    },
    Released {
        broadcast: String,
    },
    Lost {
        broadcast: String,
        reason: String,
    },
    Retrying {
        broadcast: String,
        reason: String,
        retry_in: Duration,
    },
    /// A `created` over one of the node's [`Limits`]: nothing was claimed
    /// for it; the reason names the limit.
    Refused {
        broadcast: String,
        track: String,
        reason: String,
    },
}

/// Bounds on what one node's session may hold, so that one node cannot
/// take the whole service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Broadcasts claimed, being claimed or waited for at once.
    pub max_claims: usize,
    /// Live tracks of one broadcast.
    pub max_tracks_per_broadcast: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_claims: usize::MAX,
            max_tracks_per_broadcast: usize::MAX,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Try to claim the broadcast (grant a lease, create-if-absent, adopt a
    /// key that already names this node); answer with `ClaimAnswered`.
    Claim {
        broadcast: String,
    },
    /// Keep this lease alive until told otherwise; report `LeaseLost`.
    KeepAlive {
        lease_id: i64,
        broadcast: String,
        ttl_ms: u64,
    },
    /// Stop keeping the lease alive and release the claim: delete its key if
    /// it is still the write at `revision`, and let the lease go; answer
    /// with `Released`.
    Release {
        broadcast: String,
        lease_id: i64,
        revision: i64,
    },
    /// Release a claim left by an earlier session the same way (no answer
    /// needed).
    ReleaseStale {
        broadcast: String,
        lease_id: i64,
        revision: i64,
    },
    /// Stop keeping a lease alive that is already gone.
    Forget {
        lease_id: i64,
    },
    Send(Reply),
    /// Fire `RetryDue { broadcast, timer }` after `delay`.
    RetryAfter {
        broadcast: String,
        timer: u64,
        delay: Duration,
    },
    /// Nothing is held or in flight any more: the session may end.
    Finished,
}

impl Action {
    /// Releases `claim`, as this session wrote it.
    fn release(broadcast: String, claim: &Claim) -> Self {
        Action::Release {
            broadcast,
            lease_id: claim.lease_id,
            revision: claim.revision,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// A claim attempt is in flight.
    Claiming,
    Held(Claim),
    /// Another node owns it; wait for its key to go (deleted after `revision`).
    Standby {
        revision: i64,
    },
    /// The store was unreachable; a retry timer is armed.
    Waiting {
        timer: u64,
    },
    /// A release is in flight.
    Releasing,
}

/// The live tracks of one broadcast: a few names, so a plain vector (a
/// B-tree set costs a 300-byte node for one track).
#[derive(Debug, Default)]
struct Tracks(Vec<String>);

impl Tracks {
    fn contains(&self, track: &str) -> bool {
        self.0.iter().any(|t| t == track)
    }
    fn insert(&mut self, track: String) {
        if !self.contains(&track) {
            self.0.push(track);
        }
    }
    /// Whether it was there.
    fn remove(&mut self, track: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|t| t != track);
        self.0.len() != before
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn clear(&mut self) {
        self.0 = Vec::new();
    }
}

#[derive(Debug)]
struct Entry {
    tracks: Tracks,
    state: State,
    /// Consecutive failed attempts, for backoff.
    failures: u32,
    /// The node was told `claimed` for the current claim.
    announced: bool,
    /// Fencing token of the owner the node was last told of in `conflict`.
    told_owner: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Attached,
    /// After goodbye: release everything, tell the node.
    Closing,
    /// Stream gone: keep held claims until the grace expires.
    Detached,
    /// Grace expired: release everything silently.
    Expiring,
}

/// Retry backoff after `failures` consecutive failures: 200 ms doubling to 5 s.
pub fn backoff(failures: u32) -> Duration {
    let ms = 200u64.saturating_mul(1u64 << failures.saturating_sub(1).min(5));
    Duration::from_millis(ms.min(5_000))
}

/// The claims of one node's session.
#[derive(Debug)]
pub struct NodeClaims {
    broadcasts: BTreeMap<String, Entry>,
    limits: Limits,
    mode: Mode,
    next_timer: u64,
    finished: bool,
}

impl Default for NodeClaims {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeClaims {
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Self {
        Self {
            broadcasts: BTreeMap::new(),
            limits,
            mode: Mode::Attached,
            next_timer: 0,
            finished: false,
        }
    }

    /// Broadcasts this session holds a claim for, with their fencing tokens.
    pub fn held(&self) -> impl Iterator<Item = (&str, &Claim)> {
        self.broadcasts.iter().filter_map(|(b, e)| match &e.state {
            State::Held(c) => Some((b.as_str(), c)),
            _ => None,
        })
    }

    /// Whether the node has this track live.
    pub fn is_live(&self, broadcast: &str, track: &str) -> bool {
        self.broadcasts
            .get(broadcast)
            .is_some_and(|e| e.tracks.contains(track))
    }

    /// Broadcasts waiting as standby behind another owner.
    pub fn standby(&self) -> impl Iterator<Item = &str> {
        self.broadcasts
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Standby { .. }))
            .map(|(b, _)| b.as_str())
    }

    /// After `goodbye`.
    pub fn is_closing(&self) -> bool {
        self.mode == Mode::Closing
    }

    pub fn is_detached(&self) -> bool {
        matches!(self.mode, Mode::Detached | Mode::Expiring)
    }

    /// Apply one event; returns what to do, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Created { broadcast, track } => self.created(broadcast, track, &mut out),
            Event::Closed { broadcast, track } => self.closed(&broadcast, &track, &mut out),
            Event::Existing { claims } => {
                if self.mode == Mode::Attached {
                    for claim in claims {
                        if !self.broadcasts.contains_key(&claim.broadcast) {
                            out.push(Action::ReleaseStale {
                                lease_id: claim.lease_id,
                                revision: claim.revision,
                                broadcast: claim.broadcast,
                            });
                        }
                    }
                }
            }
            Event::Goodbye => self.release_all(Mode::Closing, &mut out),
            Event::Detached => {
                if self.mode == Mode::Attached {
                    self.mode = Mode::Detached;
                    // Nobody is left to wait as standby or to retry for.
                    self.broadcasts.retain(|_, e| {
                        !matches!(e.state, State::Standby { .. } | State::Waiting { .. })
                    });
                    for entry in self.broadcasts.values_mut() {
                        entry.tracks.clear();
                    }
                }
            }
            Event::GraceExpired => {
                if self.mode == Mode::Detached {
                    self.release_all(Mode::Expiring, &mut out)
                }
            }
            Event::ClaimAnswered { broadcast, outcome } => {
                self.answered(broadcast, outcome, &mut out)
            }
            Event::Released { broadcast } => self.release_done(broadcast, &mut out),
            Event::LeaseLost { lease_id, reason } => self.lease_lost(lease_id, reason, &mut out),
            Event::OwnerReleased {
                broadcast,
                revision,
            } => {
                if let Some(entry) = self.broadcasts.get_mut(&broadcast) {
                    if let State::Standby { revision: seen, .. } = entry.state {
                        if revision > seen {
                            entry.state = State::Claiming;
                            out.push(Action::Claim { broadcast });
                        }
                    }
                }
            }
            Event::RetryDue { broadcast, timer } => {
                if let Some(entry) = self.broadcasts.get_mut(&broadcast) {
                    if entry.state == (State::Waiting { timer }) {
                        entry.state = State::Claiming;
                        out.push(Action::Claim { broadcast });
                    }
                }
            }
        }
        self.check_finished(&mut out);
        out
    }

    fn tell(&self, reply: Reply, out: &mut Vec<Action>) {
        Self::tell_in(self.mode, reply, out)
    }

    fn tell_in(mode: Mode, reply: Reply, out: &mut Vec<Action>) {
        if matches!(mode, Mode::Attached | Mode::Closing) {
            out.push(Action::Send(reply));
        }
    }

    fn created(&mut self, broadcast: String, track: String, out: &mut Vec<Action>) {
        if self.mode != Mode::Attached {
            return;
        }
        let limits = self.limits;
        let claims = self.broadcasts.len();
        let mode = self.mode;
        match self.broadcasts.get_mut(&broadcast) {
            Some(entry) => {
                if !entry.tracks.contains(&track)
                    && entry.tracks.len() >= limits.max_tracks_per_broadcast
                {
                    let reason = format!(
                        "limit max-tracks-per-broadcast ({}) reached: {broadcast} already has {} live tracks on this node",
                        limits.max_tracks_per_broadcast,
                        entry.tracks.len()
                    );
                    Self::tell_in(
                        mode,
                        Reply::Refused {
                            broadcast,
                            track,
                            reason,
                        },
                        out,
                    );
                    return;
                }
                // A duplicate `created` changes nothing. A track coming back
                // while a release is in flight is claimed anew once it lands.
                entry.tracks.insert(track);
            }
            None if claims >= limits.max_claims => {
                let reason = format!(
                    "limit max-claims-per-node ({}) reached: this node already claims or waits for {claims} broadcasts",
                    limits.max_claims,
                );
                self.tell(
                    Reply::Refused {
                        broadcast,
                        track,
                        reason,
                    },
                    out,
                );
            }
            None => {
                self.broadcasts.insert(
                    broadcast.clone(),
                    Entry {
                        tracks: Tracks(vec![track]),
                        state: State::Claiming,
                        failures: 0,
                        announced: false,
                        told_owner: None,
                    },
                );
                out.push(Action::Claim { broadcast });
            }
        }
    }

    fn closed(&mut self, broadcast: &str, track: &str, out: &mut Vec<Action>) {
        let Some(entry) = self.broadcasts.get_mut(broadcast) else {
            return;
        };
        if !entry.tracks.remove(track) || !entry.tracks.is_empty() {
            return;
        }
        match &entry.state {
            // The answer decides: a claim that lands now is released at once.
            State::Claiming | State::Releasing => {}
            State::Held(claim) => {
                out.push(Action::release(broadcast.to_string(), claim));
                entry.state = State::Releasing;
            }
            State::Standby { .. } | State::Waiting { .. } => {
                self.broadcasts.remove(broadcast);
            }
        }
    }

    fn release_all(&mut self, mode: Mode, out: &mut Vec<Action>) {
        self.mode = mode;
        let mut dropped = Vec::new();
        for (broadcast, entry) in self.broadcasts.iter_mut() {
            entry.tracks.clear();
            match &entry.state {
                State::Held(claim) => {
                    out.push(Action::release(broadcast.clone(), claim));
                    entry.state = State::Releasing;
                }
                State::Claiming | State::Releasing => {}
                State::Standby { .. } | State::Waiting { .. } => dropped.push(broadcast.clone()),
            }
        }
        for broadcast in dropped {
            self.broadcasts.remove(&broadcast);
        }
    }

    fn answered(&mut self, broadcast: String, outcome: ClaimOutcome, out: &mut Vec<Action>) {
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
                    out.push(Action::KeepAlive {
                        lease_id: claim.lease_id,
                        broadcast: broadcast.clone(),
                        ttl_ms: claim.lease_ttl_ms,
                    });
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
                    if entry.told_owner != Some(owner.fencing_token) {
                        entry.told_owner = Some(owner.fencing_token);
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

    fn release_done(&mut self, broadcast: String, out: &mut Vec<Action>) {
        let Some(entry) = self.broadcasts.get_mut(&broadcast) else {
            return;
        };
        if entry.state != State::Releasing {
            return;
        }
        let live_again = !entry.tracks.is_empty() && self.mode == Mode::Attached;
        let announced = std::mem::take(&mut entry.announced);
        if live_again {
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
            out.push(Action::Claim { broadcast });
        }
    }

    fn lease_lost(&mut self, lease_id: i64, reason: String, out: &mut Vec<Action>) {
        let found = self.broadcasts.iter().find_map(|(b, e)| match &e.state {
            State::Held(c) if c.lease_id == lease_id => Some(b.clone()),
            _ => None,
        });
        let Some(broadcast) = found else {
            return;
        };
        out.push(Action::Forget { lease_id });
        self.tell(
            Reply::Lost {
                broadcast: broadcast.clone(),
                reason,
            },
            out,
        );
        let entry = self
            .broadcasts
            .get_mut(&broadcast)
            .expect("entry was found above");
        entry.announced = false;
        if !entry.tracks.is_empty() && self.mode == Mode::Attached {
            // Still live: claim again. A key that still names this node is
            // adopted by the store, never reported as a conflict with itself.
            entry.state = State::Claiming;
            out.push(Action::Claim { broadcast });
        } else {
            self.broadcasts.remove(&broadcast);
        }
    }

    fn check_finished(&mut self, out: &mut Vec<Action>) {
        let ending = matches!(self.mode, Mode::Closing | Mode::Expiring);
        if ending && self.broadcasts.is_empty() && !self.finished {
            self.finished = true;
            out.push(Action::Finished);
        }
    }
}

#[cfg(test)]
mod tests;
