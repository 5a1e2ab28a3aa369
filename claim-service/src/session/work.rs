//! Work a session starts in etcd without waiting for it (a claim, the
//! node's record, the claims an earlier session left), each answering the
//! session's rules with an event on `events`; and the log line of each
//! reply the node is told.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::claims::{Earlier, Event, Reply, TakeoverOutcome};
use crate::error::Error;
use crate::log_budget::LogBudget;
use crate::retry::backoff;
use crate::store::{unix_ms, Attempt, ClaimRequest, Holder, NodeRecord, Store};

type Events = mpsc::UnboundedSender<Event>;

/// Submits a claim of `broadcast` under the record's `guard_lease`.
pub(super) fn claim(
    store: &Store,
    holder: &Holder,
    ttl: Duration,
    broadcast: String,
    guard_lease: i64,
    adopting: bool,
    events: &Events,
) {
    let req = ClaimRequest {
        broadcast: broadcast.clone(),
        holder: holder.clone(),
        ttl,
        guard_lease,
        adopting,
    };
    let tx = events.clone();
    store.submit_claim(req, move |attempt| {
        // If the session is gone (replica shutting down), the lease is
        // left to expire or be adopted.
        let _ = tx.send(match attempt {
            Attempt::Outcome(outcome) => Event::ClaimAnswered { broadcast, outcome },
            Attempt::Fenced { session_id } => Event::Fenced {
                broadcast,
                session_id,
            },
        });
    });
}

/// Reads the claims an earlier session of this node left (released unless
/// live now), where its record said they are, retrying until etcd answers.
/// Keys of `known` broadcasts (this session's own business) are not read.
pub(super) fn find_earlier_claims(
    store: &Store,
    holder: &Holder,
    earlier: Earlier,
    known: std::collections::HashSet<String>,
    events: &Events,
) {
    let known = std::sync::Arc::new(known);
    let store = store.clone();
    let tx = events.clone();
    let node_id = holder.node_id.clone();
    tokio::spawn(async move {
        let found = until_done("cannot read this node's earlier claims", &tx, || {
            let (store, node_id, known) = (store.clone(), node_id.clone(), known.clone());
            async move {
                match earlier {
                    Earlier::None => Ok(Vec::new()),
                    Earlier::OnLease(lease_id) => {
                        store
                            .claims_on_lease(lease_id, &node_id, |b| known.contains(b))
                            .await
                    }
                    Earlier::Anywhere => store.claims_of_node(&node_id).await,
                }
            }
        })
        .await;
        if let Some(claims) = found {
            let _ = tx.send(Event::Existing { claims });
        }
    });
}

/// Asks the owner of `broadcast` (the claim with `fencing_token`) to let it
/// go to this node, under the record's `guard_lease`.
pub(super) fn request_takeover(
    store: &Store,
    holder: &Holder,
    broadcast: String,
    fencing_token: i64,
    guard_lease: i64,
    events: &Events,
) {
    let store = store.clone();
    let holder = holder.clone();
    let tx = events.clone();
    tokio::spawn(async move {
        let outcome = match store
            .request_takeover(&broadcast, fencing_token, &holder, guard_lease)
            .await
        {
            Ok(true) => TakeoverOutcome::Requested,
            Ok(false) => TakeoverOutcome::Changed,
            Err(e) => TakeoverOutcome::Unavailable {
                reason: e.to_string(),
            },
        };
        tracing::info!(%broadcast, fencing_token, ?outcome, "takeover requested of the owner");
        let _ = tx.send(Event::TakeoverAnswered { broadcast, outcome });
    });
}

/// Marks the node's record detached until `grace` from now, so that every
/// replica's view (and whoever asks who owns a broadcast) knows its claims
/// are only kept for the grace. One try: a record it cannot mark only
/// means publishers elsewhere are refused as before.
pub(super) fn mark_detached(store: &Store, holder: &Holder, lease_id: i64, grace: Duration) {
    let store = store.clone();
    let holder = holder.clone();
    let ends = unix_ms() + grace.as_millis() as i64;
    tokio::spawn(async move {
        match store
            .mark_detached(&holder.node_id, &holder.session_id, lease_id, ends)
            .await
        {
            Ok(true) => tracing::debug!("node record marked detached"),
            Ok(false) => tracing::debug!("node record already rewritten; not marked detached"),
            Err(e) => tracing::info!(error = %e, "cannot mark the node record detached"),
        }
    });
}

/// Writes the node's record on a lease of its own, retrying until etcd
/// answers; each failure is reported, so waiting claims can say why.
pub(super) fn write_record(
    store: &Store,
    holder: &Holder,
    ttl: Duration,
    replaces: Option<i64>,
    events: &Events,
) {
    let store = store.clone();
    let tx = events.clone();
    let node_id = holder.node_id.clone();
    let record = NodeRecord {
        endpoints: (*holder.endpoints).clone(),
        session_id: holder.session_id.to_string(),
        service_id: holder.service_id.to_string(),
        attached_at_unix_ms: unix_ms(),
        draining: false,
        grace_ends_unix_ms: 0,
        claims_on_lease: true,
    };
    tokio::spawn(async move {
        let mut failures = 0;
        while !tx.is_closed() {
            match store.register_node(&node_id, &record, ttl, replaces).await {
                Ok(registration) => {
                    let written = Event::RecordWritten {
                        lease_id: registration.lease_id,
                        revision: registration.revision,
                        draining: registration.draining,
                        earlier: registration.earlier,
                    };
                    if tx.send(written).is_err() {
                        // The session ended meanwhile.
                        let _ = store.revoke(registration.lease_id).await;
                    }
                    return;
                }
                Err(Error::Superseded(by)) => {
                    let _ = tx.send(Event::RecordTaken { by });
                    return;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "cannot record the node in etcd; retrying");
                    let _ = tx.send(Event::RecordFailed { reason: e.public() });
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
        }
    });
}

/// Retries `attempt` with backoff until it succeeds, or `None` once the
/// session (the receiving end of `tx`) is gone.
async fn until_done<T, F, Fut>(what: &str, tx: &Events, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut failures = 0;
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "{what}; retrying");
                tokio::time::sleep(backoff(failures)).await;
                if tx.is_closed() {
                    return None;
                }
            }
        }
    }
}

pub(super) fn log_reply(reply: &Reply, refusal_log: &LogBudget) {
    match reply {
        Reply::Claimed { claim, adopted } => tracing::info!(
            broadcast = %claim.broadcast,
            fencing_token = claim.fencing_token,
            lease_id = claim.lease_id,
            adopted,
            "claimed"
        ),
        Reply::Conflict { broadcast, owner } => tracing::info!(
            %broadcast,
            owner = %owner.node_id,
            fencing_token = owner.fencing_token,
            "conflict: standing by behind the owner"
        ),
        Reply::Released { broadcast } => tracing::info!(%broadcast, "released"),
        Reply::Refused {
            broadcast,
            track,
            reason,
        } => {
            if let Some(unlogged) = refusal_log.admit() {
                tracing::warn!(%broadcast, %track, %reason, unlogged, "refused over a limit")
            }
        }
        Reply::Lost { broadcast, reason } => tracing::warn!(%broadcast, %reason, "claim lost"),
        Reply::Retrying {
            broadcast,
            reason,
            retry_in,
        } => tracing::warn!(%broadcast, %reason, ?retry_in, "claim not possible now; retrying"),
        Reply::Draining { draining } => tracing::info!(draining, "node draining mark changed"),
        Reply::TakeoverRefused { broadcast, reason } => {
            tracing::info!(%broadcast, %reason, "takeover refused")
        }
        Reply::TakenOver { broadcast, by } => {
            tracing::info!(%broadcast, %by, "claim taken over by a newer publisher on another node; let go")
        }
    }
}
