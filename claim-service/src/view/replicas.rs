//! The replicas as the view sees them: which are live (their records),
//! and how many attached node sessions each holds (the node records that
//! name it), for spreading sessions over them.

use super::View;
use crate::error::Result;
use crate::store::ReplicaRecord;

/// One replica's load.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaLoad {
    pub service_id: String,
    /// Attached node sessions (records not marked detached) naming it.
    pub sessions: usize,
    /// Its record; `None` for a replica that writes none (an older build)
    /// but holds sessions.
    pub record: Option<ReplicaRecord>,
}

impl View {
    /// Changes whenever a replica's record is written or goes (a
    /// draining mark among them).
    pub fn replicas_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.replicas_seen.subscribe()
    }

    /// `service_id`'s record, if it is live.
    pub fn replica_record(&self, service_id: &str) -> Option<ReplicaRecord> {
        self.read()
            .ok()
            .and_then(|state| state.replicas.get(service_id).cloned())
    }

    /// Every replica that is live or holds an attached session, in
    /// service id order.
    pub fn replica_loads(&self) -> Result<Vec<ReplicaLoad>> {
        let state = self.read()?;
        let mut loads: std::collections::BTreeMap<&str, ReplicaLoad> = state
            .replicas
            .iter()
            .map(|(id, record)| {
                let load = ReplicaLoad {
                    service_id: id.clone(),
                    sessions: 0,
                    record: Some(record.clone()),
                };
                (id.as_str(), load)
            })
            .collect();
        for record in state.nodes.values() {
            if record.grace_ends_unix_ms != 0 || record.service_id.is_empty() {
                continue;
            }
            loads
                .entry(record.service_id.as_str())
                .or_insert_with(|| ReplicaLoad {
                    service_id: record.service_id.clone(),
                    sessions: 0,
                    record: None,
                })
                .sessions += 1;
        }
        Ok(loads.into_values().collect())
    }

    /// A node whose record a replica of layout 1 wrote (its claims each on
    /// a lease of their own), if one is attached.
    pub fn older_layout_writer(&self) -> Option<String> {
        let state = self.read().ok()?;
        state
            .nodes
            .iter()
            .find(|(_, r)| !r.claims_on_lease)
            .map(|(id, _)| id.clone())
    }

    /// The replica a node's record names, if it has one.
    pub fn node_replica(&self, node_id: &str) -> Option<String> {
        let state = self.read().ok()?;
        state.nodes.get(node_id).map(|r| r.service_id.clone())
    }
}
