//! The etcd key layout and the JSON records stored under it.
//!
//! | key | value | lease |
//! | --- | --- | --- |
//! | `{prefix}broadcasts/{broadcast}` | [`ClaimRecord`] | the session's that claimed it |
//! | `{prefix}nodes/{node_id}` | [`NodeRecord`] | the session's |
//! | `{prefix}forced/{broadcast}` | [`ForcedRecord`]: why an operator revoked a claim | a short one of its own |
//! | `{prefix}replicas/{service_id}` | [`ReplicaRecord`]: a live replica, its version and draining mark | the replica's own |
//! | `{prefix}layout` | the layout version the cluster runs ([`LAYOUT_VERSION`]), as decimal text | none |
//!
//! Values are JSON so that `etcdctl get --prefix` is readable by an operator.
//!
//! Layout versions: 1 put each claim on a lease of its own; 2 puts a
//! session's claims on its node record's lease (records say
//! `claims_on_lease`), and adds the replica records and the layout key.
//! Keys a replica does not know are ignored by it, so replicas of layout 1
//! and 2 run side by side (docs/UPGRADING.md).

use std::collections::HashMap;
use std::sync::Arc;

use etcd_client::KeyValue;
use serde::{Deserialize, Serialize};

use crate::claims::Claim;

const BROADCASTS: &str = "broadcasts/";
const NODES: &str = "nodes/";
const FORCED: &str = "forced/";
const REPLICAS: &str = "replicas/";
const LAYOUT: &str = "layout";

/// The layout this build writes.
pub const LAYOUT_VERSION: u32 = 2;
/// The layouts this build can serve (it reads layout 1's claims too).
pub const KNOWN_LAYOUTS: [u32; 2] = [1, 2];

/// Where this deployment's keys live.
#[derive(Debug, Clone)]
pub struct Layout {
    prefix: String,
}

/// What a key under the prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    Broadcast(&'a str),
    Node(&'a str),
    Forced(&'a str),
    Replica(&'a str),
}

impl Layout {
    /// `prefix` is used as given and should end in `/`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn broadcast(&self, broadcast: &str) -> String {
        format!("{}{BROADCASTS}{broadcast}", self.prefix)
    }

    /// The key prefix of every broadcast whose name starts with `name_prefix`.
    pub fn broadcasts(&self, name_prefix: &str) -> String {
        self.broadcast(name_prefix)
    }

    pub fn node(&self, node_id: &str) -> String {
        format!("{}{NODES}{node_id}", self.prefix)
    }

    pub fn parse<'a>(&self, key: &'a [u8]) -> Option<Key<'a>> {
        let rest = std::str::from_utf8(key)
            .ok()?
            .strip_prefix(self.prefix.as_str())?;
        if let Some(b) = rest.strip_prefix(BROADCASTS) {
            Some(Key::Broadcast(b))
        } else if let Some(n) = rest.strip_prefix(NODES) {
            Some(Key::Node(n))
        } else if let Some(r) = rest.strip_prefix(REPLICAS) {
            Some(Key::Replica(r))
        } else {
            rest.strip_prefix(FORCED).map(Key::Forced)
        }
    }

    pub fn forced(&self, broadcast: &str) -> String {
        format!("{}{FORCED}{broadcast}", self.prefix)
    }

    pub fn replica(&self, service_id: &str) -> String {
        format!("{}{REPLICAS}{service_id}", self.prefix)
    }

    /// The key holding the cluster's layout version.
    pub fn version(&self) -> String {
        format!("{}{LAYOUT}", self.prefix)
    }
}

/// The value of a claim key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClaimRecord {
    pub node_id: String,
    #[serde(default)]
    pub endpoints: HashMap<String, String>,
    #[serde(default)]
    pub session_id: String,
    #[serde(default)]
    pub service_id: String,
    #[serde(default)]
    pub claimed_at_unix_ms: i64,
    #[serde(default)]
    pub lease_ttl_ms: u64,
}

impl ClaimRecord {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a ClaimRecord always serializes")
    }

    /// The claim a stored key-value describes; `None` when the value is not a
    /// claim record (someone wrote the key by hand).
    pub fn claim_from(broadcast: &str, kv: &KeyValue) -> Option<Claim> {
        let record: ClaimRecord = serde_json::from_slice(kv.value()).ok()?;
        Some(Claim {
            broadcast: broadcast.to_string(),
            node_id: record.node_id.into(),
            endpoints: Arc::new(record.endpoints),
            lease_id: kv.lease(),
            fencing_token: kv.create_revision(),
            revision: kv.mod_revision(),
            claimed_at_unix_ms: record.claimed_at_unix_ms,
            lease_ttl_ms: record.lease_ttl_ms,
            session_id: record.session_id.into(),
            service_id: record.service_id.into(),
        })
    }
}

/// The value of a node key: which session of which replica the node is on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRecord {
    #[serde(default)]
    pub endpoints: HashMap<String, String>,
    pub session_id: String,
    #[serde(default)]
    pub service_id: String,
    #[serde(default)]
    pub attached_at_unix_ms: i64,
    /// An operator asked the node to take no new publishers.
    #[serde(default)]
    pub draining: bool,
    /// Set when the session broke without goodbye: its claims are kept
    /// until then (the detach grace), for the node to come back. A newer
    /// session's record has none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub grace_ends_unix_ms: i64,
    /// The session's claims are on this record's lease (every record this
    /// build writes); absent in a record written by a replica of the model
    /// before, which put each claim on a lease of its own.
    #[serde(default)]
    pub claims_on_lease: bool,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl NodeRecord {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a NodeRecord always serializes")
    }

    pub fn from_kv(kv: &KeyValue) -> Option<Self> {
        serde_json::from_slice(kv.value()).ok()
    }
}

/// Why an operator revoked a claim, so its owner can be told.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForcedRecord {
    pub node_id: String,
    pub fencing_token: i64,
    pub reason: String,
    #[serde(default)]
    pub at_unix_ms: i64,
    /// Set when a node asked for the claim (a takeover), not an operator:
    /// the owner lets it go and stands by behind that node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub taken_by: String,
}

impl ForcedRecord {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a ForcedRecord always serializes")
    }

    pub fn from_kv(kv: &KeyValue) -> Option<Self> {
        serde_json::from_slice(kv.value()).ok()
    }
}

/// The value of a replica key: a live replica (its lease is kept alive
/// while it runs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ReplicaRecord {
    /// The build's version (`0.2.0 (commit)`).
    #[serde(default)]
    pub version: String,
    /// The layout version it writes.
    #[serde(default)]
    pub layout: u32,
    /// The address nodes reach it at (`--advertise`); empty when not set.
    #[serde(default)]
    pub advertise: String,
    /// Moving every session away, then not ready (`drain-replica`, or
    /// stopping).
    #[serde(default)]
    pub draining: bool,
    #[serde(default)]
    pub started_at_unix_ms: i64,
}

impl ReplicaRecord {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a ReplicaRecord always serializes")
    }

    pub fn from_kv(kv: &KeyValue) -> Option<Self> {
        serde_json::from_slice(kv.value()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let layout = Layout::new("/claims/v1/");
        assert_eq!(
            layout.broadcast("live/cam1"),
            "/claims/v1/broadcasts/live/cam1"
        );
        assert_eq!(layout.node("ingest-a"), "/claims/v1/nodes/ingest-a");
        assert_eq!(
            layout.parse(b"/claims/v1/broadcasts/live/cam1"),
            Some(Key::Broadcast("live/cam1"))
        );
        assert_eq!(layout.parse(b"/claims/v1/nodes/a"), Some(Key::Node("a")));
        assert_eq!(
            layout.parse(layout.forced("live/x").as_bytes()),
            Some(Key::Forced("live/x"))
        );
        assert_eq!(
            layout.parse(layout.replica("claims-a").as_bytes()),
            Some(Key::Replica("claims-a"))
        );
        assert_eq!(layout.parse(layout.version().as_bytes()), None);
        assert_eq!(layout.parse(b"/other/broadcasts/x"), None);
        assert_eq!(layout.parse(b"/claims/v1/junk"), None);
    }

    #[test]
    fn claim_record_is_readable_json() {
        let record = ClaimRecord {
            node_id: "a".into(),
            endpoints: HashMap::from([("rtmp".into(), "rtmp://h:1935".into())]),
            session_id: "s".into(),
            service_id: "svc".into(),
            claimed_at_unix_ms: 5,
            lease_ttl_ms: 10_000,
        };
        let json = String::from_utf8(record.to_json()).unwrap();
        assert!(json.contains("\"node_id\":\"a\""), "{json}");
        let back: ClaimRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record);
    }
}
