//! The watch-fed, in-memory view of every claim and attached node.
//!
//! Ownership reads answer from here instead of etcd. The view reads the whole
//! prefix once, then follows a watch from the next revision; the watch resumes
//! from its last revision + 1 after any break (see `store::watch`), and a
//! compacted history makes the view read the prefix again and diff, so no
//! change is ever missed. Sessions subscribe to its events to learn when a
//! broadcast they stand by for is released.
//!
//! It is also the one feed of claim changes `WatchClaims` serves: every
//! watcher of the replica reads the same batches, shared, from a ring of
//! recent history and a broadcast channel, so a watcher costs etcd nothing
//! and one that stops reading falls behind alone (it is told to resume;
//! nothing waits for it).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use tokio::sync::{broadcast, watch};

use crate::claims::Claim;
use crate::error::{Error, Result};
use crate::log_budget::{Say, Trouble};
use crate::store::watch::Change;
use crate::store::{NodeRecord, Purpose, Snapshot, Store};

mod feed;
mod replicas;
mod state;

use state::State;

pub use feed::{ClaimBatch, ClaimChange, ClaimFeed, Feed};
pub use replicas::ReplicaLoad;

/// Claim changes the ring keeps for watchers resuming from a recent
/// revision (a few MB at most).
const HISTORY_EVENTS: usize = 10_000;
/// Batches the live feed holds for its slowest watcher before that one is
/// told it fell behind (a batch is one etcd revision: 64 changes at most,
/// so some MB at most).
const FEED_BATCHES: usize = 1024;

/// What a subscriber hears.
#[derive(Debug, Clone, PartialEq)]
pub enum ViewEvent {
    Released {
        broadcast: String,
        revision: i64,
    },
    /// An operator revoked the claim with this fencing token, or (with
    /// `taken_by`) a node asked for it: its owner lets it go.
    Forced {
        broadcast: String,
        fencing_token: i64,
        reason: String,
        taken_by: Option<String>,
    },
    /// A node's record was written (attached, marked draining, or marked
    /// detached).
    Node {
        node_id: String,
        session_id: String,
        draining: bool,
        detached: bool,
        grace_ends_unix_ms: i64,
        revision: i64,
    },
    /// A node's record is gone (its session ended, or its lease expired).
    NodeGone {
        node_id: String,
    },
}

pub struct View {
    state: RwLock<State>,
    events: broadcast::Sender<ViewEvent>,
    claims: broadcast::Sender<Feed>,
    /// Bumped whenever the replicas' records change (see
    /// [`View::replicas_changed`]).
    replicas_seen: watch::Sender<u64>,
}

/// A node as the view sees it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub node_id: String,
    pub record: NodeRecord,
    pub claims: u32,
}

/// Whether the owner of a claim is still there: its node's session broken
/// (its record marked detached) or gone (no record: its replica died too,
/// and its claims expire with their leases).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Presence {
    pub detached: bool,
    /// When the detach grace ends; 0 when unknown.
    pub grace_ends_unix_ms: i64,
}

impl View {
    /// Whether `node_id`'s claims are held for a node that is gone. A view
    /// that has not read etcd yet knows of nothing gone.
    pub fn presence(&self, node_id: &str) -> Presence {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        if !state.synced {
            return Presence::default();
        }
        match state.nodes.get(node_id) {
            Some(record) => Presence {
                detached: record.grace_ends_unix_ms != 0,
                grace_ends_unix_ms: record.grace_ends_unix_ms,
            },
            None => Presence {
                detached: true,
                grace_ends_unix_ms: 0,
            },
        }
    }

    /// Starts following the store; reads fail with `Unavailable` until the
    /// first read of the prefix succeeded.
    pub fn start(store: Store) -> Arc<Self> {
        let (events, _) = broadcast::channel(4096);
        let (claims, _) = broadcast::channel(FEED_BATCHES);
        let view = Arc::new(Self {
            state: RwLock::new(State::default()),
            events,
            claims,
            replicas_seen: watch::Sender::new(0),
        });
        tokio::spawn(view.clone().follow(store));
        view
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ViewEvent> {
        self.events.subscribe()
    }

    /// Joins the claim feed from `from` (0 = from now on). `None` when
    /// `from` is older than the ring keeps: that history is etcd's.
    pub fn follow_claims(&self, from: i64) -> Result<Option<ClaimFeed>> {
        let state = self.read()?;
        // Joined under the lock: every batch after `state.revision` comes
        // on `live`, every one before is in the state (and maybe the ring).
        let live = self.claims.subscribe();
        if from == 0 || from > state.revision {
            return Ok(Some(ClaimFeed {
                backlog: Vec::new(),
                live,
                revision: state.revision,
            }));
        }
        if from <= state.history_floor {
            return Ok(None);
        }
        let backlog = state
            .history
            .iter()
            .filter(|b| b.last().is_some_and(|(_, r)| *r >= from))
            .cloned()
            .collect();
        Ok(Some(ClaimFeed {
            backlog,
            live,
            revision: state.revision,
        }))
    }

    /// Whether the view has read etcd and answers reads.
    pub fn synced(&self) -> bool {
        self.state.read().unwrap_or_else(|p| p.into_inner()).synced
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, State>> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        if !state.synced {
            return Err(Error::Unavailable(
                "the ownership view has not read etcd yet; retry shortly or ask with consistent=true".into(),
            ));
        }
        Ok(state)
    }

    pub fn revision(&self) -> i64 {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .revision
    }

    pub fn owner(&self, broadcast: &str) -> Result<Option<Claim>> {
        Ok(self.read()?.claims.get(broadcast).cloned())
    }

    /// Claims whose name starts with `prefix` (and of `node_id`, if not
    /// empty), after the name `after`, at most `limit`; plus whether more
    /// follow, and the revision read.
    pub fn list(
        &self,
        prefix: &str,
        node_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Claim>, bool, i64)> {
        let state = self.read()?;
        let start = match after {
            Some(a) => Bound::Excluded(a.to_string()),
            None => Bound::Included(prefix.to_string()),
        };
        let mut matching = state
            .claims
            .range((start, Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix))
            .filter(|(_, c)| node_id.is_empty() || &*c.node_id == node_id)
            .map(|(_, c)| c);
        let page: Vec<Claim> = matching.by_ref().take(limit).cloned().collect();
        let more = matching.next().is_some();
        Ok((page, more, state.revision))
    }

    /// How many claims' names start with `prefix`, counted up to `cap`
    /// (then `cap` and `true`): every claim is counted without a walk.
    pub fn count(&self, prefix: &str, cap: usize) -> Result<(usize, bool)> {
        let state = self.read()?;
        if prefix.is_empty() {
            return Ok((state.claims.len(), false));
        }
        let n = state
            .claims
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix))
            .take(cap + 1)
            .count();
        Ok((n.min(cap), n > cap))
    }

    pub fn nodes(&self) -> Result<(Vec<NodeView>, i64)> {
        let state = self.read()?;
        let nodes = state
            .nodes
            .iter()
            .map(|(id, record)| NodeView {
                node_id: id.clone(),
                record: record.clone(),
                claims: state.counts.get(id.as_str()).copied().unwrap_or(0),
            })
            .collect();
        Ok((nodes, state.revision))
    }

    async fn follow(self: Arc<Self>, store: Store) {
        let mut failures = 0;
        let mut trouble = Trouble::new(std::time::Duration::from_secs(10));
        loop {
            let snapshot = match store.snapshot().await {
                Ok(s) => s,
                Err(e) => {
                    failures += 1;
                    match trouble.failed(&e.to_string(), std::time::Instant::now()) {
                        Say::New => {
                            tracing::warn!(error = %e, "ownership view cannot read etcd; retrying")
                        }
                        Say::Still { since, times } => tracing::warn!(
                            ?since,
                            times,
                            "ownership view still cannot read etcd; retrying"
                        ),
                        Say::Quiet => {}
                    }
                    tokio::time::sleep(crate::retry::backoff(failures)).await;
                    continue;
                }
            };
            failures = 0;
            trouble.recovered(std::time::Instant::now());
            let revision = snapshot.revision;
            self.replace(snapshot);
            tracing::info!(revision, "ownership view synced");
            let mut watch = store.watch_everything(Purpose::View, revision + 1);
            while let Some(batch) = watch.recv().await {
                match batch {
                    Ok(batch) => self.apply(batch.changes, batch.revision),
                    Err(e) => {
                        tracing::warn!(error = %e, "ownership view lost its history; reading etcd again");
                        break;
                    }
                }
            }
        }
    }

    /// Installs a full read, telling subscribers of releases it implies.
    fn replace(&self, snapshot: Snapshot) {
        let Snapshot {
            claims,
            nodes,
            replicas,
            revision,
        } = snapshot;
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let fresh: BTreeMap<String, Claim> = claims
            .into_iter()
            .map(|c| (c.broadcast.clone(), state.shared.intern(c)))
            .collect();
        for (name, old) in &state.claims {
            let gone = fresh
                .get(name)
                .is_none_or(|c| c.fencing_token != old.fencing_token);
            if gone {
                let _ = self.events.send(ViewEvent::Released {
                    broadcast: name.clone(),
                    revision,
                });
            }
        }
        state.counts.clear();
        for claim in fresh.values() {
            *state.counts.entry(claim.node_id.clone()).or_default() += 1;
        }
        state.claims = fresh;
        for (node_id, record) in &nodes {
            state.adopt(node_id, record);
        }
        state.nodes = nodes.into_iter().collect();
        state.replicas = replicas.into_iter().collect();
        self.replicas_seen.send_modify(|n| *n += 1);
        if state.synced {
            // Watchers may have missed changes between the old revision and
            // this one.
            let _ = self.claims.send(Feed::HistoryLost { revision });
        }
        state.history.clear();
        state.history_events = 0;
        state.history_floor = revision;
        state.revision = revision;
        state.synced = true;
    }

    fn apply(&self, changes: Vec<(Change, i64)>, revision: i64) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let mut claim_changes = Vec::new();
        for (change, rev) in changes {
            match change {
                Change::Claim { claim, created } => {
                    let claim = state.shared.intern(claim);
                    state.insert(claim.clone());
                    claim_changes.extend(
                        ClaimChange::of(Change::Claim { claim, created }).map(|c| (c, rev)),
                    );
                }
                Change::Released { broadcast, claim } => {
                    state.remove(&broadcast);
                    let _ = self.events.send(ViewEvent::Released {
                        broadcast: broadcast.clone(),
                        revision: rev,
                    });
                    let change = Change::Released { broadcast, claim };
                    claim_changes.extend(ClaimChange::of(change).map(|c| (c, rev)));
                }
                Change::Node { node_id, record } => {
                    let _ = self.events.send(ViewEvent::Node {
                        node_id: node_id.clone(),
                        session_id: record.session_id.clone(),
                        draining: record.draining,
                        detached: record.grace_ends_unix_ms != 0,
                        grace_ends_unix_ms: record.grace_ends_unix_ms,
                        revision: rev,
                    });
                    let adopted = state.adopt(&node_id, &record);
                    claim_changes.extend(
                        adopted
                            .into_iter()
                            .map(|claim| (ClaimChange::Adopted(claim), rev)),
                    );
                    state.nodes.insert(node_id, record);
                }
                Change::Forced { broadcast, record } => {
                    let _ = self.events.send(ViewEvent::Forced {
                        broadcast,
                        fencing_token: record.fencing_token,
                        reason: record.reason,
                        taken_by: Some(record.taken_by).filter(|by| !by.is_empty()),
                    });
                }
                Change::Replica { service_id, record } => {
                    state.replicas.insert(service_id, record);
                    self.replicas_seen.send_modify(|n| *n += 1);
                }
                Change::ReplicaGone { service_id } => {
                    state.replicas.remove(&service_id);
                    self.replicas_seen.send_modify(|n| *n += 1);
                }
                Change::NodeGone { node_id } => {
                    let _ = self.events.send(ViewEvent::NodeGone {
                        node_id: node_id.clone(),
                    });
                    state.nodes.remove(&node_id);
                }
            }
        }
        if !claim_changes.is_empty() {
            // Sent under the lock, so a watcher joining sees each batch
            // either in the state or on its receiver, never both or neither.
            let claim_changes: ClaimBatch = claim_changes.into();
            let _ = self.claims.send(Feed::Changes(claim_changes.clone()));
            state.remember(claim_changes);
        }
        state.revision = state.revision.max(revision);
    }
}
