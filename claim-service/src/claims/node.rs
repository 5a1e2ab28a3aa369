//! The rules of each broadcast a node's session claims: its live tracks,
//! its claim's state (claiming, held, standby, waiting, releasing), and
//! what goodbye and a detach do to it.

use std::collections::BTreeMap;

use super::fence::Fence;
use super::leases::Leases;
use super::{Action, Claim, Limits, Reply};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum State {
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
pub(super) struct Tracks(Vec<String>);

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
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn clear(&mut self) {
        self.0 = Vec::new();
    }
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) tracks: Tracks,
    pub(super) state: State,
    /// Consecutive failed attempts, for backoff.
    pub(super) failures: u32,
    /// The node was told `claimed` for the current claim.
    pub(super) announced: bool,
    /// The owner the node was last told of in `conflict`.
    pub(super) told_owner: Option<Box<Claim>>,
    /// This node's claim was taken over: it stands by behind the taker and
    /// does not claim again while these tracks live.
    pub(super) yielded: bool,
    /// Another node asked for the claim this entry stands by for: when it
    /// is released, let the taker claim first.
    pub(super) deferred: bool,
}

/// How long a standby behind a takeover waits, once the claim is released,
/// before it tries to claim: the taker claims first.
const DEFER: std::time::Duration = std::time::Duration::from_millis(1000);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Attached,
    /// After goodbye: release everything, tell the node.
    Closing,
    /// Stream gone: keep held claims until the grace expires.
    Detached,
    /// Grace expired: release everything silently.
    Expiring,
}

/// The claims of one node's session.
#[derive(Debug)]
pub struct NodeClaims {
    pub(super) broadcasts: BTreeMap<String, Entry>,
    pub(super) limits: Limits,
    pub(super) mode: Mode,
    pub(super) fence: Fence,
    pub(super) leases: Leases,
    pub(super) next_timer: u64,
    finished: bool,
}

impl NodeClaims {
    /// The rules of session `session_id`, before its node record is
    /// written: claims wait for it (see [`Event::RecordWritten`]).
    pub fn new(session_id: &str, limits: Limits) -> Self {
        Self {
            broadcasts: BTreeMap::new(),
            limits,
            mode: Mode::Attached,
            fence: Fence::new(session_id),
            leases: Leases::default(),
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

    /// Every broadcast this session has an entry for (live, held, being
    /// claimed or released).
    pub fn known(&self) -> impl Iterator<Item = &str> {
        self.broadcasts.keys().map(String::as_str)
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

    /// Claims held on `lease_id` (releases in flight included).
    pub fn claims_on(&self, lease_id: i64) -> usize {
        self.leases.on(lease_id)
    }

    /// After `goodbye`.
    pub fn is_closing(&self) -> bool {
        self.mode == Mode::Closing
    }

    pub fn is_detached(&self) -> bool {
        matches!(self.mode, Mode::Detached | Mode::Expiring)
    }

    /// Claims an earlier session of this node left: those not live now are
    /// released.
    pub(super) fn existing(&mut self, claims: Vec<Claim>, out: &mut Vec<Action>) {
        if self.mode != Mode::Attached {
            return;
        }
        for claim in claims {
            if !self.broadcasts.contains_key(&claim.broadcast) {
                self.leases.release_stale(claim.lease_id);
                out.push(Action::ReleaseStale {
                    lease_id: claim.lease_id,
                    fencing_token: claim.fencing_token,
                    guard_lease: 0,
                    broadcast: claim.broadcast,
                });
            }
        }
    }

    /// Goodbye: release everything and tell the node. Only an attached node
    /// says goodbye: a detached or superseded session keeps its claims for
    /// the grace.
    pub(super) fn goodbye(&mut self, out: &mut Vec<Action>) {
        if self.mode == Mode::Attached {
            self.release_all(Mode::Closing, out)
        }
    }

    /// The detach grace ran out: release what is still held, silently.
    pub(super) fn grace_expired(&mut self, out: &mut Vec<Action>) {
        if self.mode == Mode::Detached {
            self.release_all(Mode::Expiring, out)
        }
    }

    /// A retry timer fired: claim again if it is still the one armed.
    pub(super) fn retry_due(&mut self, broadcast: String, timer: u64, out: &mut Vec<Action>) {
        if let Some(entry) = self.broadcasts.get_mut(&broadcast) {
            if entry.state == (State::Waiting { timer }) {
                entry.state = State::Claiming;
                out.push(Action::claim(broadcast));
            }
        }
    }

    /// Whether the session has finished (nothing more happens).
    pub(super) fn is_finished(&self) -> bool {
        self.finished
    }

    /// The session's node is gone: held claims are kept for the grace (so
    /// that the node can take them back), nothing else is.
    pub(super) fn detach(&mut self, out: &mut Vec<Action>) {
        if self.mode != Mode::Attached {
            return;
        }
        self.mode = Mode::Detached;
        self.drop_unfenced();
        // Nobody is left to wait as standby or to retry for.
        self.broadcasts
            .retain(|_, e| !matches!(e.state, State::Standby { .. } | State::Waiting { .. }));
        for entry in self.broadcasts.values_mut() {
            entry.tracks.clear();
        }
        out.push(Action::StartGrace);
    }

    /// Another node's claim of a broadcast this session stands by for was
    /// deleted at `revision`: claim it if that is news.
    pub(super) fn owner_released(
        &mut self,
        broadcast: String,
        revision: i64,
        out: &mut Vec<Action>,
    ) {
        if let Some(entry) = self.broadcasts.get_mut(&broadcast) {
            if let State::Standby { revision: seen, .. } = entry.state {
                if revision > seen && std::mem::take(&mut entry.deferred) {
                    self.next_timer += 1;
                    let timer = self.next_timer;
                    entry.state = State::Waiting { timer };
                    out.push(Action::RetryAfter {
                        broadcast,
                        timer,
                        delay: DEFER,
                    });
                } else if revision > seen {
                    entry.state = State::Claiming;
                    out.push(Action::claim(broadcast));
                }
            }
        }
    }

    /// Claims that never started (waiting for the record) are dropped:
    /// nothing is in flight for them, and an ending session starts nothing.
    fn drop_unfenced(&mut self) {
        for broadcast in self.fence.take_unfenced() {
            self.broadcasts.remove(&broadcast);
        }
    }

    /// Whether `broadcast` is held with this fencing token.
    pub(super) fn held_with_token(&self, broadcast: &str, fencing_token: i64) -> bool {
        matches!(
            self.broadcasts.get(broadcast).map(|e| &e.state),
            Some(State::Held(c)) if c.fencing_token == fencing_token
        )
    }

    pub(super) fn tell(&self, reply: Reply, out: &mut Vec<Action>) {
        Self::tell_in(self.mode, reply, out)
    }

    pub(super) fn tell_in(mode: Mode, reply: Reply, out: &mut Vec<Action>) {
        if matches!(mode, Mode::Attached | Mode::Closing) {
            out.push(Action::Send(reply));
        }
    }

    pub(super) fn created(&mut self, broadcast: String, track: String, out: &mut Vec<Action>) {
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
                        yielded: false,
                        deferred: false,
                    },
                );
                out.push(Action::claim(broadcast));
            }
        }
    }

    pub(super) fn closed(&mut self, broadcast: &str, track: &str, out: &mut Vec<Action>) {
        let Some(entry) = self.broadcasts.get_mut(broadcast) else {
            return;
        };
        if !entry.tracks.remove(track) || !entry.tracks.is_empty() {
            return;
        }
        match &entry.state {
            // Not started yet (waiting for the node record): never will be.
            State::Claiming if self.fence.unfence(broadcast) => {
                self.broadcasts.remove(broadcast);
            }
            // The answer decides: a claim that lands now is released at once.
            State::Claiming | State::Releasing => {}
            State::Held(claim) => {
                out.push(self.leases.release_held(broadcast, claim));
                entry.state = State::Releasing;
            }
            State::Standby { .. } | State::Waiting { .. } => {
                self.broadcasts.remove(broadcast);
            }
        }
    }

    fn release_all(&mut self, mode: Mode, out: &mut Vec<Action>) {
        self.mode = mode;
        self.drop_unfenced();
        let mut dropped = Vec::new();
        for (broadcast, entry) in self.broadcasts.iter_mut() {
            entry.tracks.clear();
            match &entry.state {
                State::Held(claim) => {
                    out.push(self.leases.release_held(broadcast, claim));
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

    /// The node `node_id` is gone (its session broke, or its record
    /// expired): every standby behind it is told its owner again, which the
    /// shell marks detached, so that the node holds its publisher until the
    /// claim moves instead of refusing it.
    pub(super) fn owner_gone(&mut self, node_id: &str, out: &mut Vec<Action>) {
        let behind: Vec<(String, Claim)> = self
            .broadcasts
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Standby { .. }))
            .filter_map(|(b, e)| e.told_owner.clone().map(|o| (b.clone(), *o)))
            .filter(|(_, o)| &*o.node_id == node_id)
            .collect();
        for (broadcast, owner) in behind {
            self.tell(Reply::Conflict { broadcast, owner }, out);
        }
    }

    pub(super) fn check_finished(&mut self, out: &mut Vec<Action>) {
        let ending = matches!(self.mode, Mode::Closing | Mode::Expiring);
        // Releases of what an earlier session left end first: the lease
        // they are on is let go when they are done.
        let settled = self.broadcasts.is_empty() && !self.leases.stale_in_flight();
        if ending && settled && !self.finished {
            self.finished = true;
            // Every claim is released: the node's record goes too.
            if let Some(lease_id) = self.fence.take_lease() {
                self.leases.set_record(None);
                out.push(Action::DropRecord { lease_id });
            }
            out.push(Action::Finished);
        }
    }
}
