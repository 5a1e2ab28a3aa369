//! The watch-fed, in-memory view of every claim and attached node.
//!
//! Ownership reads answer from here instead of etcd. The view reads the whole
//! prefix once, then follows a watch from the next revision; the watch resumes
//! from its last revision + 1 after any break (see `store::watch`), and a
//! compacted history makes the view read the prefix again and diff, so no
//! change is ever missed. Sessions subscribe to its events to learn when a
//! broadcast they stand by for is released.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use tokio::sync::broadcast;

use crate::claims::Claim;
use crate::error::{Error, Result};
use crate::store::watch::Change;
use crate::store::{NodeRecord, Store};

/// What a subscriber hears.
#[derive(Debug, Clone, PartialEq)]
pub enum ViewEvent {
    Released {
        broadcast: String,
        revision: i64,
    },
    /// An operator revoked the claim with this fencing token.
    Forced {
        broadcast: String,
        fencing_token: i64,
        reason: String,
    },
    /// A node's record was written (attached, or marked draining).
    Node {
        node_id: String,
        session_id: String,
        draining: bool,
        revision: i64,
    },
}

#[derive(Default)]
struct State {
    claims: BTreeMap<String, Claim>,
    nodes: BTreeMap<String, NodeRecord>,
    revision: i64,
    synced: bool,
    shared: Shared,
}

/// One copy of what many claims have in common (node id, endpoints, session
/// and replica ids): each claim decoded from etcd would otherwise carry its
/// own, and they are most of a claim's size.
#[derive(Default)]
struct Shared {
    strings: HashSet<Arc<str>>,
    /// Endpoints by session id (a session's endpoints never change).
    endpoints: HashMap<Arc<str>, Arc<HashMap<String, String>>>,
    /// Size after the last prune; the next one comes at twice that.
    pruned_at: usize,
}

impl Shared {
    fn string(&mut self, s: &Arc<str>) -> Arc<str> {
        match self.strings.get(&**s) {
            Some(known) => known.clone(),
            None => {
                self.strings.insert(s.clone());
                s.clone()
            }
        }
    }

    fn intern(&mut self, mut claim: Claim) -> Claim {
        claim.node_id = self.string(&claim.node_id);
        claim.session_id = self.string(&claim.session_id);
        claim.service_id = self.string(&claim.service_id);
        match self.endpoints.get(&claim.session_id) {
            Some(known) if **known == *claim.endpoints => claim.endpoints = known.clone(),
            _ => {
                self.endpoints
                    .insert(claim.session_id.clone(), claim.endpoints.clone());
            }
        }
        let size = self.strings.len() + self.endpoints.len();
        if size > 2 * self.pruned_at + 64 {
            // Forget what no claim holds any more (sessions come and go).
            self.strings.retain(|s| Arc::strong_count(s) > 1);
            self.endpoints.retain(|_, e| Arc::strong_count(e) > 1);
            self.pruned_at = self.strings.len() + self.endpoints.len();
        }
        claim
    }
}

pub struct View {
    state: RwLock<State>,
    events: broadcast::Sender<ViewEvent>,
}

/// A node as the view sees it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub node_id: String,
    pub record: NodeRecord,
    pub claims: u32,
}

impl View {
    /// Starts following the store; reads fail with `Unavailable` until the
    /// first read of the prefix succeeded.
    pub fn start(store: Store) -> Arc<Self> {
        let (events, _) = broadcast::channel(4096);
        let view = Arc::new(Self {
            state: RwLock::new(State::default()),
            events,
        });
        tokio::spawn(view.clone().follow(store));
        view
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ViewEvent> {
        self.events.subscribe()
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

    pub fn nodes(&self) -> Result<(Vec<NodeView>, i64)> {
        let state = self.read()?;
        let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
        for claim in state.claims.values() {
            *counts.entry(&*claim.node_id).or_default() += 1;
        }
        let nodes = state
            .nodes
            .iter()
            .map(|(id, record)| NodeView {
                node_id: id.clone(),
                record: record.clone(),
                claims: counts.get(id.as_str()).copied().unwrap_or(0),
            })
            .collect();
        Ok((nodes, state.revision))
    }

    async fn follow(self: Arc<Self>, store: Store) {
        let mut failures = 0;
        loop {
            let snapshot = match store.snapshot().await {
                Ok(s) => s,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "ownership view cannot read etcd; retrying");
                    tokio::time::sleep(crate::claims::backoff(failures)).await;
                    continue;
                }
            };
            failures = 0;
            self.replace(snapshot.claims, snapshot.nodes, snapshot.revision);
            tracing::info!(revision = snapshot.revision, "ownership view synced");
            let mut watch = store.watch(store.layout().prefix().to_string(), snapshot.revision + 1);
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
    fn replace(&self, claims: Vec<Claim>, nodes: Vec<(String, NodeRecord)>, revision: i64) {
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
        state.claims = fresh;
        state.nodes = nodes.into_iter().collect();
        state.revision = revision;
        state.synced = true;
    }

    fn apply(&self, changes: Vec<(Change, i64)>, revision: i64) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        for (change, rev) in changes {
            match change {
                Change::Claim { claim, .. } => {
                    let claim = state.shared.intern(claim);
                    state.claims.insert(claim.broadcast.clone(), claim);
                }
                Change::Released { broadcast, .. } => {
                    state.claims.remove(&broadcast);
                    let _ = self.events.send(ViewEvent::Released {
                        broadcast,
                        revision: rev,
                    });
                }
                Change::Node { node_id, record } => {
                    let _ = self.events.send(ViewEvent::Node {
                        node_id: node_id.clone(),
                        session_id: record.session_id.clone(),
                        draining: record.draining,
                        revision: rev,
                    });
                    state.nodes.insert(node_id, record);
                }
                Change::Forced { broadcast, record } => {
                    let _ = self.events.send(ViewEvent::Forced {
                        broadcast,
                        fencing_token: record.fencing_token,
                        reason: record.reason,
                    });
                }
                Change::NodeGone { node_id } => {
                    state.nodes.remove(&node_id);
                }
            }
        }
        state.revision = state.revision.max(revision);
    }
}
