//! Giving claims up: a release deletes a key only while it is still the
//! releasing session's own write, then pools or revokes the lease (see the
//! store's module doc); an operator's forced release deletes whatever key
//! holds the broadcast and says so to its holder.

use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use futures::future::join_all;
use tracing::Instrument;

use crate::claims::Claim;
use crate::error::Result;

use super::*;

impl Store {
    /// Revokes, retrying while etcd is unreachable, until it succeeds or
    /// `ttl` has passed (by then the lease has expired on its own, since
    /// nobody renews it).
    pub async fn revoke_until_gone(&self, lease_id: i64, ttl: Duration) {
        self.within_ttl("revoke", lease_id, ttl, || self.revoke(lease_id))
            .await;
    }

    /// Runs `op` (the `what` of a lease nobody renews any more) until etcd
    /// answers, retrying with backoff for the lease's `ttl` and a second at
    /// most: by then the lease has expired on its own. `None` when etcd
    /// never answered.
    pub(super) async fn within_ttl<T, Fut>(
        &self,
        what: &str,
        lease_id: i64,
        ttl: Duration,
        mut op: impl FnMut() -> Fut,
    ) -> Option<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + ttl + Duration::from_secs(1);
        let mut failures = 0;
        loop {
            match op().await {
                Ok(answer) => return Some(answer),
                Err(e) if Instant::now() < deadline => {
                    failures += 1;
                    tracing::warn!(lease_id, error = %e, "{what} failed; retrying");
                    tokio::time::sleep(crate::claims::backoff(failures)).await;
                }
                Err(e) => {
                    tracing::warn!(lease_id, error = %e, "{what} kept failing; the lease expires on its own since it is no longer renewed");
                    return None;
                }
            }
        }
    }

    /// Gives up claims: deletes each key if it is still the write at its
    /// `revision`, retrying while etcd is unreachable (for the TTL at most:
    /// by then the lease has expired on its own, since this session no
    /// longer renews it). A lease whose key was deleted here is pooled for
    /// the next claim, or revoked. A key that changed meanwhile (adopted by
    /// a newer session of the node, force-released, expired) is left alone,
    /// and so is its lease: another session may hold a claim on it.
    ///
    /// Several at once (a goodbye, a grace running out) are one transaction
    /// deleting every key; if any changed, each is released on its own.
    /// Each `done` runs once its own release is over.
    pub(super) async fn release_batch(&self, releases: Vec<(Release, Box<dyn FnOnce() + Send>)>) {
        if releases.is_empty() {
            return;
        }
        let valid_from = join_all(releases.iter().map(|(r, _)| async {
            match &r.owner {
                Some(owner) => self.inner.keepalive.take_back(r.lease_id, owner).await,
                None => None,
            }
        }))
        .await;
        let keys: Vec<String> = releases
            .iter()
            .map(|(r, _)| self.inner.layout.broadcast(&r.broadcast))
            .collect();
        // A transaction etcd refuses (one key twice, from two sessions) or
        // cannot take falls back to one per key too.
        let deleted = if releases.len() > 1 {
            let txn = Txn::new()
                .when(
                    keys.iter()
                        .zip(&releases)
                        .map(|(k, (r, _))| {
                            Compare::mod_revision(k.clone(), CompareOp::Equal, r.revision)
                        })
                        .collect::<Vec<_>>(),
                )
                .and_then(
                    keys.iter()
                        .map(|k| TxnOp::delete(k.clone(), None))
                        .collect::<Vec<_>>(),
                );
            matches!(self.txn("release_txn", txn).await, Ok(resp) if resp.succeeded())
        } else {
            false
        };
        join_all(releases.into_iter().zip(keys).zip(valid_from).map(
            |(((r, done), key), valid_from)| async move {
                if deleted || self.delete_if_unchanged(&r, key).await {
                    self.let_go(&r, valid_from).await;
                }
                done()
            },
        ))
        .await;
    }

    /// Deletes a released claim's key if it is still the write at
    /// `release.revision`; whether it did.
    pub(super) async fn delete_if_unchanged(&self, release: &Release, key: String) -> bool {
        let delete = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                release.revision,
            )])
            .and_then([TxnOp::delete(key, None)]);
        let answer = self
            .within_ttl("release", release.lease_id, release.ttl, || {
                self.txn("release_txn", delete.clone())
            })
            .instrument(tracing::info_span!("release", broadcast = %release.broadcast))
            .await;
        match answer {
            Some(resp) if resp.succeeded() => true,
            Some(_) => {
                tracing::info!(
                    broadcast = %release.broadcast,
                    lease_id = release.lease_id,
                    "claim changed since this session wrote it (adopted by a newer session of the node, or gone); left as it is"
                );
                false
            }
            None => false,
        }
    }

    /// The lease of a claim whose key was just deleted here: back to the
    /// pool while fresh (`valid_from` is when it was last known renewed),
    /// else revoked.
    pub(super) async fn let_go(&self, release: &Release, valid_from: Option<tokio::time::Instant>) {
        let pooled = valid_from.is_some_and(|at| {
            self.inner
                .pool
                .put(ttl_seconds(release.ttl), release.lease_id, at)
        });
        if !pooled {
            self.revoke_until_gone(release.lease_id, release.ttl).await;
        }
    }

    /// Revokes a broadcast's claim for an operator, first recording why so
    /// that its owner can be told. `None` when nobody owns it.
    pub async fn force_release(&self, broadcast: &str, reason: &str) -> Result<Option<Claim>> {
        let Some((claim, _)) = self.get_claim(Purpose::Claims, broadcast).await? else {
            return Ok(None);
        };
        let record = ForcedRecord {
            node_id: claim.node_id.to_string(),
            fencing_token: claim.fencing_token,
            reason: reason.to_string(),
            at_unix_ms: unix_ms(),
            taken_by: String::new(),
        };
        // The record outlives the revoke long enough for every replica's
        // view to see it, then goes by itself.
        let lease_id = self.grant(Duration::from_secs(60)).await?;
        let key = self.inner.layout.forced(broadcast);
        self.call("put", |mut c| {
            let (key, value) = (key.clone(), record.to_json());
            async move {
                c.put(key, value, Some(PutOptions::new().with_lease(lease_id)))
                    .await
            }
        })
        .await?;
        self.revoke(claim.lease_id).await?;
        Ok(Some(claim))
    }

    /// Asks the owner of `broadcast` to let its claim go to `taker`'s node:
    /// writes the request (a forced record naming the taker) if the claim
    /// is still the one with `fencing_token` and the taker's node record is
    /// still on `guard_lease`, in one transaction. The owner's replica sees
    /// it, tells its node and releases (a checked delete); the taker,
    /// standing by, then claims anew with a larger token. False when the
    /// claim or the taker's record changed; nothing is written then.
    pub async fn request_takeover(
        &self,
        broadcast: &str,
        fencing_token: i64,
        taker: &Holder,
        guard_lease: i64,
    ) -> Result<bool> {
        let record = ForcedRecord {
            node_id: String::new(),
            fencing_token,
            reason: format!("taken over by node {}", taker.node_id),
            at_unix_ms: unix_ms(),
            taken_by: taker.node_id.to_string(),
        };
        let lease_id = self.grant(Duration::from_secs(60)).await?;
        let layout = &self.inner.layout;
        let txn = Txn::new()
            .when([
                Compare::create_revision(
                    layout.broadcast(broadcast),
                    CompareOp::Equal,
                    fencing_token,
                ),
                Compare::lease(layout.node(&taker.node_id), CompareOp::Equal, guard_lease),
            ])
            .and_then([TxnOp::put(
                layout.forced(broadcast),
                record.to_json(),
                Some(PutOptions::new().with_lease(lease_id)),
            )]);
        match self.txn("takeover_txn", txn).await {
            Ok(resp) if resp.succeeded() => Ok(true),
            Ok(_) => {
                let _ = self.revoke(lease_id).await;
                Ok(false)
            }
            Err(e) => {
                let _ = self.revoke(lease_id).await;
                Err(e)
            }
        }
    }
}
