//! Keeps many leases alive over a handful of etcd keep-alive streams.
//!
//! `etcd_client`'s `lease_keep_alive(id)` opens one HTTP/2 stream per lease;
//! with ten thousand claims that is ten thousand streams. Here the leases are
//! spread over a few shards, each with one stream on which it sends renewals
//! for any lease id (the `pub-response-field` feature makes the keeper's id
//! settable); the response stream reports each id.
//!
//! A stream is opened on an *anchor* lease the shard grants for itself, since
//! opening needs a live lease. Streams do not heal themselves: a broken one is
//! reopened with backoff.
//!
//! A lease is reported lost when etcd answers a renewal with TTL 0, or when a
//! whole TTL (less a small margin) has passed since the last renewal that
//! etcd confirmed, measured from when that renewal was *sent*: the lease
//! cannot have been renewed later than that, so the loss is reported before
//! etcd can expire it and give the broadcast to someone else. The shard never
//! waits on the network (streams open in their own task; a renewal the
//! stream cannot take now is tried again shortly), so these deadlines are
//! checked on time even while etcd hangs. A stream that takes renewals but
//! answers nothing for a while is stuck, and is reopened. The times
//! themselves (due, good until, lost, stuck) are kept in `deadlines.rs`;
//! `shard.rs` is one shard: its leases, its stream, its timers.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::metrics::Metrics;

mod deadlines;
mod shard;

use shard::Shard;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// etcd answered a renewal with TTL 0: the lease is gone.
    Expired,
    /// No renewal was confirmed for a whole TTL.
    Unrenewed,
}

impl LossKind {
    pub fn label(self) -> &'static str {
        match self {
            LossKind::Expired => "expired",
            LossKind::Unrenewed => "unrenewed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LeaseLoss {
    pub lease_id: i64,
    pub kind: LossKind,
    pub reason: String,
}

enum Cmd {
    Keep {
        lease_id: i64,
        ttl: Duration,
        renew: Duration,
        notify: mpsc::UnboundedSender<LeaseLoss>,
        valid_from: Instant,
    },
    Forget {
        lease_id: i64,
        /// Only the registration that reports to this channel is dropped.
        owner: mpsc::UnboundedSender<LeaseLoss>,
        /// Told the dropped lease's `valid_from`.
        reply: Option<oneshot::Sender<Instant>>,
    },
}

/// Handle to the keep-alive shards. Dropping it stops renewing every lease.
#[derive(Clone)]
pub struct KeepAlive {
    shards: Arc<Vec<mpsc::UnboundedSender<Cmd>>>,
    /// How many shards have renewals due that etcd cannot take yet.
    behind: watch::Receiver<usize>,
}

impl KeepAlive {
    pub fn start(client: Client, streams: usize, metrics: Arc<Metrics>) -> Self {
        let (behind_tx, behind) = watch::channel(0);
        let shards = (0..streams.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                let shard = Shard::new(client.clone(), metrics.clone(), behind_tx.clone());
                tokio::spawn(shard.run(rx));
                tx
            })
            .collect();
        Self {
            shards: Arc::new(shards),
            behind,
        }
    }

    /// Renewals are due that etcd cannot take yet (or a stream is down):
    /// new leases should wait, since granting them is what keeps etcd busy.
    pub fn behind(&self) -> bool {
        *self.behind.borrow() > 0
    }

    /// Waits until no renewal is left waiting, or `limit` has passed.
    pub async fn caught_up(&self, limit: Duration) {
        let mut behind = self.behind.clone();
        let _ = tokio::time::timeout(limit, behind.wait_for(|n| *n == 0)).await;
    }

    fn shard(&self, lease_id: i64) -> &mpsc::UnboundedSender<Cmd> {
        &self.shards[(lease_id.unsigned_abs() % self.shards.len() as u64) as usize]
    }

    /// Renew `lease_id` every `renew` until forgotten; a loss is sent to
    /// `notify` once, after which the lease is forgotten. `valid_from` is
    /// when the lease was granted (or last known renewed): its TTL counts
    /// from there.
    pub fn keep(
        &self,
        lease_id: i64,
        ttl: Duration,
        renew: Duration,
        notify: mpsc::UnboundedSender<LeaseLoss>,
        valid_from: Instant,
    ) {
        let _ = self.shard(lease_id).send(Cmd::Keep {
            lease_id,
            ttl,
            renew,
            notify,
            valid_from,
        });
    }

    /// Stops renewing `lease_id` if it is still kept for `owner` (the
    /// channel its losses go to). A lease kept again by another session
    /// since (one that adopted the claim on it) stays kept.
    pub fn forget(&self, lease_id: i64, owner: &mpsc::UnboundedSender<LeaseLoss>) {
        let _ = self.shard(lease_id).send(Cmd::Forget {
            lease_id,
            owner: owner.clone(),
            reply: None,
        });
    }

    /// [`KeepAlive::forget`], answering until when the lease is known to
    /// be good (its `valid_from`; add the TTL); `None` when it was not kept
    /// for `owner`.
    pub async fn take_back(
        &self,
        lease_id: i64,
        owner: &mpsc::UnboundedSender<LeaseLoss>,
    ) -> Option<Instant> {
        let (tx, rx) = oneshot::channel();
        let _ = self.shard(lease_id).send(Cmd::Forget {
            lease_id,
            owner: owner.clone(),
            reply: Some(tx),
        });
        rx.await.ok()
    }
}
