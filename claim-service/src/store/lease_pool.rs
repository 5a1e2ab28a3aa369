//! Leases granted ahead of need, so a claim is one transaction instead of a
//! grant and a transaction.
//!
//! A pooled lease is handed out only while at least two thirds of its TTL
//! remain (etcd counts its TTL from the grant, and nobody renews it while it
//! waits); older ones are revoked. Each take asks for a refill, so an idle
//! replica holds no leases for long. A lease a claim did not use (a
//! conflict, an adoption that kept the claim's own lease) goes back if it is
//! still fresh, and so does the lease of a released claim once its key is
//! deleted: under steady churn a claim needs neither a grant nor a revoke.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Pooled leases per TTL.
pub const POOL_TARGET: usize = 32;

#[derive(Default)]
pub struct LeasePool {
    /// By TTL in seconds: `(lease_id, granted_at)`, oldest first.
    ready: Mutex<HashMap<i64, VecDeque<(i64, Instant)>>>,
}

/// What a take found.
pub struct Taken {
    pub lease: Option<(i64, Instant)>,
    /// Leases too old to hand out, for the caller to revoke.
    pub stale: Vec<i64>,
    /// How many leases the pool is short of its target.
    pub short: usize,
}

fn fresh(granted_at: Instant, ttl_s: i64, now: Instant) -> bool {
    now.duration_since(granted_at) < Duration::from_secs(ttl_s as u64) / 3
}

impl LeasePool {
    pub fn take(&self, ttl_s: i64) -> Taken {
        let now = Instant::now();
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        let queue = ready.entry(ttl_s).or_default();
        let mut stale = Vec::new();
        let mut lease = None;
        while let Some((id, at)) = queue.pop_front() {
            if fresh(at, ttl_s, now) {
                lease = Some((id, at));
                break;
            }
            stale.push(id);
        }
        Taken {
            lease,
            stale,
            short: POOL_TARGET.saturating_sub(queue.len()),
        }
    }

    /// How many leases of this TTL are pooled (fresh or not).
    pub fn ready(&self, ttl_s: i64) -> usize {
        let ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        ready.get(&ttl_s).map_or(0, VecDeque::len)
    }

    /// Adds a lease granted at `granted_at`; `false` (the caller revokes it)
    /// when it is too old or the pool is full.
    pub fn put(&self, ttl_s: i64, lease_id: i64, granted_at: Instant) -> bool {
        if !fresh(granted_at, ttl_s, Instant::now()) {
            return false;
        }
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        let queue = ready.entry(ttl_s).or_default();
        if queue.len() >= POOL_TARGET {
            return false;
        }
        queue.push_back((lease_id, granted_at));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn hands_out_fresh_leases_and_sheds_old_ones() {
        let pool = LeasePool::default();
        assert!(pool.take(9).lease.is_none());
        assert!(pool.put(9, 1, Instant::now()));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(pool.put(9, 2, Instant::now()));
        tokio::time::advance(Duration::from_secs(2)).await;
        // Lease 1 is 4 s into its 9 s: too old. Lease 2 is 2 s in: fine.
        let taken = pool.take(9);
        assert_eq!(taken.lease.map(|(id, _)| id), Some(2));
        assert_eq!(taken.stale, vec![1]);
        assert_eq!(taken.short, POOL_TARGET);
        // Another TTL has its own leases.
        assert!(pool.take(10).lease.is_none());
        assert!(!pool.put(9, 3, Instant::now() - Duration::from_secs(5)));
    }
}
