//! Calls to etcd: which connection a call goes on, the time limit and the
//! metrics every call gets, a retry when the call never reached a member,
//! and the few calls made directly (a ping that needs a quorum, lease grant
//! and revoke).

use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{Client, Txn};

use super::{ttl_seconds, Purpose, Store};
use crate::error::{Error, Result};

/// The call never reached a member: the connection itself failed.
fn unreachable_member(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable
                && (s.message().contains("connect") || s.message().contains("transport"))
        }
        _ => false,
    }
}

/// Longest a grant waits for the renewals that are due to go out first.
const RENEWALS_FIRST: Duration = Duration::from_secs(1);

impl Store {
    pub(super) fn client_for(&self, purpose: Purpose) -> Client {
        match purpose {
            Purpose::Claims => &self.inner.client,
            Purpose::View => &self.inner.view,
            Purpose::Reads => &self.inner.reads,
        }
        .clone()
    }

    /// Runs one etcd call under the time-out, timing it for the metrics.
    /// `f` makes the call on a client; a call that could not reach a member
    /// (a dead endpoint of a cluster: the connection was refused, nothing
    /// was sent) is made again, up to six times, so the balancer moves on
    /// to a live member. Every write here is a checked transaction, a grant
    /// or a revoke, so a repeat is harmless even in doubt.
    pub(super) async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.call_on(Purpose::Claims, op, f).await
    }

    /// [`Store::call`] on the connection for `purpose`.
    pub(super) async fn call_on<T, F, Fut>(
        &self,
        purpose: Purpose,
        op: &'static str,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let result =
                tokio::time::timeout(self.inner.op_timeout, f(self.client_for(purpose))).await;
            self.inner
                .metrics
                .etcd_rtt
                .with_label_values(&[op])
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(Err(e)) if attempt < 6 && unreachable_member(&e) => {
                    tokio::time::sleep(Duration::from_millis(25 * attempt)).await;
                }
                Ok(r) => return r.map_err(Error::from),
                Err(_) => {
                    return Err(Error::EtcdTimeout {
                        op,
                        timeout: self.inner.op_timeout,
                    })
                }
            }
        }
    }

    /// Runs one transaction (see [`Store::call`]).
    pub(super) async fn txn(&self, op: &'static str, txn: Txn) -> Result<etcd_client::TxnResponse> {
        self.call(op, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// A cheap round trip that succeeds only when etcd can take a claim: a
    /// linearizable read (of one key, counted, not fetched) needs the
    /// cluster's leader to confirm it still leads, so a member that
    /// answers without a quorum fails it. (Status, which any member
    /// answers alone, made a replica look ready through a quorum loss.)
    pub async fn ping(&self) -> Result<i64> {
        let key = self.inner.layout.prefix().to_string();
        let resp = self
            .call("ping", move |mut c| {
                let key = key.clone();
                async move {
                    c.get(key, Some(etcd_client::GetOptions::new().with_count_only()))
                        .await
                }
            })
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    pub async fn grant(&self, ttl: Duration) -> Result<i64> {
        let _slot = self.inner.granting.acquire().await;
        // Renewals first: while etcd cannot take the renewals that are due,
        // a new lease waits (a while at most), so that a burst of new claims
        // does not starve the claims already held.
        if self.inner.keepalive.behind() {
            self.inner.metrics.grants_held.inc();
            self.inner.keepalive.caught_up(RENEWALS_FIRST).await;
        }
        let resp = self
            .call("lease_grant", move |mut c| async move {
                c.lease_grant(ttl_seconds(ttl), None).await
            })
            .await?;
        Ok(resp.id())
    }

    /// Revokes a lease, deleting every key attached to it. A lease that is
    /// already gone counts as revoked.
    pub async fn revoke(&self, lease_id: i64) -> Result<()> {
        match self
            .call("lease_revoke", move |mut c| async move {
                c.lease_revoke(lease_id).await
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::Etcd(etcd_client::Error::GRpcStatus(s)))
                if s.code() == tonic::Code::NotFound || s.message().contains("not found") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
