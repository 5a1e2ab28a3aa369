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

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use claims_proto::listen::{self, Gate, Over, Pass};
use claims_proto::v1 as pb;
use futures::{Stream, StreamExt};
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::Error;
use crate::metrics::Metrics;

use crate::store::{Purpose, Store};
use crate::view::{ClaimBatch, ClaimChange, ClaimFeed, Feed, View};

/// Events of etcd history a replaying watcher may have unread before it is
/// told to resume later (a few hundred KB; counted in events, since one
/// etcd response catching up on history can hold thousands).
const REPLAY_BUFFER: usize = 1024;
/// Watchers replaying etcd history at once: each holds an etcd watcher, and
/// catching up on a long history etcd answers in responses of megabytes,
/// so this bounds what replays cost in memory and etcd's time together.
pub const MAX_REPLAYS: usize = 32;

/// Caps on open watches, total and per peer address.
#[derive(Debug, Clone, Copy)]
pub struct WatchLimits {
    pub total: usize,
    pub per_peer: usize,
}

/// Counts open watches (the listener's [`Gate`] rule: total and per peer
/// address) and those replaying etcd; a [`Slot`] is one of them.
pub struct Watches {
    open: Arc<Gate>,
    replays: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// One open watch; freed when dropped.
pub struct Slot {
    _pass: Pass,
    _replay: Option<OwnedSemaphorePermit>,
    metrics: Arc<Metrics>,
}

/// The address a watch without one (not over TCP) counts under.
const NO_PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

impl Watches {
    pub fn new(limits: WatchLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            open: Gate::new(
                "watches",
                listen::Limits {
                    total: limits.total,
                    per_peer: limits.per_peer,
                    first_bytes: Duration::ZERO,
                },
            ),
            replays: Arc::new(Semaphore::new(MAX_REPLAYS)),
            metrics,
        })
    }

    /// A slot for a watch from `peer`, or the limit it would break.
    pub fn admit(&self, peer: Option<IpAddr>, replay: bool) -> Result<Slot, Error> {
        let limits = self.open.limits();
        let pass = self.open.admit(peer.unwrap_or(NO_PEER)).map_err(|over| {
            Error::ResourceExhausted(match over {
                Over::Total => format!(
                    "limit max-watches ({}) reached on this replica; watch another replica or retry later",
                    limits.total
                ),
                Over::PerPeer => format!(
                    "limit max-watches-per-peer ({}) reached for your address; close watches you no longer read",
                    limits.per_peer
                ),
            })
        })?;
        let replay = match replay {
            false => None,
            true => Some(self.replays.clone().try_acquire_owned().map_err(|_| {
                Error::ResourceExhausted(format!(
                    "{MAX_REPLAYS} watches are replaying etcd history on this replica; retry, or watch from a recent revision"
                ))
            })?),
        };
        self.metrics.watches_open.inc();
        Ok(Slot {
            _pass: pass,
            _replay: replay,
            metrics: self.metrics.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.watches_open.dec();
    }
}

fn shutting_down() -> Status {
    Error::Unavailable(
        "claim-service replica is shutting down; watch again from the last revision + 1".into(),
    )
    .into()
}

/// Where a watcher's changes come from.
enum Source {
    /// The view's feed: every batch after the watcher joined.
    View(broadcast::Receiver<Feed>),
    /// etcd's history, relayed as this watcher's events; `overflowed`
    /// holds the revision to resume from once the relay gave up on it.
    Replay {
        events: mpsc::Receiver<Result<pb::ClaimEvent, Error>>,
        overflowed: Arc<AtomicI64>,
    },
}

struct Watcher {
    prefix: String,
    /// The first revision not yet taken (sent, or queued in `pending`).
    next: i64,
    /// Batches taken and not yet sent in full, shared with the view (a
    /// watcher holds pointers, not copies), each with the first revision
    /// of it to send; `at` is how far into the first one sending is.
    pending: VecDeque<(ClaimBatch, i64)>,
    at: usize,
    source: Source,
    shutdown: CancellationToken,
    slot: Slot,
    ended: bool,
}

impl Watcher {
    /// Queues the batch's changes this watcher has not taken yet.
    fn take(&mut self, batch: &ClaimBatch) {
        if let Some((_, last)) = batch.last() {
            if *last >= self.next {
                self.pending.push_back((batch.clone(), self.next));
                self.next = last + 1;
            }
        }
    }

    /// The next queued change under the prefix, as an event.
    fn pop(&mut self) -> Option<pb::ClaimEvent> {
        while let Some((batch, from)) = self.pending.front() {
            while let Some((change, revision)) = batch.get(self.at) {
                self.at += 1;
                if *revision >= *from && change.broadcast().starts_with(&self.prefix) {
                    return Some(crate::wire::claim_event(change, *revision));
                }
            }
            self.pending.pop_front();
            self.at = 0;
        }
        None
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
            if let Some(event) = self.pop() {
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
                                self.slot.metrics.watches_behind.inc();
                                ended(self.behind())
                            }
                            Err(broadcast::error::RecvError::Closed) => ended(shutting_down()),
                        },
                        _ = shutdown.cancelled() => ended(shutting_down()),
                    }
                }
                Source::Replay { events, overflowed } => {
                    let overflowed = overflowed.clone();
                    tokio::select! {
                        got = events.recv() => match got {
                            Some(Ok(event)) => return Some(Ok(event)),
                            Some(Err(e)) => ended(e.into()),
                            None => {
                                let resume = overflowed.load(Ordering::Acquire);
                                self.next = self.next.max(resume);
                                ended(self.behind())
                            }
                        },
                        _ = shutdown.cancelled() => ended(shutting_down()),
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
        at: 0,
        source,
        shutdown: ctx.shutdown,
        slot,
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

/// A watch of the attached nodes, for `peer`: every node now, then each
/// change (a node gone: `gone`); it counts against the same limits as a
/// watch of claims.
pub fn watch_nodes(
    ctx: WatchContext<'_>,
    peer: Option<IpAddr>,
) -> Result<impl Stream<Item = Result<pb::NodeEvent, Status>> + Send + 'static, Error> {
    let slot = ctx.watches.admit(peer, false)?;
    // Subscribed first, so that no change after the list is missed (one may
    // come twice: applying it again changes nothing).
    let changes = ctx.view.subscribe();
    let (nodes, _) = ctx.view.nodes()?;
    let first = nodes.into_iter().map(|n| {
        Ok(pb::NodeEvent {
            node: Some(n.into()),
            gone: false,
        })
    });
    let shutdown = ctx.shutdown;
    let changes = futures::stream::unfold((changes, false), move |(mut changes, ended)| {
        let shutdown = shutdown.clone();
        async move {
            if ended {
                return None;
            }
            loop {
                let change = tokio::select! {
                    c = changes.recv() => c,
                    _ = shutdown.cancelled() => return None,
                };
                let event = match change {
                    Ok(event) => match crate::wire::node_event(event) {
                        Some(event) => event,
                        None => continue,
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let behind = Status::from(Error::ResourceExhausted(
                            "this watch of nodes fell behind; watch again".into(),
                        ));
                        return Some((Err(behind), (changes, true)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                return Some((Ok(event), (changes, false)));
            }
        }
    });
    // The slot is freed when the stream is dropped.
    Ok(futures::stream::iter(first)
        .chain(changes)
        .map(move |event| {
            let _open = &slot;
            event
        }))
}

/// Relays etcd's history under `prefix` from `start_revision` to a bounded
/// queue of events, a whole revision at a time; when the watcher leaves too
/// many unread for the next revision to fit, the relay stops (dropping its
/// etcd watch) and records that revision to resume from.
fn replay(store: &Store, prefix: &str, start_revision: i64, metrics: Arc<Metrics>) -> Source {
    let mut from_etcd = store.watch_claims(Purpose::Reads, prefix, start_revision);
    let (tx, events) = mpsc::channel(REPLAY_BUFFER);
    let overflowed = Arc::new(AtomicI64::new(0));
    let resume = overflowed.clone();
    tokio::spawn(async move {
        loop {
            let got = tokio::select! {
                got = from_etcd.recv() => got,
                _ = tx.closed() => return,
            };
            let batch = match got {
                Some(Ok(batch)) => batch,
                Some(Err(e)) => {
                    let _ = tx.try_send(Err(e));
                    return;
                }
                None => return,
            };
            for revision in batch.changes.chunk_by(|a, b| a.1 == b.1) {
                let at = revision[0].1;
                let events: Vec<_> = revision
                    .iter()
                    .filter_map(|(change, r)| {
                        let change = ClaimChange::of(change.clone())?;
                        Some(crate::wire::claim_event(&change, *r))
                    })
                    .collect();
                // The relay is the only sender: room it sees stays.
                if tx.capacity() < events.len() {
                    metrics.watches_behind.inc();
                    resume.store(at, Ordering::Release);
                    return;
                }
                for event in events {
                    if tx.try_send(Ok(event)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    Source::Replay { events, overflowed }
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
        assert_eq!(watches.open.open(), 2);
        assert!(watches.admit(a, false).is_ok());
    }
}
