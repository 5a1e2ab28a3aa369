//! The view's feed of ownership changes: what `WatchClaims` watchers and
//! the ownership page read. A store change becomes a [`ClaimChange`] once,
//! in the view; each reader only shows it its own way.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::claims::Claim;
use crate::store::watch::Change;

/// A change of ownership.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimChange {
    /// A node created the claim.
    Claimed(Claim),
    /// A newer session of the owner (or this view, seeing its record
    /// written again) took the claim over, token unchanged.
    Adopted(Claim),
    /// The claim is gone; `claim` is what it was, when the view knew it.
    Released {
        broadcast: String,
        claim: Option<Claim>,
    },
}

impl ClaimChange {
    /// The change of ownership a store change is, if it is one (the one
    /// conversion: the view's feed and a replay of etcd's history use it).
    pub fn of(change: Change) -> Option<Self> {
        Some(match change {
            Change::Claim {
                claim,
                created: true,
            } => Self::Claimed(claim),
            Change::Claim {
                claim,
                created: false,
            } => Self::Adopted(claim),
            Change::Released { broadcast, claim } => Self::Released { broadcast, claim },
            Change::Node { .. }
            | Change::NodeGone { .. }
            | Change::Forced { .. }
            | Change::Replica { .. }
            | Change::ReplicaGone { .. } => return None,
        })
    }

    pub fn broadcast(&self) -> &str {
        match self {
            Self::Claimed(c) | Self::Adopted(c) => &c.broadcast,
            Self::Released { broadcast, .. } => broadcast,
        }
    }

    /// The claim as it is now (claimed, adopted) or was (released).
    pub fn claim(&self) -> Option<&Claim> {
        match self {
            Self::Claimed(c) | Self::Adopted(c) => Some(c),
            Self::Released { claim, .. } => claim.as_ref(),
        }
    }

    /// What the change is called on the page and in the API.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Claimed(_) => "claimed",
            Self::Adopted(_) => "adopted",
            Self::Released { .. } => "released",
        }
    }
}

/// Claim changes of one etcd watch response, in revision order.
pub type ClaimBatch = Arc<[(ClaimChange, i64)]>;

/// What a watcher of claim changes hears.
#[derive(Debug, Clone)]
pub enum Feed {
    Changes(ClaimBatch),
    /// The view read etcd again after losing its history: changes before
    /// `revision` may have been skipped, so a watcher must start over.
    HistoryLost {
        revision: i64,
    },
}

/// A watcher's start: the recent batches it asked for, then live ones.
pub struct ClaimFeed {
    /// Batches from the ring that may hold changes at or after the
    /// revision asked for (the watcher filters by revision and name).
    pub backlog: Vec<ClaimBatch>,
    /// Every batch after `revision`.
    pub live: broadcast::Receiver<Feed>,
    /// The view's revision when the watcher joined.
    pub revision: i64,
}
