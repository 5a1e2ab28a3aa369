//! The view's memory: every claim by broadcast name, claims counted per
//! node, node and replica records, one copy of what many claims share, and
//! the ring of recent claim batches watchers resume from.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::{ClaimBatch, HISTORY_EVENTS};
use crate::claims::Claim;
use crate::store::{NodeRecord, ReplicaRecord};

#[derive(Default)]
pub(super) struct State {
    pub(super) claims: BTreeMap<String, Claim>,
    /// Claims per node, kept with `claims` (ListNodes is asked often: by
    /// every ingest node's owner cache).
    pub(super) counts: HashMap<Arc<str>, u32>,
    pub(super) nodes: BTreeMap<String, NodeRecord>,
    /// Live replicas, by service id.
    pub(super) replicas: BTreeMap<String, ReplicaRecord>,
    pub(super) revision: i64,
    pub(super) synced: bool,
    pub(super) shared: Shared,
    /// Recent claim batches; every claim change after `history_floor` is
    /// in it.
    pub(super) history: VecDeque<ClaimBatch>,
    pub(super) history_events: usize,
    pub(super) history_floor: i64,
}

impl State {
    /// Puts a claim in, keeping the counts.
    pub(super) fn insert(&mut self, claim: Claim) {
        *self.counts.entry(claim.node_id.clone()).or_default() += 1;
        if let Some(old) = self.claims.insert(claim.broadcast.clone(), claim) {
            self.uncount(&old.node_id);
        }
    }

    /// Takes a claim out, keeping the counts.
    pub(super) fn remove(&mut self, broadcast: &str) {
        if let Some(old) = self.claims.remove(broadcast) {
            self.uncount(&old.node_id);
        }
    }

    pub(super) fn uncount(&mut self, node_id: &Arc<str>) {
        if let Some(n) = self.counts.get_mut(node_id) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(node_id);
            }
        }
    }

    /// A node's record written by `record.session_id`: every claim of the
    /// node is that session's from now on (a newer session adopts its
    /// node's claims as they are, without rewriting them; the record is
    /// their fence). The claims whose session changed, as they are now.
    pub(super) fn adopt(&mut self, node_id: &str, record: &NodeRecord) -> Vec<Claim> {
        if record.session_id.is_empty() {
            return Vec::new();
        }
        let session: Arc<str> = self.shared.string(&Arc::from(record.session_id.as_str()));
        let service: Arc<str> = self.shared.string(&Arc::from(record.service_id.as_str()));
        let mut adopted = Vec::new();
        for claim in self.claims.values_mut() {
            if &*claim.node_id == node_id && claim.session_id != session {
                claim.session_id = session.clone();
                claim.service_id = service.clone();
                adopted.push(claim.clone());
            }
        }
        adopted
    }

    pub(super) fn remember(&mut self, batch: ClaimBatch) {
        self.history_events += batch.len();
        self.history.push_back(batch);
        while self.history_events > HISTORY_EVENTS {
            let Some(oldest) = self.history.pop_front() else {
                break;
            };
            self.history_events -= oldest.len();
            if let Some((_, revision)) = oldest.last() {
                self.history_floor = self.history_floor.max(*revision);
            }
        }
    }
}

/// One copy of what many claims have in common (node id, endpoints, session
/// and replica ids): each claim decoded from etcd would otherwise carry its
/// own, and they are most of a claim's size.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) strings: HashSet<Arc<str>>,
    /// Endpoints by session id (a session's endpoints never change).
    pub(super) endpoints: HashMap<Arc<str>, Arc<HashMap<String, String>>>,
    /// Size after the last prune; the next one comes at twice that.
    pub(super) pruned_at: usize,
}

impl Shared {
    pub(super) fn string(&mut self, s: &Arc<str>) -> Arc<str> {
        match self.strings.get(&**s) {
            Some(known) => known.clone(),
            None => {
                self.strings.insert(s.clone());
                s.clone()
            }
        }
    }

    pub(super) fn intern(&mut self, mut claim: Claim) -> Claim {
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
