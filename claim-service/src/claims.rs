//! The claim rules of one node's session, as a pure state machine.
//!
//! [`NodeClaims`] takes events (a track was created or closed, the store
//! answered, a lease was lost, a timer fired, the session detached, the
//! node's record was written or taken, the view saw something) and returns
//! [`Action`]s for the async shell to carry out (claim in etcd, keep a lease
//! alive, release, tell the node, end the stream). It does no I/O, so every
//! rule of the design can be tested here without etcd or a network.
//!
//! - `events.rs`: each event to its rule, and the rules of the session as
//!   a whole (the node record every claim is fenced by, superseding,
//!   draining, forced releases, a lagging view);
//! - `node.rs`: the rules of each broadcast (tracks, claim, standby, retry,
//!   release, goodbye, detach);
//! - `answers.rs`: what the store answered about a claim, and the leases
//!   kept or let go as a result;
//! - `fence.rs`: the node record as the rules know it, and the claims
//!   waiting for it;
//! - `leases.rs`: the leases the session's claims are on, which are kept
//!   alive and which let go;
//! - `takeover.rs`: newest publisher wins, fenced (asking for another
//!   node's claim, and letting one's own go).
//!
//! Invariants it keeps:
//! - one claim per broadcast, however many tracks it has;
//! - at most one store operation (claim or release) in flight per broadcast,
//!   so an answer always belongs to the entry's current state;
//! - a claim is asked for, and released, only under the lease of this
//!   session's own node record (the fence), never before it is written;
//!   new claims go on that same lease, so a node's claims live and expire
//!   together;
//! - a lease this session acquired is either kept alive, or released, or
//!   reported lost: never silently dropped;
//! - after `goodbye`, a detach or being superseded, the node is told nothing
//!   it did not ask for, and a superseded session claims nothing new.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

mod answers;
mod events;
mod fence;
mod leases;
mod node;
mod takeover;

pub use node::NodeClaims;

/// The broadcasts of `held` on `lease_id`.
fn on_lease<'a>(held: impl Iterator<Item = (&'a str, &'a Claim)>, lease_id: i64) -> Vec<String> {
    held.filter(|(_, c)| c.lease_id == lease_id)
        .map(|(b, _)| b.to_string())
        .collect()
}

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
    /// The etcd revision of the claim key's last write (its mod revision).
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
    /// The session begins (before the live tracks of `hello` are created):
    /// its node record is written and earlier claims are looked for.
    Began,
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
    /// This replica asked the node to attach to another (spreading sessions,
    /// or draining) and ended the stream: as `Detached`, but the node record
    /// is not marked detached, since the node is on its way to another
    /// replica whose session adopts the claims.
    Moved,
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
    /// A release of a claim an earlier session left (see
    /// [`Action::ReleaseStale`]) on `lease_id` is done.
    StaleReleased {
        lease_id: i64,
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
    /// This session's node record (the fence of every claim, and the lease
    /// its claims are on) is written on `lease_id` at `revision`, marked
    /// draining or not; `earlier` says where an earlier session of the node
    /// left claims.
    RecordWritten {
        lease_id: i64,
        revision: i64,
        draining: bool,
        earlier: Earlier,
    },
    /// Writing the node record failed (it is retried): claims waiting for
    /// it are told why.
    RecordFailed {
        reason: String,
    },
    /// The node record was written by another session of the node, `by`,
    /// while this one was writing it again.
    RecordTaken {
        by: String,
    },
    /// A claim's transaction found the node record on another lease: written
    /// by `session_id` (empty when there was none).
    Fenced {
        broadcast: String,
        session_id: String,
    },
    /// The view saw this node's record written by `session_id` at
    /// `revision`, marked draining or not.
    NodeSeen {
        session_id: String,
        draining: bool,
        revision: i64,
    },
    /// A newer session of this node attached to this replica.
    Superseded,
    /// An operator force-released the claim with this fencing token.
    Forced {
        broadcast: String,
        fencing_token: i64,
        reason: String,
    },
    /// The view's events were missed (a lagging subscriber): releases may
    /// have gone unseen.
    ViewLagged,
    /// The node asks for the claim of a broadcast it has live and stands by
    /// for, held by the owner with this fencing token (newest publisher
    /// wins).
    TakeoverAsked {
        broadcast: String,
        fencing_token: i64,
    },
    /// What the store said to a [`Action::RequestTakeover`].
    TakeoverAnswered {
        broadcast: String,
        outcome: TakeoverOutcome,
    },
    /// The view saw another node's session break (its record marked
    /// detached, or gone): standbys behind it are told so.
    OwnerGone {
        node_id: String,
    },
    /// The view saw a node, `by` (this session's own node when
    /// `by_this_node`), ask for the claim with this fencing token.
    TakenOver {
        broadcast: String,
        fencing_token: i64,
        by: String,
        by_this_node: bool,
    },
}

/// Where an earlier session of a node left claims, as its record said
/// when this session's record replaced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Earlier {
    /// No earlier session's record (or this session's own, written again).
    None,
    /// On this lease: the earlier record's, which its claims shared.
    OnLease(i64),
    /// Anywhere: the record was written by a replica of the model before
    /// (a lease per claim), so every claim naming the node is looked at.
    Anywhere,
}

/// What the store answered to a takeover request.
#[derive(Debug, Clone, PartialEq)]
pub enum TakeoverOutcome {
    /// Written: the owner's replica releases the claim, and this session,
    /// standing by, claims it then.
    Requested,
    /// The claim is no longer the one asked for (released, taken, or this
    /// session's record is not the fence any more); nothing was written.
    Changed,
    /// The store could not be reached; nothing was written.
    Unavailable { reason: String },
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
    /// A takeover that cannot be made (not live here, not standing by, a
    /// stale fencing token, turned off): nothing changed.
    TakeoverRefused {
        broadcast: String,
        reason: String,
    },
    /// The claim this node held was taken over by node `by` (its
    /// publisher there is newer): drop the publisher here.
    TakenOver {
        broadcast: String,
        by: String,
    },
    /// An operator marked the node draining (or no longer).
    Draining {
        draining: bool,
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
    /// Whether a node may take a claim over (`--takeover`).
    pub takeover: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_claims: usize::MAX,
            max_tracks_per_broadcast: usize::MAX,
            takeover: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Try to claim the broadcast (create-if-absent on the node record's
    /// lease, or adopt a key that already names this node, on the lease it
    /// is on) if the node record is still on `guard_lease`; answer with
    /// `ClaimAnswered`, or `Fenced`.
    Claim {
        broadcast: String,
        guard_lease: i64,
    },
    /// A claim of `broadcast` is now held, on `lease_id`.
    Held {
        lease_id: i64,
        broadcast: String,
    },
    /// The first claim held on a lease other than the node record's (one
    /// an earlier session of the node put it on): keep that lease alive;
    /// report its loss as `LeaseLost`.
    KeepLease {
        lease_id: i64,
        ttl_ms: u64,
    },
    /// No claim of this session is on `lease_id` any more, and no release
    /// on it is in flight: stop keeping it alive, and revoke it unless etcd
    /// shows a claim on it (a newer session of the node adopted one). Never
    /// the node record's lease.
    LetGoLease {
        lease_id: i64,
    },
    /// Release the claim: delete its key if it still has `fencing_token`
    /// and the node record is still on `guard_lease` (so a session that a
    /// newer one of its node superseded deletes nothing); answer with
    /// `Released`.
    Release {
        broadcast: String,
        lease_id: i64,
        fencing_token: i64,
        guard_lease: i64,
    },
    /// Release a claim left by an earlier session the same way; answer
    /// with `StaleReleased`.
    ReleaseStale {
        broadcast: String,
        lease_id: i64,
        fencing_token: i64,
        guard_lease: i64,
    },
    /// A held claim on this lease is gone (the lease, or an operator, took
    /// it; `forced` for the latter).
    Forget {
        lease_id: i64,
        forced: bool,
    },
    /// Read the claims an earlier session of this node left (`earlier` is
    /// never `None`); answer with `Existing`.
    FindEarlierClaims {
        earlier: Earlier,
    },
    /// Write this session's node record on a lease of its own, retrying
    /// until etcd answers (`replaces`: the record's lost lease, so that a
    /// newer session's record is never overwritten); answer with
    /// `RecordWritten`, `RecordFailed` or `RecordTaken`.
    WriteRecord {
        replaces: Option<i64>,
    },
    /// Keep the node record's lease alive; its loss comes back as
    /// `LeaseLost`.
    KeepRecord {
        lease_id: i64,
    },
    /// Every claim is released: revoke the node record's lease.
    DropRecord {
        lease_id: i64,
    },
    /// A newer session of the node, `by`, took over: end the node's stream
    /// (claims are kept for the grace, for the newer session to adopt).
    Supersede {
        by: String,
    },
    /// The node is gone: fire `GraceExpired` after the detach grace.
    StartGrace,
    /// Mark the node record on `lease_id` detached until the grace ends,
    /// if it is still this session's: nobody is sent to a gone node.
    MarkDetached {
        lease_id: i64,
    },
    Send(Reply),
    /// Fire `RetryDue { broadcast, timer }` after `delay`.
    RetryAfter {
        broadcast: String,
        timer: u64,
        delay: Duration,
    },
    /// Ask the owner of `broadcast` (the claim with `fencing_token`) to let
    /// it go to this session's node, if the node record is still on
    /// `guard_lease`: a request the owner's replica sees in its view and
    /// answers by releasing; answer with `TakeoverAnswered`.
    RequestTakeover {
        broadcast: String,
        fencing_token: i64,
        guard_lease: i64,
    },
    /// Nothing is held or in flight any more: the session may end.
    Finished,
}

impl Action {
    /// A claim of `broadcast`, under the fence [`NodeClaims::handle`] fills in.
    fn claim(broadcast: String) -> Self {
        Action::Claim {
            broadcast,
            guard_lease: 0,
        }
    }

    /// Releases `claim`, under the fence [`NodeClaims::handle`] fills in.
    fn release(broadcast: String, claim: &Claim) -> Self {
        Action::Release {
            broadcast,
            lease_id: claim.lease_id,
            fencing_token: claim.fencing_token,
            guard_lease: 0,
        }
    }
}

#[cfg(test)]
mod fence_tests;
#[cfg(test)]
mod lease_tests;
#[cfg(test)]
mod properties;
#[cfg(test)]
mod takeover_tests;
#[cfg(test)]
mod tests;
