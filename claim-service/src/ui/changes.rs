//! The last few hundred ownership changes this replica's view saw, with
//! when it saw them, and their live feed to the page (server-sent events).
//!
//! One recorder follows the view (claims from its claim feed, nodes from
//! its events) and keeps the lines already written as JSON; every open page
//! gets the recent ones, then the new ones in batches. A page that cannot
//! keep up is told `resync` (it reads its lists again) instead of being
//! waited for.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures::Stream;
use serde::Serialize;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::Page;
use crate::view::{ClaimChange, Feed, View, ViewEvent};

/// Changes kept for a page that opens.
const RECENT: usize = 300;
/// Lines sent in one event at most.
const BATCH: usize = 500;
/// Lines the feed holds for the slowest page before telling it to resync.
const FEED_LINES: usize = 4096;
const JOIN_RETRY: Duration = Duration::from_millis(100);

type Line = Arc<str>;

/// One change as the page shows it.
#[derive(Serialize, Default)]
struct Shown<'a> {
    at_unix_ms: i64,
    /// claimed, adopted, released, forced, attached, draining, detached,
    /// gone, or resync (the view read etcd again: lists may have changed
    /// unseen).
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    broadcast: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fencing_token: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub struct Changes {
    recent: Mutex<VecDeque<Line>>,
    live: broadcast::Sender<Line>,
}

impl Changes {
    /// Starts recording what `view` sees, until `token` is cancelled.
    pub fn start(view: Arc<View>, token: CancellationToken) -> Arc<Self> {
        let changes = Arc::new(Self {
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            live: broadcast::channel(FEED_LINES).0,
        });
        tokio::spawn(changes.clone().record(view, token));
        changes
    }

    fn push(&self, shown: Shown<'_>) {
        let Ok(line) = serde_json::to_string(&shown) else {
            return;
        };
        let line: Line = line.into();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(line.clone());
        // Under the lock: a page joining gets each line once, either in
        // the recent ones or on its receiver.
        let _ = self.live.send(line);
    }

    /// The recent changes, and every one after them.
    fn follow(&self) -> (Vec<Line>, broadcast::Receiver<Line>) {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        (recent.iter().cloned().collect(), self.live.subscribe())
    }

    async fn record(self: Arc<Self>, view: Arc<View>, token: CancellationToken) {
        let mut events = view.subscribe();
        // The claim feed opens once the view has read etcd.
        let mut claims = loop {
            if let Ok(Some(feed)) = view.follow_claims(0) {
                break feed.live;
            }
            tokio::select! {
                _ = tokio::time::sleep(JOIN_RETRY) => {}
                _ = token.cancelled() => return,
            }
        };
        loop {
            tokio::select! {
                batch = claims.recv() => match batch {
                    Ok(Feed::Changes(batch)) => {
                        for (change, revision) in batch.iter() {
                            self.claim_change(change, *revision);
                        }
                    }
                    Ok(Feed::HistoryLost { revision }) => self.push(Shown {
                        at_unix_ms: now_unix_ms(),
                        kind: "resync",
                        revision: Some(revision),
                        detail: Some("the view read etcd again"),
                        ..Default::default()
                    }),
                    Err(RecvError::Lagged(skipped)) => {
                        tracing::debug!(skipped, "ownership page skipped claim batches");
                        self.push(Shown {
                            at_unix_ms: now_unix_ms(),
                            kind: "resync",
                            detail: Some("changes came faster than the page's record of them"),
                            ..Default::default()
                        });
                    }
                    Err(RecvError::Closed) => return,
                },
                event = events.recv() => match event {
                    Ok(event) => self.view_event(&event),
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
                _ = token.cancelled() => return,
            }
        }
    }

    fn claim_change(&self, change: &ClaimChange, revision: i64) {
        let claim = change.claim();
        self.push(Shown {
            at_unix_ms: now_unix_ms(),
            kind: change.kind(),
            broadcast: Some(change.broadcast()),
            node_id: claim.map(|c| &*c.node_id),
            fencing_token: claim.map(|c| c.fencing_token),
            revision: Some(revision),
            ..Default::default()
        });
    }

    fn view_event(&self, event: &ViewEvent) {
        let at_unix_ms = now_unix_ms();
        match event {
            ViewEvent::Node {
                node_id,
                draining,
                detached,
                revision,
                ..
            } => self.push(Shown {
                at_unix_ms,
                kind: if *detached {
                    "detached"
                } else if *draining {
                    "draining"
                } else {
                    "attached"
                },
                node_id: Some(node_id),
                revision: Some(*revision),
                ..Default::default()
            }),
            ViewEvent::NodeGone { node_id } => self.push(Shown {
                at_unix_ms,
                kind: "gone",
                node_id: Some(node_id),
                ..Default::default()
            }),
            ViewEvent::Forced {
                broadcast,
                fencing_token,
                reason,
                taken_by,
            } => self.push(Shown {
                at_unix_ms,
                kind: "forced",
                broadcast: Some(broadcast),
                node_id: taken_by.as_deref(),
                fencing_token: Some(*fencing_token),
                detail: Some(reason),
                ..Default::default()
            }),
            ViewEvent::Released { .. } => {}
        }
    }
}

/// `GET /ui/api/changes`: an event `recent` (the recent changes, oldest
/// first), then `changes` events (a JSON array each), or `resync` when
/// this page fell behind.
pub async fn feed(State(page): State<Arc<Page>>) -> impl IntoResponse {
    let (recent, live) = page.changes.follow();
    let stream = lines(recent, live, page.shutdown.clone());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn lines(
    recent: Vec<Line>,
    mut live: broadcast::Receiver<Line>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream(move |tx| async move {
        if tx.send(Ok(array("recent", &recent))).await.is_err() {
            return;
        }
        loop {
            // A page that went away is noticed now, not at the next change.
            let first = tokio::select! {
                line = live.recv() => line,
                _ = tx.closed() => return,
                _ = shutdown.cancelled() => return,
            };
            let event = match first {
                Ok(line) => {
                    let mut batch = vec![line];
                    while batch.len() < BATCH {
                        match live.try_recv() {
                            Ok(line) => batch.push(line),
                            Err(_) => break,
                        }
                    }
                    array("changes", &batch)
                }
                Err(RecvError::Lagged(_)) => Event::default().event("resync").data("{}"),
                Err(RecvError::Closed) => return,
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    })
}

fn array(name: &str, lines: &[Line]) -> Event {
    let mut data = String::with_capacity(2 + lines.iter().map(|l| l.len() + 1).sum::<usize>());
    data.push('[');
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            data.push(',');
        }
        data.push_str(line);
    }
    data.push(']');
    Event::default().event(name).data(data)
}

/// A stream fed by a task: the task ends when the page goes away.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_changes_keep_the_last_few_hundred_in_order() {
        let changes = Changes {
            recent: Mutex::new(VecDeque::new()),
            live: broadcast::channel(8).0,
        };
        for i in 0..(RECENT as i64 + 5) {
            changes.push(Shown {
                at_unix_ms: i,
                kind: "claimed",
                broadcast: Some("live/x\"<b>"),
                ..Default::default()
            });
        }
        let (recent, _) = changes.follow();
        assert_eq!(recent.len(), RECENT);
        let first: serde_json::Value = serde_json::from_str(&recent[0]).unwrap();
        assert_eq!(first["at_unix_ms"], 5);
        // Names are data: quoted by JSON, never markup.
        assert_eq!(first["broadcast"], "live/x\"<b>");
    }
}
