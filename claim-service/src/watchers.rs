//! `WatchClaims` streams: what each watcher is sent, and what it may hold.
//!
//! A watcher from now on, or from a revision the view's ring still keeps,
//! reads the view's one feed of claim changes (see [`View::follow_claims`]):
//! nothing per watcher in etcd, nothing per watcher that waits. One from an
//! older revision replays etcd's history through its own etcd watch, on the
//! store's reads connection, relayed by a task that never waits for the
//! watcher either. Either way a watcher that falls too far behind is ended
//! with `RESOURCE_EXHAUSTED` naming the revision to resume from, and one
//! that goes away is dropped at once with everything it held (its stream
//! is the only owner).
//!
//! Invariants: a watcher is sent every claim change under its prefix from
//! its start revision on, in revision order, each once; or an error that
//! says from which revision to watch again.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use claims_proto::v1 as pb;
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::Error;
use crate::metrics::Metrics;
use crate::store::watch::Change;
use crate::store::{Purpose, Store};
use crate::view::{ClaimBatch, ClaimFeed, Feed, View};

/// Batches of etcd history a replaying watcher may have unread before it is
/// told to resume later.
const REPLAY_BUFFER: usize = 256;
/// Watchers replaying etcd history at once (each holds an etcd watcher).
pub const MAX_REPLAYS: usize = 256;

/// Caps on open watches, total and per peer address.
#[derive(Debug, Clone, Copy)]
pub struct WatchLimits {
    pub total: usize,
    pub per_peer: usize,
}

/// Counts open watches; a [`Slot`] is one of them.
pub struct Watches {
    limits: WatchLimits,
    open: Mutex<Counts>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    replays: usize,
    by_peer: HashMap<Option<IpAddr>, usize>,
}

/// One open watch; freed when dropped.
pub struct Slot {
    watches: Arc<Watches>,
    peer: Option<IpAddr>,
    replay: bool,
}

impl Watches {
    pub fn new(limits: WatchLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: Mutex::default(),
            metrics,
        })
    }

    /// A slot for a watch from `peer`, or the limit it would break.
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>, replay: bool) -> Result<Slot, Error> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let of_peer = open.by_peer.get(&peer).copied().unwrap_or(0);
        if open.total >= self.limits.total {
            return Err(Error::ResourceExhausted(format!(
                "limit max-watches ({}) reached on this replica; watch another replica or retry later",
                self.limits.total
            )));
        }
        if of_peer >= self.limits.per_peer {
            return Err(Error::ResourceExhausted(format!(
                "limit max-watches-per-peer ({}) reached for your address; close watches you no longer read",
                self.limits.per_peer
            )));
        }
        if replay && open.replays >= MAX_REPLAYS {
            return Err(Error::ResourceExhausted(format!(
                "{MAX_REPLAYS} watches are replaying etcd history on this replica; retry, or watch from a recent revision"
            )));
        }
        open.total += 1;
        open.replays += usize::from(replay);
        self.metrics.watches_open.inc();
        *open.by_peer.entry(peer).or_default() += 1;
        Ok(Slot {
            watches: self.clone(),
            peer,
            replay,
        })
    }

    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.watches.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total -= 1;
        open.replays -= usize::from(self.replay);
        self.watches.metrics.watches_open.dec();
        if let Some(n) = open.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.by_peer.remove(&self.peer);
            }
        }
    }
}

/// The `ClaimEvent` a change is to watchers, if it is one of theirs.
pub fn claim_event(change: &Change, revision: i64) -> Option<pb::ClaimEvent> {
    use pb::claim_event::Kind;
    let (kind, claim) = match change {
        Change::Claim { claim, created } => (
            if *created {
                Kind::Claimed
            } else {
                Kind::Adopted
            },
            claim.clone().into(),
        ),
        Change::Released { broadcast, claim } => (
            Kind::Released,
            claim.clone().map(Into::into).unwrap_or(pb::Claim {
                broadcast: broadcast.clone(),
                ..Default::default()
            }),
        ),
        Change::Node { .. } | Change::NodeGone { .. } | Change::Forced { .. } => return None,
    };
    Some(pb::ClaimEvent {
        kind: kind as i32,
        claim: Some(claim),
        revision,
    })
}

fn broadcast_of(change: &Change) -> Option<&str> {
    match change {
        Change::Claim { claim, .. } => Some(&claim.broadcast),
        Change::Released { broadcast, .. } => Some(broadcast),
        _ => None,
    }
}

/// Where a watcher's changes come from.
enum Source {
    /// The view's feed: every batch after the watcher joined.
    View(broadcast::Receiver<Feed>),
    /// etcd's history, relayed; `overflowed` holds the revision to resume
    /// from once the relay gave up on this watcher.
    Replay {
        batches: mpsc::Receiver<Result<ClaimBatch, Error>>,
        overflowed: Arc<AtomicI64>,
    },
}

struct Watcher {
    prefix: String,
    /// The first revision not yet sent in full.
    next: i64,
    pending: VecDeque<pb::ClaimEvent>,
    source: Source,
    shutdown: CancellationToken,
    slot: Slot,
    ended: bool,
}

impl Watcher {
    /// Queues the batch's changes this watcher has not been sent.
    fn take(&mut self, batch: &[(Change, i64)]) {
        for (change, revision) in batch {
            if *revision < self.next {
                continue;
            }
            if broadcast_of(change).is_some_and(|b| b.starts_with(&self.prefix)) {
                self.pending.extend(claim_event(change, *revision));
            }
        }
        if let Some((_, last)) = batch.last() {
            self.next = self.next.max(last + 1);
        }
    }

    fn behind(&self) -> Status {
        Error::ResourceExhausted(format!(
            "this watch fell too far behind the claim changes and was ended; watch again with start_revision {}",
            self.next
        ))
        .into()
    }

    async fn next_event(&mut self) -> Option<Result<pb::ClaimEvent, Status>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.ended {
                return None;
            }
            let shutdown = self.shutdown.clone();
            let ended = |status: Status| Some(Err(status));
            let outcome = match &mut self.source {
                Source::View(live) => {
                    tokio::select! {
                        got = live.recv() => match got {
                            Ok(Feed::Changes(batch)) => {
                                self.take(&batch);
                                continue;
                            }
                            Ok(Feed::HistoryLost { revision }) => ended(Error::Compacted {
                                requested: self.next,
                                compacted: revision,
                            }.into()),
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                self.slot.watches.metrics.watches_behind.inc();
                                ended(self.behind())
                            }
                            Err(broadcast::error::RecvError::Closed) => ended(Status::unavailable(
                                "claim-service replica is shutting down; watch again from the last revision + 1",
                            )),
                        },
                        _ = shutdown.cancelled() => ended(Status::unavailable(
                            "claim-service replica is shutting down; watch again from the last revision + 1",
                        )),
                    }
                }
                Source::Replay {
                    batches,
                    overflowed,
                } => {
                    let overflowed = overflowed.clone();
                    tokio::select! {
                        got = batches.recv() => match got {
                            Some(Ok(batch)) => {
                                self.take(&batch);
                                continue;
                            }
                            Some(Err(e)) => ended(e.into()),
                            None => {
                                let resume = overflowed.load(Ordering::Acquire);
                                self.next = self.next.max(resume);
                                ended(self.behind())
                            }
                        },
                        _ = shutdown.cancelled() => ended(Status::unavailable(
                            "claim-service replica is shutting down; watch again from the last revision + 1",
                        )),
                    }
                }
            };
            self.ended = true;
            return outcome;
        }
    }
}

/// Where a watch is served from, and what it may use.
pub struct WatchContext<'a> {
    pub view: &'a View,
    pub store: &'a Store,
    pub watches: &'a Arc<Watches>,
    pub shutdown: CancellationToken,
}

/// A watch of the claims whose names start with `prefix`, from
/// `start_revision` (0 = from now on), for `peer`; refused over a limit.
pub fn watch(
    ctx: WatchContext<'_>,
    peer: Option<IpAddr>,
    prefix: String,
    start_revision: i64,
) -> Result<impl Stream<Item = Result<pb::ClaimEvent, Status>> + Send + 'static, Error> {
    let feed = ctx.view.follow_claims(start_revision)?;
    let slot = ctx.watches.admit(peer, feed.is_none())?;
    let (source, next, backlog) = match feed {
        Some(ClaimFeed {
            backlog,
            live,
            revision,
        }) => {
            let next = if start_revision == 0 {
                revision + 1
            } else {
                start_revision
            };
            (Source::View(live), next, backlog)
        }
        None => (
            replay(
                ctx.store,
                &prefix,
                start_revision,
                ctx.watches.metrics.clone(),
            ),
            start_revision,
            Vec::new(),
        ),
    };
    let mut watcher = Watcher {
        prefix,
        next,
        pending: VecDeque::new(),
        source,
        shutdown: ctx.shutdown,
        slot: slot,
        ended: false,
    };
    for batch in backlog {
        watcher.take(&batch);
    }
    Ok(futures::stream::unfold(watcher, |mut w| async move {
        let item = w.next_event().await?;
        Some((item, w))
    }))
}

/// Relays etcd's history under `prefix` from `start_revision` to a bounded
/// queue; when the watcher leaves it unread past [`REPLAY_BUFFER`], the
/// relay stops (dropping its etcd watch) and records where to resume.
fn replay(store: &Store, prefix: &str, start_revision: i64, metrics: Arc<Metrics>) -> Source {
    let mut from_etcd = store.watch(
        Purpose::Reads,
        store.layout().broadcasts(prefix),
        start_revision,
    );
    let (tx, batches) = mpsc::channel(REPLAY_BUFFER);
    let overflowed = Arc::new(AtomicI64::new(0));
    let resume = overflowed.clone();
    tokio::spawn(async move {
        let mut next = start_revision;
        loop {
            let got = tokio::select! {
                got = from_etcd.recv() => got,
                _ = tx.closed() => return,
            };
            let Some(got) = got else { return };
            let batch = got.map(|b| {
                let revision = b.revision;
                let changes: ClaimBatch = b
                    .changes
                    .into_iter()
                    .filter(|(c, _)| broadcast_of(c).is_some())
                    .collect();
                (changes, revision)
            });
            let item = match batch {
                Ok((changes, revision)) => {
                    let item = Ok(changes);
                    match tx.try_send(item) {
                        Ok(()) => {
                            next = revision + 1;
                            continue;
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            metrics.watches_behind.inc();
                            resume.store(next, Ordering::Release);
                            return;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                Err(e) => Err(e),
            };
            let _ = tx.try_send(item);
            return;
        }
    });
    Source::Replay {
        batches,
        overflowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_total_and_per_peer_and_free_on_drop() {
        let watches = Watches::new(
            WatchLimits {
                total: 3,
                per_peer: 2,
            },
            Arc::new(Metrics::new()),
        );
        let a: Option<IpAddr> = Some("127.0.0.1".parse().unwrap());
        let b: Option<IpAddr> = Some("127.0.0.2".parse().unwrap());
        let first = watches.admit(a, false).unwrap();
        let _second = watches.admit(a, false).unwrap();
        let refused = watches.admit(a, false).err().unwrap().to_string();
        assert!(refused.contains("max-watches-per-peer"), "{refused}");
        let _third = watches.admit(b, false).unwrap();
        let refused = watches.admit(b, false).err().unwrap().to_string();
        assert!(refused.contains("max-watches (3)"), "{refused}");
        drop(first);
        assert_eq!(watches.open(), 2);
        assert!(watches.admit(a, false).is_ok());
    }
}
