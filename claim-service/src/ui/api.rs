//! The JSON the ownership page reads: an overview (this replica, every
//! node, what this replica's sessions stand by for) and one page of claims.
//! Lease ids are strings: they pass 2^53, past what JavaScript's numbers
//! hold exactly.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::Page;
use crate::error::Error;
use crate::store::NodeRecord;

/// Claims on one page at most.
const PAGE_MAX: usize = 500;
/// Claims a prefix's count walks at most.
const COUNT_CAP: usize = 100_000;

#[derive(Serialize)]
struct Node {
    node_id: String,
    replica: String,
    session_id: String,
    endpoints: HashMap<String, String>,
    attached_at_unix_ms: i64,
    draining: bool,
    detached: bool,
    grace_ends_unix_ms: i64,
    claims: u32,
}

/// A replica and the node sessions it holds (live: it has a record; an
/// older build holding sessions has none).
#[derive(Serialize)]
struct Replica {
    replica: String,
    sessions: usize,
    live: bool,
    version: String,
    draining: bool,
}

#[derive(Serialize)]
struct Standby {
    node_id: String,
    broadcasts: Vec<String>,
}

#[derive(Serialize)]
struct Overview {
    replica: String,
    ready: bool,
    revision: i64,
    claims: usize,
    nodes: Vec<Node>,
    /// Every replica and the sessions it holds, as the view sees them.
    replicas: Vec<Replica>,
    /// What sessions attached to this replica stand by for (each
    /// replica knows its own sessions').
    standby: Vec<Standby>,
    standby_listed_per_node: usize,
}

#[derive(Serialize)]
struct Claim {
    broadcast: String,
    node_id: String,
    replica: String,
    fencing_token: i64,
    lease_id: String,
    lease_ttl_ms: u64,
    claimed_at_unix_ms: i64,
    /// Claimed by an earlier session of its node and held by the current
    /// one (it was claimed before the node's current session attached).
    adopted: bool,
    /// Its node's session broke: held only until `grace_ends_unix_ms`.
    detached: bool,
    grace_ends_unix_ms: i64,
}

#[derive(Serialize)]
struct ClaimPage {
    claims: Vec<Claim>,
    more: bool,
    /// Claims whose name starts with the prefix (at most `matching_cap`).
    matching: usize,
    matching_capped: bool,
    revision: i64,
}

#[derive(Deserialize)]
pub struct ClaimQuery {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

/// A view that has not read etcd yet answers 503 saying so.
fn unavailable(e: Error) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
}

fn json<T: Serialize>(body: T) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

pub async fn overview(State(page): State<Arc<Page>>) -> Response {
    let view = &page.ctx.view;
    let (nodes, revision) = match view.nodes() {
        Ok(n) => n,
        Err(e) => return unavailable(e),
    };
    let claims = view.count("", 0).map(|(n, _)| n).unwrap_or(0);
    let standby = page.ctx.sessions.standby().await;
    let replicas = view.replica_loads().unwrap_or_default();
    json(Overview {
        replica: page.ctx.config.service_id.clone(),
        ready: page.readiness.is_ready(),
        revision,
        claims,
        nodes: nodes
            .into_iter()
            .map(|n| Node {
                node_id: n.node_id,
                replica: n.record.service_id,
                session_id: n.record.session_id,
                endpoints: n.record.endpoints,
                attached_at_unix_ms: n.record.attached_at_unix_ms,
                draining: n.record.draining,
                detached: n.record.grace_ends_unix_ms != 0,
                grace_ends_unix_ms: n.record.grace_ends_unix_ms,
                claims: n.claims,
            })
            .collect(),
        replicas: replicas
            .into_iter()
            .map(|l| Replica {
                replica: l.service_id,
                sessions: l.sessions,
                live: l.record.is_some(),
                version: l
                    .record
                    .as_ref()
                    .map(|r| r.version.clone())
                    .unwrap_or_default(),
                draining: l.record.is_some_and(|r| r.draining),
            })
            .collect(),
        standby: standby
            .into_iter()
            .map(|(node_id, broadcasts)| Standby {
                node_id,
                broadcasts,
            })
            .collect(),
        standby_listed_per_node: crate::sessions::STANDBY_LISTED,
    })
}

pub async fn claims(State(page): State<Arc<Page>>, Query(q): Query<ClaimQuery>) -> Response {
    let view = &page.ctx.view;
    let limit = q.limit.unwrap_or(100).clamp(1, PAGE_MAX);
    let (claims, more, revision) = match view.list(&q.prefix, "", q.after.as_deref(), limit) {
        Ok(page) => page,
        Err(e) => return unavailable(e),
    };
    let (matching, matching_capped) = match view.count(&q.prefix, COUNT_CAP) {
        Ok(n) => n,
        Err(e) => return unavailable(e),
    };
    let records: HashMap<String, NodeRecord> = match view.nodes() {
        Ok((nodes, _)) => nodes.into_iter().map(|n| (n.node_id, n.record)).collect(),
        Err(e) => return unavailable(e),
    };
    let claims = claims
        .into_iter()
        .map(|c| {
            let record = records.get(&*c.node_id);
            Claim {
                adopted: record.is_some_and(|r| c.claimed_at_unix_ms < r.attached_at_unix_ms),
                // No record: the node's session and its replica are gone;
                // the claim lasts until its lease expires.
                detached: record.is_none_or(|r| r.grace_ends_unix_ms != 0),
                grace_ends_unix_ms: record.map_or(0, |r| r.grace_ends_unix_ms),
                broadcast: c.broadcast,
                node_id: c.node_id.to_string(),
                replica: c.service_id.to_string(),
                fencing_token: c.fencing_token,
                lease_id: c.lease_id.to_string(),
                lease_ttl_ms: c.lease_ttl_ms,
                claimed_at_unix_ms: c.claimed_at_unix_ms,
            }
        })
        .collect();
    json(ClaimPage {
        claims,
        more,
        matching,
        matching_capped,
        revision,
    })
}
