//! The store's workers: claims, releases and revokes wait in the job queue
//! (a line per session, see [`super::queue`]) and a fixed number of workers
//! take them, each up to [`BATCH`] at once, making each session's claims
//! together in one transaction and the releases and revokes side by side.

use std::time::{Duration, Instant};

use futures::future::join_all;

use super::claim_txn::{Pending, BATCH};
use super::queue;
use super::{Attempt, ClaimRequest, Release, Store};

/// Workers taking claims and releases from the queue. Each takes up to
/// [`BATCH`] jobs at once, so this many times that are in flight at most:
/// enough to keep etcd busy, few enough that a burst leaves little behind
/// in memory (more workers were no faster; figures in docs/PERFORMANCE.md).
pub(super) const WORKERS: usize = 16;
/// The queue's line for the store's own jobs (revoking leases let go).
const STORE_LINE: queue::Line = 0;

/// What runs once a release is over, told whether its key was deleted.
pub(super) type ReleaseDone = Box<dyn FnOnce(bool) + Send>;

pub(super) enum Job {
    Claim(Pending),
    Release {
        release: Release,
        done: ReleaseDone,
    },
    Revoke {
        lease_id: i64,
        ttl: Duration,
        done: Box<dyn FnOnce() + Send>,
    },
}

impl Store {
    /// A worker: takes what is queued (up to [`BATCH`] jobs at once), makes
    /// each session's claims together and the releases and revokes side by
    /// side.
    pub(super) async fn work(self) {
        loop {
            let (taken, _turn) = self.inner.jobs.take(BATCH).await;
            let store = &self;
            let mut claims: Vec<Vec<Pending>> = Vec::new();
            let mut revokes = Vec::new();
            let mut releases = Vec::new();
            for job in taken {
                match job {
                    Job::Claim(p) => {
                        // One batch per session; a broadcast twice (etcd
                        // refuses a transaction naming a key twice) goes
                        // to a batch of its own.
                        let fits = |c: &Vec<Pending>| {
                            c[0].req.guard_lease == p.req.guard_lease
                                && c.iter().all(|q| q.req.broadcast != p.req.broadcast)
                        };
                        match claims.iter_mut().find(|c| fits(c)) {
                            Some(same_session) => same_session.push(p),
                            None => claims.push(vec![p]),
                        }
                    }
                    Job::Revoke {
                        lease_id,
                        ttl,
                        done,
                    } => revokes.push(async move {
                        store.revoke_until_gone(lease_id, ttl).await;
                        done()
                    }),
                    Job::Release { release, done } => releases.push((release, done)),
                }
            }
            let claims = join_all(claims.into_iter().map(|batch| self.claim_batch(batch)));
            tokio::join!(claims, join_all(revokes), self.release_batch(releases));
        }
    }

    /// Queues a claim; `done` gets the outcome (never an error: a store that
    /// cannot be reached is `Unavailable`).
    pub fn submit_claim(&self, req: ClaimRequest, done: impl FnOnce(Attempt) + Send + 'static) {
        let line = queue::line_of(&req.holder.session_id);
        let job = Job::Claim(Pending {
            req,
            queued: Instant::now(),
            done: Box::new(done),
        });
        self.inner.jobs.push(line, job);
    }

    /// Queues a release (see [`Store::release_batch`]); `done` runs after,
    /// told whether the key was deleted here.
    pub fn submit_release(&self, release: Release, done: impl FnOnce(bool) + Send + 'static) {
        let line = queue::line_of(&release.session);
        let job = Job::Release {
            release,
            done: Box::new(done),
        };
        self.inner.jobs.push(line, job);
    }

    /// Queues a revoke that retries until the lease is gone (see
    /// [`Store::revoke_until_gone`]); `done` runs after.
    pub fn submit_revoke(
        &self,
        lease_id: i64,
        ttl: Duration,
        done: impl FnOnce() + Send + 'static,
    ) {
        let job = Job::Revoke {
            lease_id,
            ttl,
            done: Box::new(done),
        };
        // Leases the store itself let go of: a line of their own.
        self.inner.jobs.push(STORE_LINE, job);
    }
}
