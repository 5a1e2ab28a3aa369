//! Conversions between the domain types and the `claims.v1` messages.

use claims_proto::v1 as pb;

use crate::claims::{Claim, Reply};

use crate::view::{ClaimChange, NodeView, Presence, ViewEvent};

impl From<Claim> for pb::Claim {
    fn from(c: Claim) -> Self {
        pb::Claim {
            broadcast: c.broadcast,
            node_id: c.node_id.to_string(),
            endpoints: (*c.endpoints).clone(),
            lease_id: c.lease_id,
            fencing_token: c.fencing_token,
            claimed_at_unix_ms: c.claimed_at_unix_ms,
            lease_ttl_ms: c.lease_ttl_ms,
            session_id: c.session_id.to_string(),
            service_id: c.service_id.to_string(),
            detached: false,
            grace_ends_unix_ms: 0,
        }
    }
}

pub fn service_message(msg: pb::service_message::Msg) -> pb::ServiceMessage {
    pb::ServiceMessage { msg: Some(msg) }
}

/// A claim as readers and a node that met it are told of it: with whether
/// its owner is gone (`presence`), so that nobody is sent to a dead node.
pub fn claim_with(claim: Claim, presence: Presence) -> pb::Claim {
    pb::Claim {
        detached: presence.detached,
        grace_ends_unix_ms: presence.grace_ends_unix_ms,
        ..claim.into()
    }
}

/// What a session tells its node for `reply`, complete: a conflict says
/// whether the owner is gone (`presence` of its node), so that the node
/// holds its publisher instead of sending it there.
pub fn reply(reply: Reply, presence: impl Fn(&str) -> Presence) -> pb::ServiceMessage {
    use pb::service_message::Msg;
    service_message(match reply {
        Reply::Claimed { claim, adopted } => Msg::Claimed(pb::Claimed {
            claim: Some(claim.into()),
            adopted,
        }),
        Reply::Conflict { broadcast, owner } => {
            let gone = presence(&owner.node_id);
            Msg::Conflict(pb::Conflict {
                broadcast,
                owner: Some(claim_with(owner, gone)),
            })
        }
        Reply::Released { broadcast } => Msg::Released(pb::Released { broadcast }),
        Reply::Lost { broadcast, reason } => Msg::Lost(pb::Lost {
            broadcast,
            reason,
            taken_by: String::new(),
        }),
        Reply::Draining { draining } => Msg::Draining(pb::Draining { draining }),
        Reply::Retrying {
            broadcast,
            reason,
            retry_in,
        } => Msg::Retrying(pb::Retrying {
            broadcast,
            reason,
            retry_in_ms: retry_in.as_millis() as u64,
        }),
        Reply::Refused {
            broadcast,
            track,
            reason,
        } => Msg::Rejected(pb::Rejected {
            broadcast,
            track,
            reason,
            code: tonic::Code::ResourceExhausted as i32,
        }),
        Reply::TakeoverRefused { broadcast, reason } => Msg::Rejected(pb::Rejected {
            broadcast,
            track: String::new(),
            reason,
            code: tonic::Code::FailedPrecondition as i32,
        }),
        Reply::TakenOver { broadcast, by } => Msg::Lost(pb::Lost {
            reason: format!(
                "taken over by node {by}: a newer publisher of {broadcast} there won (duplicate-publisher policy takeover)"
            ),
            broadcast,
            taken_by: by,
        }),
    })
}

impl From<NodeView> for pb::Node {
    fn from(n: NodeView) -> Self {
        pb::Node {
            node_id: n.node_id,
            endpoints: n.record.endpoints,
            session_id: n.record.session_id,
            service_id: n.record.service_id,
            attached_at_unix_ms: n.record.attached_at_unix_ms,
            detached: n.record.grace_ends_unix_ms != 0,
            grace_ends_unix_ms: n.record.grace_ends_unix_ms,
            claims: n.claims,
            draining: n.record.draining,
        }
    }
}

/// What a watcher of nodes is told of a change of the view, if it is about
/// a node.
pub fn node_event(event: ViewEvent) -> Option<pb::NodeEvent> {
    Some(match event {
        ViewEvent::Node {
            node_id,
            session_id,
            draining,
            detached,
            grace_ends_unix_ms,
            ..
        } => pb::NodeEvent {
            node: Some(pb::Node {
                node_id,
                session_id,
                draining,
                detached,
                grace_ends_unix_ms,
                ..Default::default()
            }),
            gone: false,
        },
        ViewEvent::NodeGone { node_id } => pb::NodeEvent {
            node: Some(pb::Node {
                node_id,
                ..Default::default()
            }),
            gone: true,
        },
        _ => return None,
    })
}

/// The `ClaimEvent` a change of ownership is to watchers.
pub fn claim_event(change: &ClaimChange, revision: i64) -> pb::ClaimEvent {
    use pb::claim_event::Kind;
    let kind = match change {
        ClaimChange::Claimed(_) => Kind::Claimed,
        ClaimChange::Adopted(_) => Kind::Adopted,
        ClaimChange::Released { .. } => Kind::Released,
    };
    let claim = change
        .claim()
        .cloned()
        .map(Into::into)
        .unwrap_or(pb::Claim {
            broadcast: change.broadcast().to_string(),
            ..Default::default()
        });
    pb::ClaimEvent {
        kind: kind as i32,
        claim: Some(claim),
        revision,
    }
}

/// The answer to `DrainReplica`.
pub fn replica_drain(
    service_id: String,
    draining: bool,
    sessions: usize,
) -> pb::DrainReplicaResponse {
    pb::DrainReplicaResponse {
        service_id,
        draining,
        sessions: sessions as u32,
    }
}
