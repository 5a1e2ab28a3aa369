//! Giving claims up: a release deletes a key only while it still has the
//! claim's fencing token and the node's record is still on the releasing
//! session's lease; a lease is revoked only when no claim is on it (see the
//! store's module doc); an operator's forced release deletes whatever key
//! holds the broadcast and says so to its holder.

use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use futures::future::join_all;
use tracing::Instrument;

use crate::claims::Claim;
use crate::error::Result;

use super::{unix_ms, ForcedRecord, Holder, Key, Purpose, Release, Store};

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
                    tokio::time::sleep(crate::retry::backoff(failures)).await;
                }
                Err(e) => {
                    tracing::warn!(lease_id, error = %e, "{what} kept failing; the lease expires on its own since it is no longer renewed");
                    return None;
                }
            }
        }
    }

    /// Gives up claims: deletes each key if it still has the claim's
    /// fencing token and the node's record is still on the session's guard
    /// lease, retrying while etcd is unreachable (for the TTL at most: by
    /// then the lease has expired on its own). A key that changed meanwhile
    /// (force-released, expired) or whose node a newer session now holds
    /// (which adopted it) is left alone. The lease stays: other claims of
    /// the node are on it (see [`Store::let_go_lease`]).
    ///
    /// Several at once (a goodbye, a grace running out) are one transaction
    /// per node deleting every key; if anything changed, each is released
    /// on its own. Each `done` runs once its own release is over, told
    /// whether its key was deleted here.
    pub(super) async fn release_batch(&self, releases: Vec<(Release, super::worker::ReleaseDone)>) {
        if releases.is_empty() {
            return;
        }
        let keys: Vec<String> = releases
            .iter()
            .map(|(r, _)| self.inner.layout.broadcast(&r.broadcast))
            .collect();
        // One guard for all, so only releases of one node under one lease
        // go together; a transaction etcd refuses (one key twice) or cannot
        // take falls back to one per key too.
        let (first, _) = &releases[0];
        let together = releases.len() > 1
            && releases
                .iter()
                .all(|(r, _)| r.node_id == first.node_id && r.guard_lease == first.guard_lease);
        let deleted = together && {
            let txn = Txn::new()
                .when(
                    std::iter::once(self.guard(first))
                        .chain(keys.iter().zip(&releases).map(|(k, (r, _))| {
                            Compare::create_revision(k.clone(), CompareOp::Equal, r.fencing_token)
                        }))
                        .collect::<Vec<_>>(),
                )
                .and_then(
                    keys.iter()
                        .map(|k| TxnOp::delete(k.clone(), None))
                        .collect::<Vec<_>>(),
                );
            matches!(self.txn("release_txn", txn).await, Ok(resp) if resp.succeeded())
        };
        join_all(
            releases
                .into_iter()
                .zip(keys)
                .map(|((r, done), key)| async move {
                    done(deleted || self.delete_if_held(&r, key).await)
                }),
        )
        .await;
    }

    /// The release's fence: the node's record still on its guard lease.
    fn guard(&self, release: &Release) -> Compare {
        Compare::lease(
            self.inner.layout.node(&release.node_id),
            CompareOp::Equal,
            release.guard_lease,
        )
    }

    /// Deletes a released claim's key if it still has the claim's fencing
    /// token and the release's guard holds; whether it did.
    pub(super) async fn delete_if_held(&self, release: &Release, key: String) -> bool {
        let delete = Txn::new()
            .when([
                self.guard(release),
                Compare::create_revision(key.clone(), CompareOp::Equal, release.fencing_token),
            ])
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
                    fencing_token = release.fencing_token,
                    "claim not released here: a newer session of the node holds it, or it is gone"
                );
                false
            }
            None => false,
        }
    }

    /// Lets a lease go that this session keeps no claim on any more:
    /// revoked (retrying while etcd is away, for `ttl`) if etcd says no
    /// claim key is attached to it; else left to whoever holds those claims
    /// (a newer session of the node that adopted them), who revokes it when
    /// they are released, or to expire with nobody renewing it. Whether it
    /// was revoked.
    ///
    /// Safe against a race: only the session whose node record is on a
    /// lease puts claims on it, and that is this session, which is letting
    /// it go, or a session superseded (fenced) before it.
    pub async fn let_go_lease(&self, lease_id: i64, ttl: Duration) -> bool {
        let attached = self
            .within_ttl("lease look-up", lease_id, ttl, || async {
                match self.attached_keys(lease_id).await {
                    Err(e) if super::reads::too_many_keys(&e) => Ok(None),
                    other => other.map(Some),
                }
            })
            .await;
        let Some(Some(attached)) = attached else {
            // Unanswered, or more claims on it than one answer lists.
            return false;
        };
        let layout = &self.inner.layout;
        let claims = attached
            .keys()
            .iter()
            .filter(|k| matches!(layout.parse(k), Some(Key::Broadcast(_))))
            .count();
        if attached.ttl() < 0 {
            // Already gone.
            return true;
        }
        if claims > 0 {
            tracing::info!(
                lease_id,
                claims,
                "lease left alone: claims a newer session of the node adopted are on it"
            );
            return false;
        }
        self.revoke_until_gone(lease_id, ttl).await;
        true
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
        // The record outlives the claim long enough for every replica's
        // view to see it, then goes by itself. The claim's key goes alone
        // (its lease carries the node's other claims), if it is still the
        // claim read.
        let lease_id = self.grant(Duration::from_secs(60)).await?;
        let layout = &self.inner.layout;
        let key = layout.broadcast(broadcast);
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                claim.fencing_token,
            )])
            .and_then([
                TxnOp::put(
                    layout.forced(broadcast),
                    record.to_json(),
                    Some(PutOptions::new().with_lease(lease_id)),
                ),
                TxnOp::delete(key, None),
            ]);
        let resp = self.txn("force_release_txn", txn).await;
        if !matches!(&resp, Ok(r) if r.succeeded()) {
            let _ = self.revoke(lease_id).await;
        }
        match resp? {
            r if r.succeeded() => Ok(Some(claim)),
            // Released or claimed anew since read: try again from the top.
            _ => Box::pin(self.force_release(broadcast, reason)).await,
        }
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
